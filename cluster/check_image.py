"""The image's own check: the last step of its build (cluster/Dockerfile), and on a GPU node

    docker run --rm --gpus all <registry>/dmh:<tag> python /home/ray/dmh/cluster/check_image.py

torch and mamba-ssm are the versions cluster/constraints.txt pins; mamba-ssm's kernel module imports into this torch
(a kernel built against another torch fails here with "undefined symbol", where merely finding its file passes);
dmh's probe agrees; and where a GPU is visible, one selective scan runs on it and matches dmh's reference scan (a build
without a GPU says so and skips only that). Exit 0 when everything holds, else one line naming the first thing that
does not, exit 1.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().with_name("constraints.txt")
PINNED = ("torch", "triton", "mamba-ssm")  # what the kernel is built against, and the kernel itself


class ImageError(Exception):
    """What the image got wrong, in one line."""


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if version:
            found[name.lower()] = version
    return found


def check_versions(lock: Path = LOCK) -> str:
    """Every PINNED distribution installed at the lock's version (torch's local tag included: a torch from another
    index is another build)."""
    wanted = pins(lock)
    for name in PINNED:
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = "not installed"
        if installed != wanted[name]:
            raise ImageError(f"{name} is {installed}, the lock ({lock.name}) pins {wanted[name]}: the image does not "
                             "hold what it was built against")
    return ", ".join(f"{name} {wanted[name]}" for name in PINNED)


def check_kernel() -> str:
    """mamba-ssm's compiled kernel and its Python side import into this torch, and dmh's probe says so."""
    try:
        import selective_scan_cuda  # noqa: F401
    except Exception as exc:  # an ImportError, "undefined symbol" when built against another torch
        raise ImageError(f"mamba-ssm's kernel selective_scan_cuda does not import: {one_line(exc)}") from None
    try:
        from mamba_ssm import Mamba  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as exc:
        raise ImageError(f"mamba-ssm does not import: {one_line(exc)}") from None
    from dmh.models import mamba_ssm_available

    if not mamba_ssm_available():
        raise ImageError("dmh's probe (dmh.models.mamba_ssm_available) says mamba-ssm's kernel is missing")
    return "selective_scan_cuda and mamba_ssm import; dmh's probe agrees"


def check_scan_on_the_gpu() -> str:
    """One selective scan by the kernel on the GPU, against dmh's sequential reference on the same inputs."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU visible (a build): the kernel was not run; docker run --gpus all ... runs it"
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    from dmh.models import selective_scan_reference

    generator = torch.Generator().manual_seed(0)
    batch, length, d_inner, d_state = 2, 37, 8, 4

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    u, delta = rand(batch, length, d_inner), torch.rand(batch, length, d_inner, generator=generator) * 0.1
    A, B, C, D = -torch.rand(d_inner, d_state, generator=generator), rand(batch, length, d_state), \
        rand(batch, length, d_state), rand(d_inner)
    expected, _ = selective_scan_reference(u, delta, A, B, C, D)  # [B, L, d_inner]
    gpu = [t.cuda() for t in (u, delta, A, B, C, D)]
    got = selective_scan_fn(gpu[0].transpose(1, 2).contiguous(), gpu[1].transpose(1, 2).contiguous(), gpu[2],
                            gpu[3].transpose(1, 2).contiguous(), gpu[4].transpose(1, 2).contiguous(), gpu[5])
    error = (got.transpose(1, 2).cpu() - expected).abs().max().item()
    if not error < 1e-3:
        raise ImageError(f"mamba-ssm's scan on {torch.cuda.get_device_name()} differs from dmh's reference by {error}")
    return f"one selective scan on {torch.cuda.get_device_name()} matches dmh's reference (max difference {error:.1e})"


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def main(argv: list[str]) -> int:
    if argv:
        print(f"check_image: error: takes no arguments, got {' '.join(argv)}", file=sys.stderr)
        return 2
    try:
        for check in (check_versions, check_kernel, check_scan_on_the_gpu):
            print(f"check_image: {check()}")
    except ImageError as exc:
        print(f"check_image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
