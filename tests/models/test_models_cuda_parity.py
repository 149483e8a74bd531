"""GPU parity: on a CUDA machine with mamba-ssm installed, the CUDA and pure-PyTorch backends must agree on the same
weights, and our block must be interchangeable with `mamba_ssm.Mamba`. Skipped everywhere else."""

from __future__ import annotations

import pytest
import torch
from models_testkit import ALGOS, make_batch, tiny_config

from dmh.models import Mamba, build_model, mamba_ssm_available

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()),
                       reason="needs a CUDA device and mamba-ssm"),
]


def _pair(d_model: int = 64) -> tuple[Mamba, Mamba]:
    torch.manual_seed(0)
    on_torch = Mamba(d_model, backend="torch").cuda()
    on_cuda = Mamba(d_model, backend="cuda").cuda()
    on_cuda.load_state_dict(on_torch.state_dict(), strict=True)
    return on_torch, on_cuda


@pytest.mark.parametrize("length", [1, 63, 300])
def test_cuda_kernel_and_torch_scan_agree_on_outputs_and_gradients(length: int) -> None:
    on_torch, on_cuda = _pair()
    x = torch.randn(2, length, 64, device="cuda")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = on_torch(x1), on_cuda(x2)
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-3)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-3, rtol=1e-3)
    for (name, p1), p2 in zip(on_torch.named_parameters(), on_cuda.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-3, rtol=1e-2, msg=name)


def test_our_block_and_mamba_ssm_block_load_each_other_and_agree() -> None:
    from mamba_ssm import Mamba as ReferenceMamba

    ours, _ = _pair()
    reference = ReferenceMamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 50, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-3)


def test_recurrent_step_matches_mamba_ssm_step() -> None:
    from mamba_ssm import Mamba as ReferenceMamba

    ours, _ = _pair()
    reference = ReferenceMamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 20, 64, device="cuda")
    state = ours.init_state(2)
    conv, ssm = state.conv.clone(), state.ssm.clone()
    with torch.no_grad():
        for t in range(20):
            y, state = ours.step(x[:, t], state)
            y_ref, conv, ssm = reference.step(x[:, t : t + 1], conv, ssm)
            torch.testing.assert_close(y, y_ref[:, 0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(state.ssm, ssm, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_model_gives_the_same_predictions_on_both_backends(algo: str) -> None:
    torch.manual_seed(0)
    on_torch = build_model(algo, tiny_config(algo, mamba_backend="torch")).cuda().eval()
    on_cuda = build_model(algo, tiny_config(algo, mamba_backend="cuda")).cuda().eval()
    on_cuda.load_state_dict(on_torch.state_dict(), strict=True)
    batch = {k: v.cuda() for k, v in make_batch([[5, 7], [12]]).items()}
    with torch.no_grad():
        torch.testing.assert_close(on_torch(batch), on_cuda(batch), atol=1e-4, rtol=1e-3)
