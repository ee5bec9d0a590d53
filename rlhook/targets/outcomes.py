"""Game-outcome targets: chess win/draw/loss heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import get_key

__all__ = ["WDL"]


class WDL:
    """Chess outcome targets from the ``"wdl"`` logits key (shape ``batch + (3,)``, order win, draw, loss).

    ``outcomes`` picks entries of ``"W"``, ``"D"``, ``"L"`` (one map each; a single string gives one
    target) and ``"score"`` for the expected score ``P(W) - P(L)``. ``kind="prob"`` explains softmax
    probabilities, ``"logit"`` the raw logits, ``"logprob"`` log-softmax.
    """

    _INDEX = {"W": 0, "D": 1, "L": 2}

    def __init__(
        self, outcomes: str | Sequence[str] = ("W", "D", "L"), *, kind: str = "prob", key: NestedKey = "wdl"
    ) -> None:
        names = [outcomes] if isinstance(outcomes, str) else list(outcomes)
        bad = [o for o in names if o not in (*self._INDEX, "score")]
        if bad or kind not in ("prob", "logit", "logprob"):
            raise ValueError(
                f"WDL outcomes must be among 'W', 'D', 'L', 'score' (got {names}) and kind one of "
                f"'prob', 'logit', 'logprob' (got {kind!r})"
            )
        if kind == "logit" and "score" in names:
            raise ValueError("the expected score needs probabilities: use kind='prob' with 'score'")
        self.outcomes, self.single, self.kind, self.key = names, isinstance(outcomes, str), kind, key

    def __call__(self, out: TensorDictBase) -> torch.Tensor | TensorDictBase:
        logits = get_key(out, self.key, what="WDL logits")
        if logits.shape[-1] != 3:
            raise ValueError(
                f"WDL logits at {self.key!r} must end in 3 entries (W, D, L), got {tuple(logits.shape)}"
            )
        values = {"logit": logits, "prob": logits.softmax(-1), "logprob": logits.log_softmax(-1)}[self.kind]
        result = {
            o: (values[..., 0] - values[..., 2]) if o == "score" else values[..., self._INDEX[o]]
            for o in self.outcomes
        }
        if self.single:
            return result[self.outcomes[0]]
        return TensorDict(result, batch_size=out.batch_size)

    def __repr__(self) -> str:
        return f"WDL({self.outcomes!r}, kind={self.kind!r}, key={self.key!r})"
