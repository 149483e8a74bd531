"""The paper's Tables 1, 2 and 4 from cells (:mod:`dmh.report.compare`), each as Markdown, LaTeX and CSV, with the
paper's number beside ours in every cell. Markdown and LaTeX show formatted text (mean ± s.e. (seeds), or "—" and
the reason); the CSV keeps every number unformatted (means, standard errors, IQM and its interval, the paper's value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dmh.io import atomic_path
from dmh.models import ALGORITHMS
from dmh.vocabulary import D4RL_FAMILIES, D4RL_TASKS, GRID_WORLD

# The paper's name of every algo: those trained here from their registry entry, then the baselines whose numbers only
# the paper has (offline RL in Table 2; AMAGO and DPT in Fig. 2).
ALGO_LABELS = {**{name: entry.label for name, entry in ALGORITHMS.items()},
               "bc-10": "BC-10%", "td3+bc": "TD3+BC", "td3": "TD3", "amago": "AMAGO", "dpt": "DPT"}
TASK_LABELS = {"darkroom": "Darkroom", "darkroom-hard": "Darkroom Hard", "key-to-door": "Dark Key-to-Door",
               "large-darkroom": "Large Darkroom", "large-darkroom-hard": "Large Darkroom Hard",
               "large-key-to-door": "Large Dark Key-to-Door", "halfcheetah": "HalfCheetah", "hopper": "Hopper",
               "walker2d": "Walker2d", "average": "Total average"}
# The paper's row order: medium-expert, medium, medium-replay, each for HalfCheetah, Hopper, Walker2d.
PAPER_ORDER = [f"{env}-{kind}-v2" for kind in ("medium-expert", "medium", "medium-replay") for env in D4RL_FAMILIES]


def task_label(task: str) -> str:
    if task in D4RL_TASKS:
        env, kind = task.removesuffix("-v2").split("-", 1)
        return f"{TASK_LABELS[env]} {kind}"
    return TASK_LABELS.get(task, task)


def fmt(mean: float, se: float = math.nan, n: int | None = None, reason: str = "", digits: int = 2) -> str:
    """``83.15 ± 0.63 (10)``; a missing value is "—" with its reason, never a zero."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return f"— ({reason})" if reason else "—"
    text = f"{mean:.{digits}f}"
    if se is not None and not math.isnan(se):
        text += f" ± {se:.{digits}f}"
    if n is not None:
        text += f" ({n})" + (f" [{reason}]" if reason else "")
    return text


def paper_fmt(row: pd.Series, digits: int = 2) -> str:
    if row["paper_status"] == "out_of_memory":
        return "out of memory"
    if row["paper_status"] != "ok":
        return "—"
    return fmt(row["paper"], row["paper_err"], digits=digits)


@dataclass
class Table:
    """A rendered table: formatted cells for Markdown/LaTeX and the numbers behind them for CSV."""

    name: str  # table1, table2, table4
    caption: str
    text: pd.DataFrame  # formatted strings, first column the row label
    numbers: pd.DataFrame  # the cells it was built from (dmh.report.compare.CELL_COLUMNS plus a ``part`` column)


def side_by_side(cells: pd.DataFrame, rows: list[str], algos: list[str], digits: int = 2) -> pd.DataFrame:
    """One row per task in ``rows``; per algo a "paper" and an "ours" column."""
    out = pd.DataFrame({"": [task_label(t) for t in rows]})
    for algo in algos:
        paper, ours = [], []
        for task in rows:
            hit = cells[(cells["task"] == task) & (cells["algo"] == algo)]
            if hit.empty:
                paper.append("—")
                ours.append("— (no runs)")
                continue
            row = hit.iloc[0]
            paper.append(paper_fmt(row, digits))
            ours.append(fmt(row["mean"], row["se"], int(row["n"]) if row["n"] else None, row["reason"], digits))
        out[f"{ALGO_LABELS[algo]} paper"], out[f"{ALGO_LABELS[algo]} ours"] = paper, ours
    return out


def average_row(cells: pd.DataFrame, algo: str, tasks: list[str]) -> dict[str, float]:
    """Table 2's total average: mean of the per-dataset means, s.e. = sqrt(Σ se²)/k; only when every dataset has
    a value (an average over the datasets that happened to finish would not be comparable)."""
    hit = cells[(cells["algo"] == algo) & cells["task"].isin(tasks) & (cells["n"] > 0)]
    if len(hit) < len(tasks):
        return {"mean": math.nan, "se": math.nan, "n": 0, "reason": f"{len(hit)} of {len(tasks)} datasets"}
    se = float(np.sqrt((hit["se"] ** 2).sum()) / len(tasks))
    return {"mean": float(hit["mean"].mean()), "se": se, "n": int(hit["n"].min()), "reason": ""}


