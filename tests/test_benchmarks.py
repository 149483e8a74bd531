"""The benchmark runner end to end in its quick mode: it runs, and writes every measurement with the columns the docs
promise. No timing is asserted (timings depend on the machine; benchmarks/ reports them, tests do not judge them)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("part", "model", "context", "batch", "metric", "value", "unit", "repetitions", "note")  # docs/benchmarks.md


def run_benchmarks(out: Path, *args: str) -> tuple[dict, list[dict[str, str]]]:
    """`python -m benchmarks --quick --out OUT ARGS` -> (results.json, the rows of results.csv)."""
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), *args], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=300)
    results = json.loads((out / "results.json").read_text())
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return results, rows


def check_results(results: dict, rows: list[dict[str, str]], part: str) -> None:
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == len(results["rows"])
    assert {"cpu", "cores", "torch", "torch_threads", "dmh_commit", "date"} <= set(results["header"])
    assert {r["part"] for r in rows} == {part}
    assert all(float(r["value"]) > 0 and int(r["repetitions"]) > 0 for r in rows)


@pytest.mark.slow
def test_quick_online_writes_every_step_cost_and_ratio(tmp_path: Path) -> None:
    results, rows = run_benchmarks(tmp_path, "--only", "online")
    check_results(results, rows, "online")
    models = {r["model"] for r in rows if r["metric"] == "step_ms"}
    assert models == {"DM-H", "AD (Mamba)", "AD (Transformer, KV cache)", "AD (Transformer, KV cache, hop 1/4 window)",
                      "AD (Transformer, re-encoding)", "AD (Transformer, separate tokens, re-encoding)", "DT", "DM"}
    assert {r["model"] for r in rows if r["metric"] == "step_ms_ratio"} == {
        "DM-H / AD (Mamba)", "AD (Transformer, re-encoding) / DM-H", "AD (Transformer, KV cache) / DM-H",
        "AD (Transformer, separate tokens, re-encoding) / DM-H"}
    assert {r["model"] for r in rows if r["metric"] == "episodes_min"} >= {"DM-H", "AD (Transformer, re-encoding)"}


@pytest.mark.slow
def test_quick_offline_on_synthetic_batches_writes_update_times_and_ratios(tmp_path: Path) -> None:
    results, rows = run_benchmarks(tmp_path, "--only", "offline", "--synthetic-only")
    check_results(results, rows, "offline")
    assert {r["model"] for r in rows if r["metric"] == "update_s"} == {
        "DM-H", "AD (Transformer)", "AD (Mamba)", "AD (Transformer, separate tokens)"}
    assert {r["model"] for r in rows if r["metric"] == "update_s_ratio"} == {
        "DM-H / AD (Transformer)", "AD (Mamba) / AD (Transformer)", "DM-H / AD (Mamba)",
        "DM-H / AD (Transformer, separate tokens)"}
    assert [(r["model"], r["unit"]) for r in rows if r["metric"] == "peak_mib"] == [("DM-H", "MiB")]


@pytest.mark.slow
def test_quick_sweep_writes_the_smoke_sweeps_overhead_and_cpu_utilisation(tmp_path: Path) -> None:
    results, rows = run_benchmarks(tmp_path, "--only", "sweep")
    check_results(results, rows, "sweep")
    assert {r["metric"]: r["unit"] for r in rows} == {
        "sweep_wall_s": "s", "trials": "trials", "trial_s": "s", "scheduling_s_per_trial": "s", "cpu_s": "s",
        "cpu_utilisation": "%"}
    assert next(float(r["value"]) for r in rows if r["metric"] == "trials") == 2  # the smoke grid: c = 1 and 5


def test_the_runner_takes_a_device_for_the_online_part_and_refuses_one_it_cannot_use(capsys) -> None:
    from benchmarks.__main__ import parse_args

    assert parse_args([]).device == "cpu"
    for device, message in [("gpu", "--device must be cpu, cuda or cuda:N"),
                            *([("cuda", "torch sees no CUDA GPU here")] if not torch.cuda.is_available() else [])]:
        with pytest.raises(SystemExit):
            parse_args(["--device", device])
        assert message in capsys.readouterr().err


TINY_ONLINE = dict(contexts=(20,), batches=(1,), runs=1, steps_per_run=2, slow_steps=1, reencode_max=20,
                   hop_contexts={}, separate_batches=(), protocol_episode_len=10, protocol_episodes=2,
                   protocol_points=2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_the_online_part_steps_its_models_on_the_chosen_device(device: str, monkeypatch) -> None:
    from benchmarks import common, online

    monkeypatch.setattr(common, "DEVICE", torch.device(device))
    s = online.OnlineSettings(**TINY_ONLINE)
    model = online.build("ad-mamba")
    assert next(model.parameters()).device.type == device
    rows = online.stepped_rows("AD (Mamba)", online.policy_of(model, 1), 1, s)
    rows += online.reencoding_rows(online.build("ad-transformer"), 1, s)
    rows += online.single_episode_rows("dt", 1, s)
    assert len(rows) == 3 and all(r.value > 0 for r in rows)


def test_an_unknown_preset_task_is_one_line_before_anything_is_measured(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--only", "offline", "--preset-task", "large-darkroomm"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--preset-task: unknown task 'large-darkroomm'" in err and "Traceback" not in err


def test_preset_c_times_dmh_at_each_c_beside_the_presets_models() -> None:
    from dataclasses import replace

    from benchmarks import offline

    models = offline.preset_models(replace(offline.QUICK, preset_c=(1, 10)))
    assert models["DM-H (c=1)"] == ("dmh", ["c=1"]) and models["DM-H (c=10)"] == ("dmh", ["c=10"])
    assert set(offline.preset_models(offline.QUICK)) == set(models) - {"DM-H (c=1)", "DM-H (c=10)"}


def test_a_preset_c_longer_than_the_tasks_episodes_is_one_line_before_anything_is_measured(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--only", "offline", "--preset-c", "5", "21"])  # Darkroom's episodes are 20 steps
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--preset-c: c must be between 1 and darkroom's episode length 20, got 21" in err and "Traceback" not in err
