"""MLflow runs → two tidy tables, cached as CSV so every later stage works without a tracking server.

- ``runs.csv``: one row per trial (the latest completed run of each trial key), plus the latest unfinished run of a
  trial that never completed, so the report can say why a number is missing. Columns: identity (run id, experiment,
  sweep), the trial's settings (algo, task, seed, preset, steps, c, n_context, valuable_subgoals, eval tasks and
  episodes; for DM-H how its sub-goal z is drawn and its size), its outcome, the per-run scalars the paper reports,
  the final training loss, and the best evaluation beside the final one (``best_return``: the max over the
  evaluations during training, ``Metric.LAST_RETURN_DURING_TRAINING``, and the final ``last_return``;
  ``best_normalized_score`` the same for D4RL; ``evals_during_training`` how many evaluations during training the
  run logged, 0 where best = final).
- ``curves.csv``: one row per completed run and online episode: the in-context curve (``Metric.CURVE``, mean over
  test tasks), ``episode`` counted from 1.
- ``training.csv``: the training curve of every run kept, one row per evaluation (those during training and the
  final one) against the gradient update: the first and the last online episode's return (mean over test tasks),
  the last one's standard error over test tasks, and the training loss logged at that update (with DM-H's two
  branches). What :mod:`dmh.report.convergence` reads to say whether a run's curve had flattened. Optional in a
  cache: one exported before it existed has none.

A sweep's parent run (tag ``Tag.SWEEP_PARENT``) only groups its trials in the MLflow UI and is not exported.

A trial key is the experiment plus every logged setting except where and how a run executed (device, threads,
folders, the Mamba backend): rerunning a trial replaces its earlier result ("latest wins"), while two seeds or two
values of c stay two trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dmh.data.d4rl import normalized_score
from dmh.errors import DmhError
from dmh.io import atomic_path
from dmh.vocabulary import D4RL_TASKS, RUNTIME_PARAMS, Metric, Outcome, Tag

# Per-run scalars: column → MLflow metric (latest value); every key of Metric.RESULTS has one.
SCALARS = {
    "last_return": Metric.LAST_RETURN,
    "normalized_score": Metric.NORMALIZED_SCORE,
    "online_min": Metric.ONLINE_MIN,
    "offline_h_per_10k": Metric.OFFLINE_H_PER_10K,
    "oom": Metric.OOM,
    "final_loss": Metric.TRAIN_LOSS,
}
SETTINGS = {  # column → param, with its type
    "algo": str, "task": str, "seed": int, "preset": str, "steps": int, "c": int, "n_context": int,
    "valuable_subgoals": bool, "eval_tasks": int, "eval_episodes": int,
}
# Settings that training also sets as tags, read from the tag where the param is missing.
SETTING_TAGS = {"algo": Tag.ALGO, "task": Tag.TASK}
# DM-H's sub-goal z as it logs it (DMHConfig's fields under "model."), read into the columns ``z`` and ``z_dim``.
Z_DRAW_PARAM, Z_TRAIN_PARAM, Z_DIM_PARAM = "model.z_draw", "model.z_train", "model.z_dim"
# The best evaluation beside the final one: max over the evaluations during training and the final one.
BEST = ["best_return", "best_normalized_score", "evals_during_training"]
RUN_COLUMNS = ["run_id", "experiment", "sweep", "trial_key", *SETTINGS, "z", "z_dim", "outcome", "status_detail",
               *SCALARS, *BEST, "end_time"]
CURVE_COLUMNS = ["run_id", "episode", "return"]
# The training curve: column → (metric during training, metric of the final evaluation); losses are one metric each.
TRAINING_EVALS = {
    "first_return": (Metric.FIRST_RETURN_DURING_TRAINING, Metric.FIRST_RETURN),
    "last_return": (Metric.LAST_RETURN_DURING_TRAINING, Metric.LAST_RETURN),
    "last_return_se": (Metric.LAST_RETURN_SE_DURING_TRAINING, Metric.LAST_RETURN_SE),
    "held_out_loss": (Metric.HELD_OUT_LOSS_DURING_TRAINING, Metric.HELD_OUT_LOSS),
}
LATER_TRAINING_COLUMNS = ("held_out_loss",)  # added after caches were committed: absent in those, read as missing
TRAINING_LOSSES = {"loss": Metric.TRAIN_LOSS, "loss_z": Metric.TRAIN_LOSS_Z, "loss_goal": Metric.TRAIN_LOSS_GOAL}
TRAINING_COLUMNS = ["run_id", "step", *TRAINING_EVALS, *TRAINING_LOSSES]


@dataclass
class Export:
    """What the report is built from."""

    runs: pd.DataFrame  # RUN_COLUMNS, one row per trial
    curves: pd.DataFrame  # CURVE_COLUMNS, completed runs only
    source: dict  # tracking URI, experiments, export time: written to meta.json and quoted in the report
    training: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=TRAINING_COLUMNS))
    # TRAINING_COLUMNS: each kept run's evaluations against the update (empty in a cache made before it existed)


def outcome(status: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
    """completed (FINISHED with a final evaluation), out_of_memory (a recorded result), or the MLflow status in
    lower case (killed, failed, running, finished-without-evaluation → ``unevaluated``)."""
    if tags.get(Tag.STATUS_DETAIL) == Outcome.OUT_OF_MEMORY or metrics.get(Metric.OOM) == 1:
        return Outcome.OUT_OF_MEMORY
    if status == "FINISHED":
        return Outcome.COMPLETED if Metric.LAST_RETURN in metrics else Outcome.UNEVALUATED
    return status.lower()


def is_sweep_parent(tags: dict[str, str]) -> bool:
    """A sweep's parent run groups its trials in the MLflow UI; it has no settings or results of its own."""
    return tags.get(Tag.SWEEP_PARENT, "").lower() == "true"