def table2(cells: pd.DataFrame, paper: pd.DataFrame) -> Table:
    algos = ["dt", "ad-mamba", "ad-transformer", "dmh"]
    datasets = PAPER_ORDER
    text = side_by_side(cells, datasets, algos)
    total = {"": "Total average"}
    for algo in algos:
        avg = average_row(cells, algo, datasets)
        printed = paper[(paper["figure"] == "table2") & (paper["task"] == "average") & (paper["algo"] == algo)]
        total[f"{ALGO_LABELS[algo]} paper"] = fmt(printed["value"].iloc[0], printed["err"].iloc[0]) \
            if len(printed) else "—"
        total[f"{ALGO_LABELS[algo]} ours"] = fmt(avg["mean"], avg["se"], avg["n"] or None, avg["reason"])
    text = pd.concat([text, pd.DataFrame([total])], ignore_index=True)
    for column, algo in enumerate(["bc-10", "td3+bc", "td3"], start=1):  # offline RL: paper only (not in-context)
        values = paper[(paper["figure"] == "table2") & (paper["algo"] == algo)].set_index("task")["value"]
        text.insert(column, f"{ALGO_LABELS[algo]} paper",
                    [fmt(values.get(t, math.nan)) for t in [*datasets, "average"]])
    return Table("table2", "Table 2: D4RL normalised score, mean ± s.e. over seeds (seeds in brackets)", text,
                 cells.assign(part="score"))


def table1(effect: pd.DataFrame, efficiency: pd.DataFrame) -> Table:
    algos = ["ad-transformer", "ad-mamba"]
    top = side_by_side(effect, PAPER_ORDER, algos)
    bottom = side_by_side(efficiency, list(D4RL_FAMILIES), algos)
    top.insert(0, "part", "effectiveness (normalised score)")
    bottom.insert(0, "part", "efficiency (hours per 10k updates)")
    numbers = pd.concat([effect.assign(part="effectiveness"), efficiency.assign(part="efficiency")], ignore_index=True)
    return Table("table1", "Table 1: Mamba vs Transformer backbones of AD on D4RL", pd.concat([top, bottom]),
                 numbers)


def speedup(online: pd.DataFrame, task: str) -> tuple[float, str]:
    """Online-time speed-up of DM-H over AD (Transformer): the ratio of their mean minutes, with a reason if not."""
    def mean(algo: str) -> float:
        hit = online[(online["task"] == task) & (online["algo"] == algo) & (online["n"] > 0)]
        return float(hit["mean"].iloc[0]) if len(hit) else math.nan

    base, ours = mean("ad-transformer"), mean("dmh")
    if math.isnan(base) or math.isnan(ours):
        return math.nan, "needs AD (Transformer) and DM-H"
    return base / ours, ""


def table4(offline: pd.DataFrame, online: pd.DataFrame, paper: pd.DataFrame) -> Table:
    algos = ["ad-mamba", "ad-transformer", "dmh"]
    rows = [*GRID_WORLD, *D4RL_FAMILIES]
    off, on = side_by_side(offline, rows, algos), side_by_side(online, rows, algos)
    text = off.rename(columns=lambda c: f"offline {c}" if c else c)
    for column in on.columns[1:]:
        text[f"online {column}"] = on[column]
    printed = paper[(paper["figure"] == "table4") & (paper["metric"] == "speedup_printed")].set_index("task")["value"]
    paper_ratio, ours_ratio, numbers = [], [], []
    for task in rows:
        recomputed, _ = speedup(paper_cells_as_ours(online), task)
        label = f"{recomputed:.1f}×" if not math.isnan(recomputed) else "—"
        if task in printed.index:
            label += f" (printed {printed[task]:g}×)"
        paper_ratio.append(label)
        ratio, reason = speedup(online, task)
        ours_ratio.append(f"{ratio:.1f}×" if not math.isnan(ratio) else f"— ({reason})")
        numbers.append({"task": task, "algo": "dmh", "variant": "", "x": math.nan, "mean": ratio,
                        "paper": recomputed, "reason": reason, "part": "speedup_online"})
    text["speed-up paper"], text["speed-up ours"] = paper_ratio, ours_ratio
    frame = pd.concat([offline.assign(part="offline"), online.assign(part="online"), pd.DataFrame(numbers)],
                      ignore_index=True)
    return Table("table4", "Table 4: offline hours per 10k gradient updates, online testing minutes, and DM-H's "
                 "online speed-up over AD (Transformer)", text, frame)


def paper_cells_as_ours(cells: pd.DataFrame) -> pd.DataFrame:
    """The paper's side of cells in the shape :func:`speedup` reads (to recompute the paper's own ratios)."""
    return pd.DataFrame({"task": cells["task"], "algo": cells["algo"], "mean": cells["paper"],
                         "n": cells["paper"].notna().astype(int)})


# --------------------------------------------------------------------------------------------------------- writers
def markdown(frame: pd.DataFrame) -> str:
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def latex(frame: pd.DataFrame, caption: str) -> str:
    def esc(text: object) -> str:
        out = str(text)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("×", r"$\times$"), ("—", "---"), ("–", "--")):
            out = out.replace(a, b)
        return out

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}", r"\resizebox{\linewidth}{!}{%",
             r"\begin{tabular}{" + "l" * len(frame.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(False)]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: Table, folder: Path) -> list[Path]:
    """``folder/<name>.md``, ``.tex`` and ``.csv``, each written atomically."""
    paths = [folder / f"{table.name}.{ext}" for ext in ("md", "tex", "csv")]
    contents = [f"**{table.caption}**\n\n" + markdown(table.text), latex(table.text, table.caption), None]
    for path, content in zip(paths, contents, strict=True):
        with atomic_path(path) as tmp:
            if content is None:
                table.numbers.to_csv(tmp, index=False)
            else:
                tmp.write_text(content)
    return paths
