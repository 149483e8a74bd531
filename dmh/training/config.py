"""One run's configuration: a frozen dataclass with a comment per field, presets as data, a YAML file and
``key=value`` settings on top, checked and resolved in one step (:func:`make_config`) before any work starts: the
task's defaults filled in and the model's config built, so that what is named, checked, logged, checkpointed and
trained is one object. It is saved with every run and rebuilt from its dict (:func:`config_from_dict`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from dmh.boundary import GENERATED_BYTES_PER_STEP, check_memory
from dmh.data.histories import history_config
from dmh.data.tmaze import TMazeDataConfig
from dmh.errors import DmhError
from dmh.models import ALGORITHMS, ContextShape, ModelConfig, algorithm, config_class
from dmh.tasks import TaskSpec, held_out_tasks, resolve_task
from dmh.vocabulary import RUNTIME_FIELDS

ALGOS = tuple(ALGORITHMS)


EVAL_SEED_OFFSET = 10_000  # a run's own evaluations use seed + this (TrainConfig.eval_seed)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``dmh train`` needs, resolved: made by :func:`make_config`, which fills in the task's defaults
    (None in n_context / c, auto in history_window / context_sampling, 0 in dt_context_len: below) and builds the
    model config; constructing one checks every field (:func:`check_config`), so every instance is a valid run."""

    algo: str = "dmh"  # dmh | dm | dt | ad-transformer | ad-mamba
    task: str = "darkroom"  # Grid World family, tmaze-<L>, or a D4RL dataset name
    preset: str = "cpu"  # smoke | cpu | paper: the preset these values started from (recorded, not re-applied)
    seed: int = 0  # seeds python, numpy, torch and the evaluation environments
    # --- optimisation (paper Table 3: AdamW lr 1e-4, wd 1e-4, clip 0.25, batch 128) ---
    steps: int = 2000  # gradient updates
    batch_size: int = 32  # contexts per gradient update
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 100  # linear learning-rate warm-up, then constant (the authors' code has no decay)
    grad_clip: float = 0.25  # gradient-norm clip
    grad_clip_scope: str = "global"  # "global": one norm over all parameters; "module": each of the model's networks
    # clipped on its own (DM-H's Mamba and local GPT sides, as the authors' code; other models have one network)
    # --- across-episodic context ---
    n_context: int | None = None  # episodes per context (AD, DM-H); None = the paper's n for the task
    c: int | None = None  # DM-H steps per sub-goal (block size); None = the paper's c for the task (``model.c`` is
    # this setting too)
    valuable_subgoals: bool = True  # DM-H's valuable-sub-goal branch and its loss (off = the paper's ablation;
    # ``model.valuable_subgoals`` is this setting too)
    history_stride: int = 0  # learning-history episodes between consecutive context episodes; 0 = auto (a context
    # spans half a history)
    context_sampling: str = "auto"  # DM-H: "window" (strided history window, sorted by return), "random" (n random
    # episodes of one history, sorted), "length" (the authors' D4RL batches: episodes drawn in proportion to their
    # length, sorted by return, cut into consecutive contexts); auto = window for Grid World, random elsewhere
    history_window: str = "auto"  # AD: "aligned" (n whole episodes from an episode start) or "any_offset" (a window
    # of the model's context_len steps starting at any step, as an online window that slides step by step holds);
    # auto = any_offset for AD (Transformer), whose online window slides, aligned for AD (Mamba), whose online state
    # holds every step from the task's start (docs/reproduction.md)
    rtg_relabel: bool = True  # DM-H: hindsight relabelling, every episode's return-to-go starts at the context's best
    # return (the authors' relabel_rtg; online the policy starts each episode at the target return); matters only
    # where the RTG token is on (D4RL)
    dt_context_len: int = 0  # DT/DM window in steps (their model's context_len); 0 = the whole episode (the paper's
    # Tmaze setting) or 20 (D4RL)
    # --- data ---
    data_steps: int = 1_000_000  # Grid World learning-history budget per family (the paper: 1M)
    data_seed: int = 0  # seed of the data generator (fixed across training seeds so seeds share one dataset)
    dataset_path: str | None = None  # an explicit dataset file (dmh HDF5, or a D4RL HDF5 file for D4RL tasks)
    data_dir: str | None = None  # dataset cache folder (default $DMH_DATA_DIR or ./data)
    # --- online evaluation ---
    eval_every: int = 0  # gradient updates between evaluations during training; 0 = only at the end
    eval_tasks: int = 0  # held-out test tasks evaluated; 0 = all of them
    eval_episodes: int = 0  # online episodes per test task; 0 = the paper's m (Grid World 20, Tmaze 20, D4RL 10)
    eval_sample: bool = True  # sample discrete actions from the policy (greedy evaluation collapses for AD)
    # --- bookkeeping ---
    checkpoint_every: int = 500  # gradient updates between checkpoints (atomic, for exact resume)
    log_every: int = 50  # gradient updates between train/loss records
    run_dir: str = "runs"  # checkpoints go to <run_dir>/<run name>/
    experiment: str = "dmh"  # MLflow experiment
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    device: str = "auto"  # where the model trains and acts: auto (cuda when torch sees a GPU, else cpu), cpu, cuda[:N]
    model: ModelConfig | None = None  # the model's config, built by make_config from the task, n, c and the model.*
    # settings (a preset's, a file's, --set model.d_model=…); None only in DEFAULTS, which make_config starts from

    def __post_init__(self) -> None:
        check_config(self)

    @functools.cached_property
    def spec(self) -> TaskSpec:
        """The task, resolved once per config object."""
        return resolve_task(self.task)

    @property
    def run_name(self) -> str:
        """Readable and unique per configuration, so ``--resume`` with the same arguments finds the same run (on
        any device and thread count: those do not change what a run computes)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.algo}_{self.task}_n{self.n_context}_c{self.c}_s{self.seed}_{digest}"

    @property
    def checkpoint_path(self) -> Path:
        """Where this configuration's checkpoint lives: ``<run_dir>/<run name>/checkpoint.pt``."""
        return Path(self.run_dir) / self.run_name / "checkpoint.pt"

    @property
    def eval_seed(self) -> int:
        """The seed of every evaluation the run makes itself (during and after training): apart from the training
        seed, so that evaluation episodes do not replay the training RNG's draws."""
        return self.seed + EVAL_SEED_OFFSET


