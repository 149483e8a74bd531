"""Model tests use tiny models: one thread runs them fastest, and a second thread only fights other processes for the
two cores of the CI machine (measured: 145 s with the default two threads under load, 47 s with one)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
