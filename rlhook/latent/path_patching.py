"""Path patching: the effect of one module on the outputs that flows only through another."""

from __future__ import annotations

from collections.abc import Sequence

from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.keys import clone_given, source_td
from rlhook.latent.patching import Divergence, PatchEffects, PatchFn, checked_patch
from rlhook.methods import Prepared
from rlhook.paths import Path
from rlhook.targets import Target

__all__ = ["PathPatching"]


class PathPatching(PatchEffects):
    """The effect of ``sender`` on the outputs that flows *only* through ``receiver``'s output.

    Three runs after the source run: (1) the clean run, caching the ``freeze`` modules; (2) a run on the clean
    inputs with ``sender``'s output taken from the source run and every ``freeze`` module held at its clean
    value, recording ``receiver``'s output; (3) the clean run with ``receiver``'s output set to that recording.
    Paths from ``sender`` that avoid ``receiver`` keep their clean values, and so do paths through the frozen
    modules (the other branches in between).

    Reads ``k`` and ``("patched", k)``; writes the clean outputs, the source outputs at ``("patched", out_key)``,
    ``("patch", name, out_key)``, ``("patch_effect", name[, target])`` and ``("patch_divergence", name)`` with
    ``name = "sender->receiver"``, as ``ActivationPatching`` does. ``patch_fn(clean, source)`` as there, for the
    sender.
    """

    def __init__(
        self,
        sender: Path,
        receiver: Path,
        target: Target | None = None,
        *,
        freeze: Path | Sequence[Path] = (),
        divergence: Divergence | None = None,
        patch_fn: PatchFn | None = None,
        normalize: bool = False,
        source: str = "patched",
    ) -> None:
        self.sender, self.receiver, self.freeze = sender, receiver, freeze
        self.target, self.divergence, self.patch_fn = target, divergence, patch_fn
        self.normalize = normalize
        self.set_keys(source=source)
        self.check_effect()

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        sender, receiver = hooked.resolve_one(self.sender), hooked.resolve_one(self.receiver)
        frozen = (
            hooked.resolve(self.freeze) if (isinstance(self.freeze, str | nn.Module) or self.freeze) else []
        )
        bad = [n for n, m in frozen if m is sender[1] or m is receiver[1]]
        if bad:
            raise ValueError(
                f"freeze={bad} includes the sender or the receiver; freeze only the other modules"
            )
        hooked.state.sender, hooked.state.receiver, hooked.state.frozen = sender, receiver, frozen

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        out_keys, state = hooked.out_keys, hooked.state
        sender, receiver, frozen = state.sender, state.receiver, state.frozen
        s_name, r_name = sender[0], receiver[0]
        with hooked.run(source_td(td, hooked.in_keys, self.key("source"))) as run:
            sent = run.save(sender)
        source_out = clone_given(run.output)
        src = run.collect({s_name: sent})[s_name]
        with hooked.run(td) as run:
            held = {n: run.save((n, m)) for n, m in frozen}
        clean_out = clone_given(run.output)
        clean_cache = run.collect(held)
        swap = self.patch_fn or (lambda clean, source: source)
        with hooked.run(self.fresh(hooked, td)) as run:
            run.set(sender, checked_patch(lambda act: swap(act, src), s_name))
            for n, m in frozen:
                run.set((n, m), checked_patch(lambda act, v=clean_cache[n]: v, n))
            got = run.save(receiver)
        received = run.collect({r_name: got})[r_name]
        with hooked.run(self.fresh(hooked, td)) as run:
            run.set(receiver, checked_patch(lambda act: received, r_name))
        patched_out = run.output
        name = f"{s_name}->{r_name}"
        self.write_outputs(td, "source", None, source_out, out_keys)
        self.write_outputs(td, "patch", name, patched_out, out_keys)
        self.write_effects(td, name, clean_out, patched_out, source_out)
        return td
