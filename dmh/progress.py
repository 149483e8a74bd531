"""Progress reporting: a tqdm bar on a terminal, a few plain log lines otherwise (CI logs, Ray workers, files)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("dmh")


def progress(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
             log_every: float = 0.25) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on a TTY, or log every ``log_every`` of the way when not a terminal."""
    if not enabled:
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    next_mark = log_every
    for i, item in enumerate(items):
        yield item
        if total and (i + 1) / total >= next_mark - 1e-9:
            log.info("%s: %d/%d (%.0f%%)", desc, i + 1, total, 100 * (i + 1) / total)
            next_mark += log_every
