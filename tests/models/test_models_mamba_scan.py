"""The pure-PyTorch Mamba: chunked parallel scan vs its sequential twin, forward vs recurrent step, and the parameter
layout that makes checkpoints portable between the CUDA and torch backends."""

from __future__ import annotations

import logging

import pytest
import torch
from models_testkit import ALGOS, tiny_config

import dmh.models.mamba as mamba_module
from dmh.models import Mamba, MambaBackbone, build_model, selective_scan, selective_scan_reference

# name -> shape of mamba_ssm.Mamba(d_model=16, d_state=4, d_conv=4, expand=2) (dt_rank = ceil(16 / 16) = 1)
MAMBA_SSM_PARAMETERS = {
    "A_log": (32, 4),
    "D": (32,),
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,),
    "x_proj.weight": (9, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "out_proj.weight": (16, 32),
}


def _scan_inputs(batch: int, length: int, d_inner: int = 6, d_state: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d_inner, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, d_inner, generator=g))
    A = -torch.rand(d_inner, d_state, generator=g) * 4 - 0.1
    B = torch.randn(batch, length, d_state, generator=g)
    C = torch.randn(batch, length, d_state, generator=g)
    D = torch.randn(d_inner, generator=g)
    h0 = torch.randn(batch, d_inner, d_state, generator=g)
    return u, delta, A, B, C, D, h0


@pytest.mark.parametrize("length", [1, 7, 16, 33, 100])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_state", "initial_state"])
def test_chunked_scan_equals_sequential_reference(length: int, with_h0: bool) -> None:
    u, delta, A, B, C, D, h0 = _scan_inputs(2, length)
    h0 = h0 if with_h0 else None
    y_ref, h_ref = selective_scan_reference(u, delta, A, B, C, D, h0)
    y, h = selective_scan(u, delta, A, B, C, D, h0, chunk_size=16)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_scan_stays_finite_over_long_chunks_with_strong_decay() -> None:
    """Decays multiply rather than being summed in log space, so a long chunk with exp(-100) decays cannot overflow."""
    u, delta, A, B, C, D, _ = _scan_inputs(1, 256)
    y_ref, _ = selective_scan_reference(u, delta * 20, A, B, C, D)
    y, _ = selective_scan(u, delta * 20, A, B, C, D, chunk_size=256)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointed", [True, False], ids=["recomputed_states", "kept_states"])
def test_scan_backward_has_the_reference_gradients(checkpointed: bool) -> None:
    """The hand-written backward, for every input including the initial state and through the final state."""
    inputs = [x.requires_grad_() for x in _scan_inputs(2, 37)]
    y, h = selective_scan(*inputs, chunk_size=8, checkpoint_chunks=checkpointed)
    grads = torch.autograd.grad((y.sin().sum() + h.sum()), inputs)
    y_ref, h_ref = selective_scan_reference(*inputs)
    grads_ref = torch.autograd.grad((y_ref.sin().sum() + h_ref.sum()), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_scan_backward_passes_gradcheck_in_double_precision() -> None:
    inputs = [x.double().requires_grad_() for x in _scan_inputs(1, 11, d_inner=3, d_state=2)]
    assert torch.autograd.gradcheck(lambda *x: selective_scan(*x, chunk_size=4), inputs)


def test_recurrent_step_reproduces_the_parallel_forward() -> None:
    torch.manual_seed(0)
    stack = MambaBackbone(16, 2, d_state=4, backend="torch", scan_chunk=8)
    x = torch.randn(3, 21, 16)
    with torch.no_grad():
        full = stack(x)
        state = stack.init_state(3)
        stepped = torch.stack([stack.step_token(x[:, t], state) for t in range(21)], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


def test_masked_step_leaves_non_advancing_rows_untouched() -> None:
    torch.manual_seed(0)
    stack = MambaBackbone(16, 2, d_state=4, backend="torch")
    state = stack.init_state(2)
    with torch.no_grad():
        stack.step_token(torch.randn(2, 16), state)
        before = [(s.conv.clone(), s.ssm.clone()) for s in state]
        stack.step_token(torch.randn(2, 16), state, advance=torch.tensor([True, False]))
    for (conv, ssm), s in zip(before, state, strict=True):
        assert torch.equal(s.conv[1], conv[1]) and torch.equal(s.ssm[1], ssm[1])
        assert not torch.equal(s.ssm[0], ssm[0])


def test_parameters_have_mamba_ssm_names_and_shapes() -> None:
    block = Mamba(16, d_state=4, d_conv=4, expand=2, backend="torch")
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == MAMBA_SSM_PARAMETERS


def test_state_dict_round_trips_strictly_with_mambapy_and_outputs_agree() -> None:
    """mambapy's MambaBlock has mamba_ssm's layout: an independent implementation to load our weights into."""
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    ours = Mamba(16, d_state=4, backend="torch")
    theirs = mambapy.MambaBlock(mambapy.MambaConfig(d_model=16, n_layers=1, d_state=4, pscan=False))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 19, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("algo", ALGOS)
def test_checkpoint_from_one_backend_loads_strictly_into_the_other(algo: str, monkeypatch) -> None:
    """The backend only picks a compute path: a cuda-configured model has exactly the torch model's state_dict."""
    torch_model = build_model(algo, tiny_config(algo, mamba_backend="torch"))
    monkeypatch.setattr(mamba_module, "mamba_ssm_available", lambda: True)  # construct as on a GPU machine
    cuda_model = build_model(algo, tiny_config(algo, mamba_backend="cuda"))
    cuda_model.load_state_dict(torch_model.state_dict(), strict=True)
    torch_model.load_state_dict(cuda_model.state_dict(), strict=True)


def test_cuda_backend_without_mamba_ssm_fails_with_a_clear_error() -> None:
    if mamba_module.mamba_ssm_available():
        pytest.skip("mamba_ssm is installed here")
    with pytest.raises(ImportError, match="mamba-ssm"):
        Mamba(16, backend="cuda")


def test_whether_mamba_ssm_imports_is_asked_of_the_import_system_once_per_process(monkeypatch) -> None:
    """``auto`` asks on every forward of every block on a GPU; Python does not remember a failed import, so without a
    cache each forward would search for mamba_ssm again (or rerun its ``__init__`` where its CUDA extension is
    broken)."""
    import sys

    class CountingFinder:
        searches = 0

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "mamba_ssm":
                CountingFinder.searches += 1
            return None

    forget = getattr(mamba_module.mamba_ssm_available, "cache_clear", lambda: None)
    forget()
    monkeypatch.setattr(sys, "meta_path", [CountingFinder(), *sys.meta_path])
    try:
        first = mamba_module.mamba_ssm_available()
        searched = CountingFinder.searches
        assert all(mamba_module.mamba_ssm_available() == first for _ in range(4))
    finally:
        forget()
    assert CountingFinder.searches == searched  # the later calls searched nothing


def test_auto_backend_on_cpu_runs_the_torch_scan_and_logs_it(caplog) -> None:
    block = Mamba(16, d_state=4, backend="auto")
    with caplog.at_level(logging.INFO, logger="dmh.models.mamba"):
        block(torch.randn(1, 5, 16))
    assert block.resolved_backend(torch.zeros(1)) == "torch"
    assert "runs the torch selective scan" in caplog.text