# Presets are data: field values applied over the dataclass defaults. ``model`` entries override the model config;
# ``algo_model`` adds model overrides for one algo only (fields other models do not have).
PRESETS: dict[str, dict[str, Any]] = {
    # seconds, for tests: tiny models, tiny data, two short test tasks
    "smoke": dict(steps=6, batch_size=2, lr=1e-3, warmup_steps=1, data_steps=30_000, eval_tasks=2, eval_episodes=2,
                  checkpoint_every=3, log_every=1, n_context=2, dt_context_len=0,
                  model=dict(d_model=16, n_layer=1, n_mamba_layer=1, dropout=0.0, d_state=4)),
    # minutes on 2 CPU cores (calibrated in docs/reference/feasibility.md)
    # DM-H here uses its efficiency options: one fused Mamba token per block, no activation checkpointing (short
    # contexts fit easily), a short scan chunk; every block decoded (train_blocks=0), so that every step of a
    # context carries an action target as it does for AD (the paper supervises every step); and a 32-d sub-goal z,
    # sampled once per block as the paper's Eq. 6: the z study (3 seeds, docs/results.md) found no draw learning in
    # context at the authors' size (obs_dim = 2 in Grid World), and the paper's draw learning on both of its tasks
    # at 32
    "cpu": dict(steps=3000, batch_size=16, lr=1e-3, warmup_steps=100, weight_decay=1e-4, grad_clip=1.0,
                checkpoint_every=250, log_every=25, threads=1,
                model=dict(d_model=64, n_layer=2, n_mamba_layer=2, dropout=0.0, d_state=16, checkpoint_scan=False,
                           scan_chunk=16),
                algo_model={"dmh": dict(block_tokens="fused", train_blocks=0, local_checkpoint_chunk=0, z_dim=32,
                                        z_train="sample", z_eval="sample", z_draw="block")}),
    # the paper's hyper-parameters (Table 3) and the authors' code's training length (100k updates), for GPU clusters
    "paper": dict(steps=100_000, batch_size=128, lr=1e-4, weight_decay=1e-4, warmup_steps=10_000, grad_clip=0.25,
                  checkpoint_every=2000, log_every=100, eval_every=10_000,
                  model=dict(d_model=128, n_layer=3, n_head=1, n_mamba_layer=2, dropout=0.1, d_state=16, expand=2,
                             d_conv=4)),
}
FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # before any preset
SETTING_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)  # each field's annotation, as check_value reads


