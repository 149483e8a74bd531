"""In-context learning curves of one MLflow experiment: mean ± standard error over seeds of the return at each online
episode, one line per algorithm, beside the paper's Fig. 2 curve where the task is in it. The same cells and drawing
as the report's Fig. 2 (:mod:`dmh.report.make_all`), for any experiment, e.g. a set of ``dmh train`` runs:

    python -m dmh.report.curves --experiment proof --task darkroom --out docs/figures/darkroom_cpu.png

Reads only the MLflow store (``--tracking-uri``, default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dmh.errors import DmhError
from dmh.report import figures
from dmh.report.compare import VIEWS, cells
from dmh.report.export import export_runs
from dmh.report.paper import load_paper_numbers
from dmh.report.tables import task_label
from dmh.vocabulary import Metric


def main(argv: list[str] | None = None) -> int:
    from dmh.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, required=True, help="figure file (.png or .pdf)")
    args = parser.parse_args(argv)
    try:
        export = export_runs(args.tracking_uri or default_tracking_uri(), [args.experiment])
    except DmhError as exc:
        print(f"curves: error: {exc}", file=sys.stderr)
        return 2
    view = dataclasses.replace(VIEWS["fig2"], sweeps=tuple(export.runs["sweep"].unique()), algos=(),
                               tasks=lambda task: task == args.task)
    frame = cells(export, load_paper_numbers(), view)
    ours = frame[frame["n"] > 0]
    if ours.empty:
        print(f"curves: error: no completed run of {args.task} with a {Metric.CURVE} curve in {args.experiment}",
              file=sys.stderr)
        return 2
    fig = figures.panels_figure([(frame, task_label(args.task), "online episode (no gradient updates)", "return")],
                                (1, 1), f"{args.task}: in-context learning on held-out tasks")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures.save(fig, args.out.parent, args.out.stem)
    for algo, curve in ours.groupby("algo"):
        curve = curve.sort_values("x")
        mean, se = curve["mean"].to_numpy(), curve["se"].to_numpy()
        print(f"{algo:<16} seeds {curve['n'].max()}  episode 1 {mean[0]:.2f} ± {se[0]:.2f}   "
              f"last {mean[-1]:.2f} ± {se[-1]:.2f}")
        print("  curve: " + " ".join(f"{v:.2f}" for v in mean))
    print(f"wrote {args.out.with_suffix('.png')} and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