def trial_key(experiment: str, params: dict[str, str]) -> str:
    kept = {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}
    return hashlib.sha256(json.dumps([experiment, kept], sort_keys=True).encode()).hexdigest()[:12]


def setting(column: str, params: dict[str, str], tags: dict[str, str]) -> str | None:
    """A setting's logged param, else (algo, task) the tag training sets beside it."""
    tag = SETTING_TAGS.get(column)
    return params.get(column) or (tags.get(tag) if tag else None)


def z_draw(params: dict[str, str]) -> str | None:
    """How a DM-H run draws its sub-goal z, by the z study's names (sweeps/z_study.py): ``mean`` where training uses
    z's mean, else ``model.z_draw`` (``step``: a sample per step; ``block``: one per block); None without a z."""
    if params.get(Z_TRAIN_PARAM) == "mean":
        return "mean"
    return params.get(Z_DRAW_PARAM) or None


def with_best(runs: pd.DataFrame, histories: dict[str, list[float]]) -> pd.DataFrame:
    """``runs`` with the BEST columns, from each run's evaluations during training (run id → values; a run missing
    from ``histories`` logged none, and its best is its final evaluation)."""
    counts = runs["run_id"].map(lambda r: len(histories.get(r, ())))
    during = runs["run_id"].map(lambda r: max(histories[r]) if histories.get(r) else math.nan).astype(float)
    best = np.fmax(runs["last_return"].astype(float), during)  # fmax: NaN only where both are
    # D4RL's normalisation is linear and increasing, so the best normalised score is the normalised best return;
    # taken against the logged final score, so a run without evaluations during training keeps it exactly
    d4rl = runs["task"].isin(D4RL_TASKS)
    normalized = pd.Series(math.nan, index=runs.index)
    normalized[d4rl] = [normalized_score(task, value) if not math.isnan(value) else math.nan
                        for task, value in zip(runs.loc[d4rl, "task"], during[d4rl], strict=True)]
    best_score = np.fmax(runs["normalized_score"].astype(float), normalized).where(d4rl)
    return runs.assign(best_return=best, best_normalized_score=best_score, evals_during_training=counts)


def _typed(value: str | None, kind: type) -> object:
    # "None": the unresolved task default (c, n_context) of a config logged as is, e.g. by a sweep recording an
    # out-of-memory trial whose training never started
    if value is None or value in ("", "None"):
        return None
    if kind is bool:
        return value.strip().lower() == "true"
    if kind is int:
        return int(float(value))
    return value


