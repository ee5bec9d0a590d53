"""Attribution on collected batches: standalone or as a collector ``postproc``.

Collectors step the policy under ``no_grad`` with a random exploration type, so gradient methods re-run the
network on the stored observations with gradients on and an explicit exploration type (deterministic by
default). ``ExplainBatch`` does that for any ``Method`` and writes the products under ``("rlhook", ...)``,
next to the steps that caused them, for batches of any shape (``[T]``, ``[n_envs, T]``, padded trajectories).

>>> explain = ExplainBatch(Saliency(target="state_value", abs=False), critic)
>>> collector = Collector(env, policy, frames_per_batch=1000, total_frames=10_000, postproc=explain)
>>> batch["rlhook", "attr", "observation"]            # [T, 9]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from rlhook.methods import Method
from rlhook.rl.torchrl_compat import exploration

__all__ = ["ExplainBatch"]


class ExplainBatch:
    """Run ``method`` on ``module`` over a batch and copy its products into the batch under ``prefix``.

    Args:
        method: any ``Method`` (``Saliency``, ``IntegratedGradients`` with ``("baseline", k)`` in the batch...).
        module: the TensorDict module explained (a critic, an actor, a shared actor-critic).
        products: the top-level keys copied (default: every key the method declares, ``method.key_map()``).
        prefix: where they go in the batch (default ``"rlhook"``: ``("rlhook", "attr", "observation")``).
        exploration_type: ``"deterministic"`` (default), ``"mode"``, ``"mean"`` or ``"random"``.

    Reads the module's ``in_keys`` (and anything the target reads, e.g. ``"action"``); writes
    ``(prefix, *product_key)``. The batch's other entries are left as they are.
    """

    def __init__(
        self,
        method: Method,
        module: TensorDictModuleBase,
        *,
        products: Sequence[str] | None = None,
        prefix: NestedKey = "rlhook",
        exploration_type: str = "deterministic",
    ) -> None:
        declared = [k if isinstance(k, str) else k[0] for k in method.key_map().values()]
        self.method, self.module = method, module
        self.products = tuple(dict.fromkeys(declared)) if products is None else tuple(products)
        self.prefix = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        self.exploration_type = exploration_type

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        work = batch.exclude(*self.prefix[:1]).clone(False)  # shallow: the method writes into its own copy
        with (
            self.method.prepare(self.module) as hooked,
            exploration(self.exploration_type),
            torch.enable_grad(),
        ):
            out = hooked(work)
        taken = [
            name for name in self.products if name in out.keys() and (*self.prefix, name) in batch.keys(True)
        ]
        if taken:
            raise ValueError(
                f"the batch already holds {[(*self.prefix, n) for n in taken]} (another ExplainBatch?); give this "
                "one its own prefix=..., e.g. prefix=('rlhook', 'critic')"
            )
        for name in self.products:
            if name in out.keys():
                value = out.get(name)
                batch.set((*self.prefix, name), value.detach() if isinstance(value, torch.Tensor) else value)
        return batch