def parse_value(text: str) -> Any:
    """A ``--set`` value: numbers (``5``, ``1e-4``) and YAML scalars (``true``, ``null``) become typed, anything else a
    string. Numbers are parsed by Python first because YAML 1.1 reads ``1e-4`` (no dot) as a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# Model-config fields that are run settings (the run's name, its checks and its logged params read them from the
# TrainConfig): ``model.c`` is the setting ``c``, so it is checked, named and logged as what trains.
RUN_FIELDS_IN_MODEL = ("c", "valuable_subgoals")
# Model-config fields that only the run sets, from the task and its settings: an override would make the model and
# the contexts it trains on disagree (the model's return scale vs the sampler's, DT's window vs its contexts').
RUN_OWNED_MODEL_FIELDS = {"obs_dim": "the task", "act_dim": "the task", "discrete": "the task",
                          "rtg_scale": "the task", "rtg_token": "the task"}


def apply_settings(values: dict[str, Any], settings: dict[str, Any], source: str) -> None:
    """Merge ``settings`` into ``values``; ``model.x`` or a ``model`` mapping update the model overrides, except the
    fields a run fixes (``RUN_FIELDS_IN_MODEL``), which set the run's own setting."""
    for key, value in settings.items():
        if key.startswith("model."):
            apply_settings(values, {"model": {key.removeprefix("model."): value}}, source)
        elif key == "model":
            if not isinstance(value, dict):
                raise DmhError(f"{source}: 'model' must be a mapping of model-config fields")
            run_level = {k: v for k, v in value.items() if k in RUN_FIELDS_IN_MODEL}
            values["model"] = {**values["model"], **{k: v for k, v in value.items() if k not in run_level}}
            values.update(run_level)
        elif key not in FIELD_NAMES:
            raise DmhError(f"{source}: unknown setting {key!r}")
        else:
            values[key] = value


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (``--set``) → ``{key: typed value}``; bad syntax is a ``DmhError``."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DmhError(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = parse_value(text.strip())
    return parsed


