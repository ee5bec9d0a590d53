"""The only place rlhook touches private torch / torchrl / tensordict API; each use says why."""

from __future__ import annotations

import torch

__all__ = ["is_vmapped"]


def is_vmapped(value: torch.Tensor) -> bool:
    """Whether ``value`` is a functorch batched tensor (a value inside ``torch.vmap``).

    Private: torch has no public predicate; TorchRL's GAE runs the value network under vmap, and an
    activation recorded there cannot leave the vmapped call.
    """
    return bool(torch._C._functorch.is_batchedtensor(value))
