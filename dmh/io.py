"""Atomic file writing: a reader never sees a partial file, and an existing file is only replaced when complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dmh.errors import DmhError


def check_writable_output(path: Path, overwrite: bool) -> None:
    """Fail before any work starts if ``path`` exists (without ``overwrite``) or its folder cannot be written."""
    if path.exists() and not overwrite:
        raise DmhError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise DmhError(f"{path} is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise DmhError(f"cannot write to {parent}")


def check_writable_dir(path: Path, what: str) -> None:
    """Fail before any work starts unless folder ``path`` could be created and written, leaving nothing behind: a
    probe file is written and removed in ``path`` or, if it does not exist yet, in its nearest existing ancestor.
    Permission bits say nothing for root; a path under a regular file, a read-only mount or a full disk stop it."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DmhError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    probe = existing / f".dmh-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise DmhError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block finishes without error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def open_hdf5(path: Path, what: str):  # -> h5py.File (h5py imported lazily: not every caller needs it)
    """Open an HDF5 file read-only; a missing path, a folder or a truncated/corrupt file is one ``DmhError``."""
    import h5py

    if path.is_dir():
        raise DmhError(f"{path} is a directory, not {what}")
    if not path.is_file():
        raise DmhError(f"{what} {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DmhError(f"{path} is not a readable HDF5 file (truncated or corrupt): {exc}") from None