def export_runs(tracking_uri: str, experiments: list[str] | None = None) -> Export:
    """Read every run of ``experiments`` (default: every experiment in the store) and keep one per trial key."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from dmh.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri or default_tracking_uri())
    if experiments:
        found = {name: client.get_experiment_by_name(name) for name in experiments}
        missing = [name for name, exp in found.items() if exp is None]
        if missing:
            raise DmhError(f"no MLflow experiment named {', '.join(missing)} in {tracking_uri}")
        chosen = list(found.values())
    else:
        chosen = [e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY) if e.name != "Default"]
    rows, evaluated, finals = [], set(), {}
    for exp in chosen:
        for run in client.search_runs([exp.experiment_id], max_results=50_000, run_view_type=ViewType.ACTIVE_ONLY):
            params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
            if is_sweep_parent(tags):
                continue
            row = {"run_id": run.info.run_id, "experiment": exp.name, "sweep": tags.get(Tag.SWEEP) or exp.name,
                   "trial_key": trial_key(exp.name, params),
                   **{col: _typed(setting(col, params, tags), kind) for col, kind in SETTINGS.items()},
                   "z": z_draw(params), "z_dim": _typed(params.get(Z_DIM_PARAM), int),
                   "outcome": outcome(run.info.status, tags, metrics),
                   "status_detail": tags.get(Tag.STATUS_DETAIL, ""),
                   **{col: metrics.get(name, math.nan) for col, name in SCALARS.items()},
                   "end_time": run.info.end_time or run.info.start_time or 0}
            rows.append(row)
            finals[run.info.run_id] = metrics
            if Metric.LAST_RETURN_DURING_TRAINING in metrics:
                evaluated.add(run.info.run_id)
    runs = latest_per_trial(pd.DataFrame(rows, columns=RUN_COLUMNS).drop(columns=BEST))
    # a history costs one request per run: only for the runs kept that logged one
    during = {run_id: client.get_metric_history(run_id, Metric.LAST_RETURN_DURING_TRAINING)
              for run_id in runs["run_id"] if run_id in evaluated}
    histories = {run_id: [m.value for m in metrics] for run_id, metrics in during.items()}
    runs = with_best(runs, histories)[RUN_COLUMNS] if len(runs) else runs.reindex(columns=RUN_COLUMNS)
    runs["z_dim"] = runs["z_dim"].astype("Int64")  # an integer in runs.csv, empty for a run without z
    curves = []
    for run_id in runs.loc[runs["outcome"] == Outcome.COMPLETED, "run_id"]:
        history = client.get_metric_history(run_id, Metric.CURVE)
        curves += [(run_id, m.step + 1, m.value) for m in history]
    curve_frame = pd.DataFrame(curves, columns=CURVE_COLUMNS).sort_values(["run_id", "episode"], ignore_index=True)
    source = {"tracking_uri": tracking_uri, "experiments": [e.name for e in chosen],
              "exported_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")}
    return Export(runs, curve_frame, source, training_curves(client, runs, finals, during))


def training_curves(client: object, runs: pd.DataFrame, finals: dict[str, dict[str, float]],
                    during: dict[str, list]) -> pd.DataFrame:
    """TRAINING_COLUMNS for ``runs``: every evaluation during training (``during``: run id → its history of
    ``Metric.LAST_RETURN_DURING_TRAINING``, for the runs that logged one; their other histories are read here) and
    the final one at the run's ``steps`` (from ``finals``: run id → its latest metrics), each with the training loss
    logged at the same update."""
    rows = []
    for run_id, steps in zip(runs["run_id"], runs["steps"], strict=True):
        points: dict[int, dict[str, float]] = {}
        if run_id in during:
            for column, (key, _) in TRAINING_EVALS.items():
                history = during[run_id] if key == Metric.LAST_RETURN_DURING_TRAINING else \
                    client.get_metric_history(run_id, key)
                for m in history:
                    points.setdefault(m.step, {})[column] = m.value
            for column, key in TRAINING_LOSSES.items():
                for m in client.get_metric_history(run_id, key):
                    if m.step in points:
                        points[m.step][column] = m.value
        latest = finals.get(run_id, {})
        if Metric.LAST_RETURN in latest and not pd.isna(steps):
            points[int(steps)] = {**{c: latest.get(final, math.nan) for c, (_, final) in TRAINING_EVALS.items()},
                                  **{c: latest.get(key, math.nan) for c, key in TRAINING_LOSSES.items()}}
        rows += [{"run_id": run_id, "step": step, **values} for step, values in sorted(points.items())]
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def latest_per_trial(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial key: its latest result (completed or out of memory) if it has one, else its latest run."""
    if runs.empty:
        return runs
    result = runs["outcome"].isin(Outcome.RESULTS)
    ranked = runs.assign(_result=result).sort_values(["trial_key", "_result", "end_time"])
    return ranked.groupby("trial_key").tail(1).drop(columns="_result").sort_values(
        ["sweep", "task", "algo", "seed"], ignore_index=True)


