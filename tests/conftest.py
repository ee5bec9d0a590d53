"""Fixtures shared by the whole test suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small nets run far faster on one thread than on two busy cores; the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
