"""In-context learning curves of tracked runs: mean ± standard error over seeds of the return at each online episode,
one line per algorithm, from the ``eval/return`` history that ``dmh train`` logs (step = episode index).

    python -m analysis.curves --experiment proof --task darkroom --out docs/figures/darkroom_cpu.png

Reads only the MLflow store (``--tracking-uri``, default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np


def load_curves(tracking_uri: str, experiment: str, task: str | None) -> dict[str, list[np.ndarray]]:
    """algo -> one curve [episodes] per FINISHED run (one run per seed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
    curves: dict[str, list[np.ndarray]] = defaultdict(list)
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if task and run.data.params.get("task") != task:
            continue
        history = sorted(client.get_metric_history(run.info.run_id, "eval/return"), key=lambda m: m.step)
        if history:
            curves[run.data.params["algo"]].append(np.array([m.value for m in history]))
    return curves


def summarize(curves: dict[str, list[np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """algo -> (mean [episodes], standard error [episodes], seeds)."""
    out = {}
    for algo, runs in curves.items():
        stacked = np.stack(runs)  # [seeds, episodes]
        se = stacked.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(stacked.shape[1])
        out[algo] = (stacked.mean(axis=0), se, len(runs))
    return out


def plot(summary: dict[str, tuple[np.ndarray, np.ndarray, int]], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for algo, (mean, se, seeds) in sorted(summary.items()):
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, marker="o", markersize=3, label=f"{algo} ({seeds} seeds)")
        ax.fill_between(x, mean - se, mean + se, alpha=0.25)
    ax.set_xlabel("online episode (no gradient updates)")
    ax.set_ylabel("return (mean over held-out tasks)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    from dmh.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--task", default=None)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = summarize(load_curves(args.tracking_uri or default_tracking_uri(), args.experiment, args.task))
    if not summary:
        raise SystemExit("no FINISHED runs with an eval/return curve")
    plot(summary, f"{args.task or args.experiment}: in-context learning on held-out tasks", args.out)
    for algo, (mean, se, seeds) in sorted(summary.items()):
        print(f"{algo:<16} seeds {seeds}  episode 1 {mean[0]:.2f} ± {se[0]:.2f}   episodes 18-20 "
              f"{mean[17:20].mean():.2f}   last {mean[-1]:.2f} ± {se[-1]:.2f}")
        print("  curve: " + " ".join(f"{v:.2f}" for v in mean))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
