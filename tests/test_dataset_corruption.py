"""Randomly corrupted copies of real datasets, fed through the real command line, are each refused the same way.

A seeded draw of ``N_CASES`` corruptions (dropped keys, wrong dtypes, NaN/inf, values outside the environment's spaces,
truncated bytes, mismatched lengths, wrong shapes, broken episode bookkeeping, bad metadata, empty data) of a small
Grid World dataset and a small D4RL-layout file goes through ``dmh data show FILE`` and ``dmh train … --set
dataset_path=FILE``. Each must exit with status 2 and one ``dmh: error:`` line naming the file, with no traceback, the
file unchanged (bytes and mtime) and nothing new beside it or in the working directory (no run folder, no MLflow
store).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmh.cli import main
from dmh.data.format import REQUIRED_KEYS, STEP_KEYS, save_dataset
from dmh.data.histories import generate_histories, history_config

N_CASES = 40
SEED = 20_241_201
FILE_NAMES = {"grid": "darkroom.h5", "d4rl": "sample.hdf5"}
TASKS = {"grid": "darkroom", "d4rl": "hopper-medium-v2"}  # the `dmh train --task` each file is meant for


# ------------------------------------------------------------------------------------------------ the corruptions
def _replace(f: h5py.File, key: str, value: np.ndarray) -> None:
    del f[key]
    f.create_dataset(key, data=value)


def drop_key(f, layout, key, rng):
    del f[key]


def wrong_dtype(f, layout, key, rng):
    arr = f[key][()]
    if key in ("terminals", "timeouts") and layout == "d4rl":
        # D4RL's replay files hold float 0/1 flags, which are accepted: only a number that is not 0 or 1 is wrong
        arr = arr.astype(rng.choice(["float64", "int8"]))
        arr[rng.integers(arr.shape[0])] = rng.choice([2, -1]) if arr.dtype.kind == "i" else rng.choice([0.5, 2.0])
        _replace(f, key, arr)
        return
    choices = {
        "terminals": ["float32", "float64", "int8"],
        "timeouts": ["float32", "int64"],
        "actions": ["float32", "bool"] if layout == "grid" else ["int32", "S8"],
        "observations": ["int64", "bool", "S8"],
        "rewards": ["int32", "bool"],
        "episode_task": ["float64"],
        "episode_history": ["float32"],
        "tasks": ["S8"],
    }
    _replace(f, key, arr.astype(rng.choice(choices[key])))


def nan_or_inf(f, layout, key, rng):
    arr = f[key][()]
    index = tuple(int(rng.integers(n)) for n in arr.shape)
    arr[index] = rng.choice([np.nan, np.inf, -np.inf])
    _replace(f, key, arr)


def out_of_range(f, layout, key, rng):
    arr = f[key][()]
    index = tuple(int(rng.integers(n)) for n in arr.shape)
    values = {
        ("grid", "actions"): [-1, 5, 7, 100],
        ("grid", "observations"): [-1.0, 9.0, 3.5, 40.0],  # off the 9×9 grid, or not a cell
        ("grid", "episode_task"): [-1, 60],  # 60 tasks
        ("grid", "episode_history"): [-1],
        ("d4rl", "actions"): [1.01, -1.5, 3.0],
    }
    arr[index] = rng.choice(values[layout, key])
    _replace(f, key, arr)


def mismatched_length(f, layout, key, rng):
    _replace(f, key, f[key][()][: -int(rng.integers(1, 6))])


def wrong_shape(f, layout, key, rng):
    arr = f[key][()]
    extra = np.zeros_like(arr[:, :1]) if arr.ndim == 2 else arr[:, None]
    _replace(f, key, np.concatenate([arr[:, None] if arr.ndim == 1 else arr, extra], axis=1))


def broken_bookkeeping(f, layout, key, rng):
    terminals, timeouts = f["terminals"][()], f["timeouts"][()]
    if key == "last-flag":  # the last episode never ends
        terminals[-1] = timeouts[-1] = False
    elif key == "extra-flag":  # one more episode than episode_task / episode_history describe
        timeouts[rng.choice(np.flatnonzero(~(terminals | timeouts)))] = True
    else:  # "no-flags": no episode ends anywhere
        terminals[:] = timeouts[:] = False
    _replace(f, "terminals", terminals)
    _replace(f, "timeouts", timeouts)


def bad_metadata(f, layout, key, rng):
    if layout == "d4rl":  # what a dmh stand-in records about the environment it was rolled out in
        del f["metadata/gym_env_id"]
        f["metadata/gym_env_id"] = np.bytes_(rng.choice(["Walker2d-v5", "HalfCheetah-v5"]))
        return
    if key == "attribute":
        del f.attrs["metadata"]
        return
    meta = json.loads(f.attrs["metadata"])
    if key == "json":
        f.attrs["metadata"] = f.attrs["metadata"][: int(rng.integers(1, 40))]
        return
    if key == "env_id":
        meta["env_id"] = rng.choice(["dmh/Nowhere-v0", "hopper-medium-v2", "dmh/TMaze-v0"])
    elif key == "discrete":
        meta["discrete"] = False
    else:
        del meta[key]
    f.attrs["metadata"] = json.dumps(meta)


def empty(f, layout, key, rng):
    for name in (*STEP_KEYS, "episode_task", "episode_history") if layout == "grid" else STEP_KEYS:
        _replace(f, name, f[name][()][:0])


def truncated(path: Path, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * rng.uniform(0.05, 0.95))])


GRID_STEP_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
D4RL_KINDS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "drop-key": (drop_key, STEP_KEYS),
    "dtype": (wrong_dtype, STEP_KEYS),
    "nan-inf": (nan_or_inf, ("observations", "actions", "rewards")),
    "out-of-range": (out_of_range, ("actions",)),
    "length": (mismatched_length, STEP_KEYS),
    "shape": (wrong_shape, ("observations", "actions", "rewards", "terminals")),
    "bookkeeping": (broken_bookkeeping, ("no-flags",)),
    "metadata": (bad_metadata, ("gym_env_id",)),
    "empty": (empty, ("all",)),
    "truncated": (None, ("bytes",)),
}
KINDS: dict[str, dict[str, tuple[Callable | None, tuple[str, ...]]]] = {
    "grid": {
        "drop-key": (drop_key, REQUIRED_KEYS),
        "dtype": (wrong_dtype, REQUIRED_KEYS),
        "nan-inf": (nan_or_inf, ("observations", "rewards", "tasks")),
        "out-of-range": (out_of_range, ("actions", "observations", "episode_task", "episode_history")),
        "length": (mismatched_length, REQUIRED_KEYS),
        "shape": (wrong_shape, ("observations", "actions", "rewards", "terminals")),
        "bookkeeping": (broken_bookkeeping, ("last-flag", "extra-flag")),
        "metadata": (bad_metadata, ("attribute", "json", "env_id", "discrete", "seed")),
        "empty": (empty, ("all",)),
        "truncated": (None, ("bytes",)),
    },
    "d4rl": D4RL_KINDS,
}


@dataclass(frozen=True)
class Case:
    index: int
    layout: str  # "grid" (the project format) or "d4rl" (D4RL's raw HDF5 layout)
    kind: str  # a key of KINDS[layout]
    key: str  # the array (or metadata field, or variant) corrupted
    seed: int  # seeds the corruption's own draws (which step, which value)

    @property
    def id(self) -> str:
        return f"{self.index:02d}-{self.layout}-{self.kind}-{self.key}"

    def apply(self, path: Path) -> None:
        rng = np.random.default_rng(self.seed)
        function, _ = KINDS[self.layout][self.kind]
        if function is None:
            truncated(path, rng)
            return
        with h5py.File(path, "a") as f:
            function(f, self.layout, self.key, rng)


def draw_cases(n: int, seed: int) -> list[Case]:
    """Every (layout, kind) in turn, so each class of corruption is drawn in both layouts; key and values at random."""
    rng = np.random.default_rng(seed)
    combos = [(layout, kind) for layout, kinds in KINDS.items() for kind in kinds]
    cases = []
    for index in range(n):
        layout, kind = combos[index % len(combos)]
        key = str(rng.choice(KINDS[layout][kind][1]))
        cases.append(Case(index, layout, kind, key, int(rng.integers(2**31))))
    return cases


CASES = draw_cases(N_CASES, SEED)


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, bytes | None]:
    """The bytes of each real file: a Grid World dataset (20k steps) and, with MuJoCo, a D4RL-layout sample."""
    folder = tmp_path_factory.mktemp("pristine")
    grid = save_dataset(generate_histories(history_config("darkroom", steps=20_000), show_progress=False),
                        folder / FILE_NAMES["grid"])
    files: dict[str, bytes | None] = {"grid": grid.read_bytes(), "d4rl": None}
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return files
    from dmh.data.d4rl import write_d4rl_sample

    sample = write_d4rl_sample(TASKS["d4rl"], folder / FILE_NAMES["d4rl"], episodes=3, max_episode_steps=40, seed=0)
    files["d4rl"] = sample.read_bytes()
    return files


def place(pristine: dict[str, bytes | None], layout: str, folder: Path) -> Path:
    if pristine[layout] is None:
        pytest.skip("the D4RL-layout sample needs MuJoCo (dmh[mujoco])")
    folder.mkdir()
    path = folder / FILE_NAMES[layout]
    path.write_bytes(pristine[layout])
    return path


def argv(command: str, layout: str, path: Path) -> list[str]:
    if command == "show":
        return ["data", "show", str(path)]
    return ["train", "--algo", "dmh", "--task", TASKS[layout], "--preset", "smoke", "--set", f"dataset_path={path}",
            "--set", "steps=1"]


def snapshot(path: Path) -> tuple[str, int, list[str]]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


# --------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["grid", "d4rl"])
def test_the_uncorrupted_files_are_shown(pristine, layout, tmp_path, capsys):
    path = place(pristine, layout, tmp_path / "data")
    assert main(["data", "show", str(path)]) == 0
    assert "returns: min" in capsys.readouterr().out


def test_every_corruption_changes_the_file(pristine, tmp_path):
    for case in CASES:
        if pristine[case.layout] is None:
            continue
        path = place(pristine, case.layout, tmp_path / case.id)
        case.apply(path)
        assert path.read_bytes() != pristine[case.layout], case.id


@pytest.mark.parametrize("command", ["show", "train"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_corrupted_dataset_is_refused_in_one_line_touching_nothing(pristine, case, command, tmp_path, monkeypatch,
                                                                     capsys):
    path = place(pristine, case.layout, tmp_path / "data")
    case.apply(path)
    before = snapshot(path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    code = main(argv(command, case.layout, path))

    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("dmh: error:"), err
    assert path.name in err and "Traceback" not in err
    assert out == ""
    assert snapshot(path) == before
    assert list(cwd.iterdir()) == []  # no runs/, no mlflow.db, nothing else


@pytest.mark.parametrize("command,case_of", [
    ("show", lambda f: f.__getitem__("actions").__setitem__(3, 7)),  # the action 7 of 5
    ("train", lambda f: _replace(f, "terminals", f["terminals"][()].astype(np.float32))),  # the TypeError
], ids=["show-action-7-of-5", "train-float-terminals"])
def test_the_installed_command_prints_one_error_line_and_no_traceback(pristine, command, case_of, tmp_path):
    path = place(pristine, "grid", tmp_path / "data")
    with h5py.File(path, "a") as f:
        case_of(f)
    before = snapshot(path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "dmh.cli", *argv(command, "grid", path)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("dmh: error:"), result.stderr
    assert result.stdout == ""
    assert snapshot(path) == before
    assert list(cwd.iterdir()) == []