def merge_exports(kept: Export, new: Export) -> Export:
    """Two exports as one, by the rule of one export: one row per trial key, its latest result winning, so a trial
    run again replaces its earlier row and a new trial is added. How a campaign's results outlive the store they
    were run in: each sitting's export is merged into the committed cache (sweeps/campaign.py ``--results``).
    Curves follow the rows kept; ``source`` lists every export merged (``exports``), oldest first."""
    runs = latest_per_trial(pd.concat([kept.runs, new.runs], ignore_index=True)
                            if len(kept.runs) else new.runs.copy())
    runs = runs.reindex(columns=RUN_COLUMNS)
    runs["z_dim"] = runs["z_dim"].astype("Int64")
    curves = pd.concat([kept.curves, new.curves], ignore_index=True).drop_duplicates(["run_id", "episode"],
                                                                                     keep="last")
    curves = curves[curves["run_id"].isin(runs["run_id"])].sort_values(["run_id", "episode"], ignore_index=True)
    training = pd.concat([kept.training, new.training], ignore_index=True).drop_duplicates(["run_id", "step"],
                                                                                          keep="last")
    training = training[training["run_id"].isin(runs["run_id"])].sort_values(["run_id", "step"], ignore_index=True)
    exports = [*kept.source.get("exports", [kept.source]), *new.source.get("exports", [new.source])]
    exports = [e for e in exports if e]  # an empty cache has no source of its own
    source = {"tracking_uri": "; ".join(dict.fromkeys(e.get("tracking_uri", "") for e in exports)),
              "experiments": sorted({x for e in exports for x in e.get("experiments", [])}),
              "exported_at": max(e.get("exported_at", "") for e in exports), "exports": exports}
    return Export(runs, curves, source, training.reindex(columns=TRAINING_COLUMNS))


def save_export(export: Export, folder: Path) -> None:
    """Write ``runs.csv``, ``curves.csv`` and ``meta.json`` into ``folder``, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "runs.csv") as tmp:
        export.runs.to_csv(tmp, index=False)
    with atomic_path(folder / "curves.csv") as tmp:
        export.curves.to_csv(tmp, index=False)
    with atomic_path(folder / "training.csv") as tmp:
        export.training.to_csv(tmp, index=False)
    with atomic_path(folder / "meta.json") as tmp:
        Path(tmp).write_text(json.dumps(export.source, indent=2) + "\n")


def load_export(folder: Path) -> Export:
    """Read a cached export; a missing or malformed cache is a ``DmhError`` naming the file."""
    paths = {name: folder / name for name in ("runs.csv", "curves.csv", "meta.json")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise DmhError(f"no cached export: {', '.join(missing)} missing (run without --from-cache first)")
    runs = pd.read_csv(paths["runs.csv"], keep_default_na=True)
    curves = pd.read_csv(paths["curves.csv"])
    for frame, columns, name in ((runs, RUN_COLUMNS, "runs.csv"), (curves, CURVE_COLUMNS, "curves.csv")):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DmhError(f"{folder / name} lacks column(s) {', '.join(absent)}: re-export it")
    runs["status_detail"] = runs["status_detail"].fillna("")
    runs["z_dim"] = runs["z_dim"].astype("Int64")  # as exported: read_csv makes an integer column with gaps float
    training_path = folder / "training.csv"
    training = (pd.read_csv(training_path) if training_path.exists() else pd.DataFrame(columns=TRAINING_COLUMNS))
    training = training.reindex(columns=[*training.columns, *(c for c in LATER_TRAINING_COLUMNS
                                                               if c not in training.columns)])
    absent = [c for c in TRAINING_COLUMNS if c not in training.columns]
    if absent:
        raise DmhError(f"{training_path} lacks column(s) {', '.join(absent)}: re-export it")
    return Export(runs, curves, json.loads(paths["meta.json"].read_text()), training)
