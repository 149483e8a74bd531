"""The paper's published numbers as data: ``paper_numbers.csv`` holds one row per number the paper reports (Tables 1,
2, 4 and Figures 2-6), values exactly as printed or digitised; the ``provenance`` column names the section of the
team's extraction notes (paper.md §6, from the arXiv LaTeX source and figure PDFs) each number was read from.

Provenance legend (first word of the ``provenance`` column, then the paper.md section it came from):
    V   stated in the paper's text or tables;
    D   digitised from a vector figure (accurate to about ±0.5 % of the axis range);
    D~  digitised from a raster figure ("≈" in paper.md; about ±5-10 % of the axis range).
``status`` is ``ok``, ``out_of_memory`` or ``not_reported``; ``value`` is empty unless it is ``ok``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dmh.errors import DmhError

PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
KEY_COLUMNS = ["figure", "task", "algo", "variant", "metric"]
FLOAT_COLUMNS = ["x", "value", "err", "err_low", "err_high"]
COLUMNS = [*KEY_COLUMNS, *FLOAT_COLUMNS, "err_kind", "status", "provenance", "note"]
STATUSES = {"ok", "out_of_memory", "not_reported"}


def load_paper_numbers(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    """Read the paper-numbers CSV: numeric columns as float (NaN when empty), the rest as str ("" when empty).

    Raises DmhError when the file is missing, lacks or adds columns, holds a non-number in a numeric column,
    or has an unknown status / an ok row without a value.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DmhError(f"cannot read paper numbers {path}: {exc}") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in COLUMNS]
    if missing or extra:
        raise DmhError(f"{path}: missing column(s) {missing}, unexpected column(s) {extra}; expected {COLUMNS}")
    df = df[COLUMNS].copy()
    for col in FLOAT_COLUMNS:
        numbers = pd.to_numeric(df[col].replace("", None), errors="coerce")
        bad = df[col].ne("") & numbers.isna()
        if bad.any():
            raise DmhError(f"{path}: column {col!r} has non-numbers {sorted(set(df.loc[bad, col]))}")
        df[col] = numbers.astype(float)
    bad_status = sorted(set(df["status"]) - STATUSES)
    if bad_status:
        raise DmhError(f"{path}: unknown status {bad_status}; expected one of {sorted(STATUSES)}")
    if (df["status"].eq("ok") & df["value"].isna()).any():
        raise DmhError(f"{path}: rows with status 'ok' but no value")
    return df


def paper_value(
    df: pd.DataFrame, figure: str, task: str, algo: str, metric: str, variant: str = "", x: float | None = None
) -> float | None:
    """The one published value matching the keys; None when it is absent or not reported (e.g. out of memory).

    Raises DmhError when the keys match more than one row (pass ``variant`` or ``x`` to disambiguate).
    """
    mask = (df["figure"] == figure) & (df["task"] == task) & (df["algo"] == algo) & (df["metric"] == metric)
    mask &= df["variant"] == variant
    mask &= df["x"].isna() if x is None else df["x"] == float(x)
    hits = df.loc[mask, "value"]
    if len(hits) > 1:
        raise DmhError(f"{len(hits)} paper numbers match {figure}/{task}/{algo}/{metric}/{variant!r}/x={x}")
    if hits.empty or math.isnan(hits.iloc[0]):
        return None
    return float(hits.iloc[0])