def make_config(algo: str, task: str, preset: str = "cpu", seed: int | None = None, config_file: str | None = None,
                sets: list[str] | None = None, settings: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults → preset → YAML file → ``key=value`` strings (``sets``, the command line) → already parsed
    ``settings`` (a sweep's cell) → :func:`resolve_settings`. Returns the resolved config."""
    if preset not in PRESETS:
        raise DmhError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    values = {**DEFAULTS, "model": {}}  # the model's settings gather here as overrides of what the task fixes
    preset_values = dict(PRESETS[preset])
    per_algo = preset_values.pop("algo_model", {})
    apply_settings(values, preset_values, f"preset {preset}")
    apply_settings(values, {"model": per_algo.get(algo, {})}, f"preset {preset}")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise DmhError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DmhError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise DmhError(f"config file {path} must hold a mapping of settings")
        apply_settings(values, loaded, str(path))
    apply_settings(values, parse_sets(sets or []), "--set")
    apply_settings(values, dict(settings or {}), "settings")
    values.update(algo=algo, task=task, preset=preset)
    if seed is not None:
        values["seed"] = seed
    return resolve_settings(values)


def resolve_settings(values: dict[str, Any]) -> TrainConfig:
    """Settings (the model's as overrides in ``values["model"]``) → the run, in one step: every setting checked,
    the task's defaults filled in (n, c, AD's window, DM-H's sampling, DT's window), the model config built, and the
    settings checked against the data they will read. The one place a run is resolved."""
    model = values["model"]
    for name, value in values.items():  # a bad value is named as given, before any default replaces it
        if name != "model":
            check_field(name, value)
    spec = resolve_task(values["task"])
    settings = {**values, **task_defaults(values, spec)}  # TrainConfig checks what the task filled in
    cfg = TrainConfig(**{**settings, "model": build_model_config(settings, spec, model)})
    check_against_data(cfg, planned_episodes_per_history(cfg))
    return cfg


def task_defaults(values: Mapping[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """The settings that ``values`` leave to the task (None, ``auto``, 0), as the task and the algo decide them:
    the paper's n and c; AD (Transformer)'s windows at any offset, as its online window slides step by step, and
    AD (Mamba)'s aligned, as its online state holds every step from the task's start (docs/reproduction.md); DM-H's
    strided history windows on Grid World, random episodes elsewhere; DT's whole episode, or 20 steps on D4RL."""
    entry = algorithm(values["algo"])
    return {
        "n_context": spec.n_context if values["n_context"] is None else values["n_context"],
        "c": spec.c if values["c"] is None else values["c"],
        "dt_context_len": values["dt_context_len"] or (20 if spec.kind == "d4rl" else spec.horizon),
        "history_window": values["history_window"] if values["history_window"] != "auto" else
        "any_offset" if entry.context == "history" and entry.backbone == "transformer" else "aligned",
        "context_sampling": values["context_sampling"] if values["context_sampling"] != "auto" else
        "window" if spec.kind == "grid" else "random",
    }


def build_model_config(settings: Mapping[str, Any], spec: TaskSpec, model: Mapping[str, Any]) -> ModelConfig:
    """The model's config: what the task and the run's settings fix (``ModelConfig.fields_for``), then the
    model.* settings, each checked against the algo's model-config annotations and ``MODEL_FIELD_BOUNDS``."""
    algo = settings["algo"]
    model_cls = config_class(algo)
    allowed = {f.name for f in dataclasses.fields(model_cls)}
    unknown = sorted(set(model) - allowed)
    if unknown:
        raise DmhError(f"model: unknown field(s) {', '.join(unknown)} for algo {algo}")
    owned = {name: RUN_OWNED_MODEL_FIELDS[name] for name in model if name in RUN_OWNED_MODEL_FIELDS}
    if algorithm(algo).context == "episode" and "context_len" in model:
        owned["context_len"] = "dt_context_len (the window its contexts are cut to)"
    if owned:
        raise DmhError("; ".join(f"model.{name} is set by {by}" for name, by in owned.items()))
    hints = typing.get_type_hints(model_cls)
    for name, value in model.items():
        check_value(f"model.{name}", value, hints[name], MODEL_FIELD_BOUNDS.get(name))
    shape = ContextShape(obs_dim=spec.obs_dim, act_dim=spec.act_dim, discrete=spec.discrete, horizon=spec.horizon,
                         n_context=settings["n_context"], c=settings["c"], episode_window=settings["dt_context_len"],
                         rtg_scale=spec.rtg_scale, rtg_token=spec.rtg_token,
                         valuable_subgoals=settings["valuable_subgoals"])
    return model_cls(**{**model_cls.fields_for(shape), **model})


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A config rebuilt from its own ``dataclasses.asdict`` (a checkpoint's, a sweep trial's): nothing is resolved
    again, and constructing it checks it."""
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise DmhError(f"unknown setting(s) {', '.join(unknown)}")
    model = values.get("model")
    if not isinstance(model, Mapping) or not isinstance(values.get("algo"), str) or values["algo"] not in ALGOS:
        raise DmhError("not a resolved dmh config: it needs an algo and its whole model config")
    model_cls = config_class(values["algo"])
    missing = sorted({f.name for f in dataclasses.fields(model_cls)} - set(model))
    extra = sorted(set(model) - {f.name for f in dataclasses.fields(model_cls)})
    if missing or extra:
        raise DmhError(f"model: not the whole model config of {values['algo']}: "
                       + "; ".join(w for w in (f"missing {', '.join(missing)}" if missing else "",
                                               f"unknown {', '.join(extra)}" if extra else "") if w))
    return TrainConfig(**{**values, "model": model_cls(**model)})


@dataclass(frozen=True)
class Bounds:
    """Where a number may lie: ``low`` (inclusive unless ``open_low``) up to ``high`` (exclusive; None = no bound)."""

    low: float
    high: float | None = None
    open_low: bool = False
    words: str = ""  # how a message says it: "positive", "non-negative", "in [0, 2**32)"

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and (self.high is None or value < self.high)

    def describe(self, kind: str) -> str:
        """``a positive integer``, ``an integer in [0, 2**32)``, ``a non-negative number``."""
        if self.words.startswith("in "):
            return f"{'an' if kind == 'integer' else 'a'} {kind} {self.words}"
        return f"{'an' if self.words[0] in 'aeiou' else 'a'} {self.words} {kind}"


POSITIVE = Bounds(0, open_low=True, words="positive")
NON_NEGATIVE = Bounds(0, words="non-negative")
SEED = Bounds(0, 2**32, words="in [0, 2**32)")  # what numpy and torch accept as a seed
FRACTION = Bounds(0, 1, words="in [0, 1)")
# The range of every number a TrainConfig holds, beside the dataclass's types: validate() checks both, and
# tests/test_config_checks.py fails for a numeric field missing here, so a new field cannot go unchecked.
FIELD_BOUNDS: dict[str, Bounds] = {
    "seed": SEED, "data_seed": SEED,
    "steps": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "grad_clip": POSITIVE, "checkpoint_every": POSITIVE,
    "log_every": POSITIVE, "n_context": POSITIVE, "c": POSITIVE, "data_steps": POSITIVE,
    "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "history_stride": NON_NEGATIVE,
    "dt_context_len": NON_NEGATIVE, "eval_every": NON_NEGATIVE, "eval_tasks": NON_NEGATIVE,
    "eval_episodes": NON_NEGATIVE, "threads": NON_NEGATIVE,
}
# The same for the model-config fields a preset or --set may override (model.d_model=…), across every model.
MODEL_FIELD_BOUNDS: dict[str, Bounds] = {
    "max_timestep": POSITIVE, "d_model": POSITIVE, "n_layer": POSITIVE, "n_head": POSITIVE,
    "n_mamba_layer": POSITIVE, "d_state": POSITIVE, "d_conv": POSITIVE, "expand": POSITIVE, "scan_chunk": POSITIVE,
    "context_len": POSITIVE, "c": POSITIVE, "rtg_scale": POSITIVE, "z_dim": POSITIVE, "dropout": FRACTION,
    "subgoal_loss_weight": NON_NEGATIVE, "local_checkpoint_chunk": NON_NEGATIVE, "train_blocks": NON_NEGATIVE,
    "window_hop": POSITIVE,
}
CHOICES = {"algo": ALGOS, "preset": tuple(PRESETS), "context_sampling": ("auto", "window", "random", "length"),
           "history_window": ("auto", "aligned", "any_offset"),
           "grad_clip_scope": ("global", "module")}


def check_value(name: str, value: Any, hint: Any, bounds: Bounds | None) -> None:
    """``value`` of field ``name`` has the field's type (``hint``, from the dataclass) and lies in ``bounds``; a
    ``DmhError`` naming the field otherwise. Unsupported annotations are a ``TypeError`` (a programming error)."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return
    base = next((a for a in args if a is not type(None)), hint) if type(hint) is types.UnionType else hint
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise DmhError(f"{name} must be one of {', '.join(map(str, typing.get_args(base)))}, got {value!r}")
        return
    kinds = {bool: ("a boolean", bool), str: ("a string", str), int: ("an integer", int),
             float: ("a number", (int, float)), dict: ("a mapping", dict)}
    key = origin or base
    if key not in kinds:
        raise TypeError(f"{name}: no check for annotation {hint!r}")
    words, accepted = kinds[key]
    if not isinstance(value, accepted) or (key is not bool and isinstance(value, bool)):
        raise DmhError(f"{name} must be {words}, got {value!r}")
    out_of_bounds = key in (int, float) and (not math.isfinite(value) or (bounds and not bounds.holds(value)))
    if out_of_bounds:
        kind = "integer" if key is int else "number"
        described = bounds.describe(kind) if bounds is not None else f"a finite {kind}"
        raise DmhError(f"{name} must be {described}, got {value!r}")


def check_field(name: str, value: Any) -> None:
    """One setting against its choices (``CHOICES``), its annotation and, for numbers, ``FIELD_BOUNDS``."""
    if name not in FIELD_NAMES:
        raise DmhError(f"unknown setting {name!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise DmhError(f"{name}: unknown {name} {value!r}; valid: {', '.join(map(str, CHOICES[name]))}")
    check_value(name, value, SETTING_HINTS[name], FIELD_BOUNDS.get(name))
    if name == "device":
        check_device(value)


def check_config(cfg: TrainConfig) -> None:
    """A resolved config, checked as a whole (every ``TrainConfig`` is, when constructed): each setting by
    :func:`check_field`, the task's defaults filled in, the model config of the algo, each of its fields typed and
    in ``MODEL_FIELD_BOUNDS``, and agreeing with the run's settings it was built from. A ``DmhError`` names the
    field."""
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            check_field(f.name, getattr(cfg, f.name))
    unresolved = [name for name in ("n_context", "c") if getattr(cfg, name) is None]
    unresolved += [name for name in ("history_window", "context_sampling") if getattr(cfg, name) == "auto"]
    if unresolved or not cfg.dt_context_len or cfg.model is None:
        raise DmhError(f"not a resolved config ({', '.join(unresolved) or 'model'} left to the task): make it with "
                       "make_config")
    if cfg.algo == "dmh" and cfg.c > cfg.spec.horizon:
        raise DmhError(f"c={cfg.c} is longer than an episode of {cfg.spec.name} ({cfg.spec.horizon} steps)")
    model_cls = config_class(cfg.algo)
    if type(cfg.model) is not model_cls:
        raise DmhError(f"model: a {type(cfg.model).__name__} is not the model config of algo {cfg.algo}")
    hints = typing.get_type_hints(model_cls)
    for f in dataclasses.fields(model_cls):
        check_value(f"model.{f.name}", getattr(cfg.model, f.name), hints[f.name], MODEL_FIELD_BOUNDS.get(f.name))
    disagree = [name for name in RUN_FIELDS_IN_MODEL
                if hasattr(cfg.model, name) and getattr(cfg.model, name) != getattr(cfg, name)]
    if algorithm(cfg.algo).context == "episode" and cfg.model.context_len != cfg.dt_context_len:
        disagree.append("dt_context_len (model.context_len)")
    if disagree:
        raise DmhError(f"model config disagrees with the run's {', '.join(disagree)}")


# ------------------------------------------------------------------------------------ settings against the data
def planned_episodes_per_history(cfg: TrainConfig) -> int | None:
    """Episodes per learning history of the data a run will generate (Grid World, T-maze), known from its settings
    before any is generated; None for data read from a file (D4RL, ``dataset_path``), known once loaded."""
    spec = cfg.spec
    if cfg.dataset_path is not None or spec.kind == "d4rl":
        return None
    if spec.kind == "tmaze":
        return TMazeDataConfig(memory_length=spec.memory_length, seed=cfg.data_seed).episodes_per_history
    data = history_config(spec.name, steps=cfg.data_steps, seed=cfg.data_seed)
    return data.steps // (data.num_tasks * data.histories_per_task * spec.horizon)  # as generate_histories splits it


def check_against_data(cfg: TrainConfig, episodes_per_history: int | None) -> None:
    """The context fits the data it is drawn from, and an evaluation has something to play: before any data is
    generated where the data's shape follows from the settings (:func:`resolve_settings`), and once loaded
    otherwise (``Trainer``). A context longer than a history would repeat its last episode over and over, and train
    on until killed."""
    spec = cfg.spec
    if algorithm(cfg.algo).context != "episode" and episodes_per_history is not None \
            and cfg.n_context > episodes_per_history:
        source = f"with data_steps={cfg.data_steps}" if spec.kind == "grid" else "in its data"
        raise DmhError(f"n_context={cfg.n_context} is more episodes than a learning history of {spec.name} holds "
                       f"({episodes_per_history} {source}): lower n_context"
                       + (" or raise data_steps" if spec.kind == "grid" else ""))
    if algorithm(cfg.algo).context == "episode" and cfg.dt_context_len > spec.horizon:
        raise DmhError(f"dt_context_len={cfg.dt_context_len} is longer than an episode of {spec.name} "
                       f"({spec.horizon} steps)")
    if spec.kind == "tmaze" and cfg.dataset_path is None:  # generated: every episode runs the whole corridor
        data = TMazeDataConfig(memory_length=spec.memory_length)
        check_memory(GENERATED_BYTES_PER_STEP * data.histories * data.episodes_per_history * spec.horizon,
                     f"the data of {spec.name}")
    elif spec.kind == "grid" and cfg.dataset_path is None:
        check_memory(GENERATED_BYTES_PER_STEP * cfg.data_steps, f"data_steps={cfg.data_steps}")
    evaluation_counts(spec, cfg.eval_tasks, cfg.eval_episodes)


def held_out_count(spec: TaskSpec) -> int | None:
    """How many held-out test tasks the task has (Grid World's fixed list); None where any number can be drawn
    (T-maze goal sides, D4RL starts)."""
    return len(held_out_tasks(spec)) if spec.kind == "grid" else None


def evaluation_counts(spec: TaskSpec, tasks: int, episodes: int, names: tuple[str, str] = ("eval_tasks",
                      "eval_episodes")) -> tuple[int, int]:
    """An evaluation's test tasks and episodes per task (never 0: 0 or None is the task's own, all its held-out
    tasks and the paper's m): no more tasks than are held out, and the returns ``[tasks, episodes]`` within this
    machine's memory. ``names`` are how messages name the two (settings, or ``dmh evaluate``'s options)."""
    held_out = held_out_count(spec)
    tasks, episodes = tasks or len(held_out_tasks(spec)), episodes or spec.eval_episodes
    if held_out is not None and tasks > held_out:
        shown = f"{names[0]} {tasks}" if names[0].startswith("-") else f"{names[0]}={tasks}"  # an option, a setting
        raise DmhError(f"{shown}: {spec.name} has {held_out} held-out test tasks")
    check_memory(8.0 * tasks * episodes, f"an evaluation of {tasks} tasks x {episodes} episodes")
    return tasks, episodes


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Whether CUDA is there is checked by :func:`torch_device` on the
    machine that trains: a sweep's driver on a CPU-only head node validates trials meant for GPU workers."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise DmhError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def torch_device(device: str) -> torch.device:
    """The torch device of a config's ``device`` field, resolved on this machine (``auto``: cuda if torch sees a
    GPU); asking for CUDA where there is none is a ``DmhError``."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DmhError(f"device {device}: torch sees no CUDA GPU here (use device=auto or device=cpu)")
    resolved = torch.device(device)
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():  # else a CUDA error mid-setup
        raise DmhError(f"device {device}: torch sees {torch.cuda.device_count()} GPU(s) here, numbered from 0")
    return resolved
