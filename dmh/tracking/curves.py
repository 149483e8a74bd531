"""The in-context curve's artifacts: its CSV table and its PNG figure, built in memory by pure functions."""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def curve_csv(returns: np.ndarray, mean: np.ndarray, std: np.ndarray) -> str:
    """``returns`` ``[tasks, episodes]`` as CSV text: episode, mean and std over tasks, then one column per task."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["episode", "mean_return", "std_return", *(f"task_{t}" for t in range(returns.shape[0]))])
    for episode in range(returns.shape[1]):
        writer.writerow([episode, repr(float(mean[episode])), repr(float(std[episode])), *returns[:, episode]])
    return buffer.getvalue()


def curve_figure(mean: np.ndarray, std: np.ndarray, n_tasks: int, title: str) -> Figure:
    """Mean return by episode in context, with a ±1 std band over tasks when there are several."""
    # A bare Figure with the Agg canvas: no pyplot, so the process-wide matplotlib backend is left alone. Imported
    # here because matplotlib is slow to import and only runs that log a curve need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    episodes = np.arange(len(mean))
    axes.plot(episodes, mean, marker="o" if len(mean) <= 30 else None, label=f"mean over {n_tasks} task(s)")
    if n_tasks > 1 and all(math.isfinite(v) for v in std):
        axes.fill_between(episodes, mean - std, mean + std, alpha=0.25, label="± 1 std")
    axes.set_xlabel("episode in context")
    axes.set_ylabel("return")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure
