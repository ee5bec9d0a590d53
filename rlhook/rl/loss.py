"""``LossAttribution``: attribute each term of a TorchRL loss to observations and to activations inside it.

TorchRL losses keep their networks as plain attributes (``loss.actor_network``, ``loss.critic_network``) and
may call them with swapped-in parameters, under ``torch.vmap`` (value estimators, ensembles) or several times
(target networks, ensemble members). This method runs the loss once with gradients on and takes one
gradient per loss term through that single graph:

- ``("attr", term, key)``: gradient of the term w.r.t. input ``key`` (times the input with
  ``multiply_by_inputs``), one row per sample of the batch;
- ``("attr", term, layer)``: gradient w.r.t. the layer's output; a layer that ran several times gets one key
  per call, named after the parameters it ran with (``layer#value_network``, ``layer#target_value_network``:
  TorchRL swaps a target network's parameters into the same module), else by call order (``layer#0``,
  ``layer#1``: ensemble members with ``deactivate_vmap=True``);
- ``method.grad_norms``: a TensorDict ``{term: {module: norm of d term / d its own parameters}}`` for every
  module with parameters in the loss's networks.

A layer that runs under ``torch.vmap`` (GAE's default value estimation inside the loss, SAC-style ensembles)
cannot be attributed per call: that raises an error naming ``deactivate_vmap=True`` (or precomputing the
advantage) rather than returning something silently wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook import elements
from rlhook.compat import is_vmapped
from rlhook.hooks import Hooks
from rlhook.keys import get_key
from rlhook.methods import Method, Prepared
from rlhook.paths import Path, resolve
from rlhook.proxy import Proxy

__all__ = ["LossAttribution", "loss_networks"]

DEFAULT_TERMS = ("loss_objective", "loss_critic", "loss_entropy")


def loss_networks(loss: nn.Module) -> nn.ModuleDict:
    """The networks a TorchRL loss holds as attributes (``actor_network``, ``critic_network``, ...), as a
    ``ModuleDict`` so that paths like ``"critic_network.module.fc1"`` resolve."""
    nets = {k: v for k, v in vars(loss).items() if k.endswith("_network") and isinstance(v, nn.Module)}
    nets.update({k: v for k, v in loss.named_children() if k.endswith("_network")})
    if not nets:
        raise TypeError(f"{type(loss).__name__} holds no '*_network' modules; is it a TorchRL LossModule?")
    return nn.ModuleDict(nets)


def _checked_calls(name: str, proxy: Proxy) -> list[torch.Tensor]:
    """Every call's output of a layer, refusing vmapped calls (recorded, never raised inside: TorchRL swaps
    parameters around those calls, and raising in its vmapped call would leave batched tensors behind)."""
    for out in proxy.calls:
        if isinstance(out, torch.Tensor) and is_vmapped(out):
            raise RuntimeError(
                f"layer {name!r} ran under torch.vmap inside the loss, so its activations cannot be attributed "
                "per call. TorchRL vmaps value estimators run inside a loss (GAE, TD(lambda): build them with "
                "deactivate_vmap=True, or compute the advantage before calling the loss) and critic ensembles "
                "(SAC, TD3, REDQ: build the loss with deactivate_vmap=True)"
            )
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"layer {name!r} returned {type(out).__name__}; attribution needs a tensor: name an element, "
                f"e.g. '{elements.first_of(name)}'"
            )
    return list(proxy.calls)


class LossAttribution(Method):
    """Attribute loss terms (``loss_objective``, ``loss_critic``, ``loss_entropy``...) of a TorchRL loss.

    Args:
        terms: loss output keys to explain (each a scalar).
        inputs: batch keys to attribute to (default ``["observation"]``).
        layers: paths relative to the loss's networks (``"actor_network.module.0.module.act1"``); regexes work.
        multiply_by_inputs: write gradient x input for ``inputs`` (layers always get the plain gradient).

    Writes ``("attr", term, k)`` for each term and input or layer, and ``("grad_norm", term, module)``: the
    norm of the term's gradient w.r.t. each module's own parameters (a scalar expanded over the batch; also
    kept as a TensorDict in the prepared module's ``state.grad_norms``).

    Use as ``with LossAttribution(...).prepare(loss) as hooked: td = hooked(batch)``.
    """

    keys = {"attr": "attr", "grad_norm": "grad_norm"}

    def __init__(
        self,
        terms: Sequence[str] = DEFAULT_TERMS,
        *,
        inputs: Sequence[NestedKey] = ("observation",),
        layers: Path | Sequence[Path] | None = None,
        multiply_by_inputs: bool = False,
    ) -> None:
        self.terms, self.inputs, self.layers = list(terms), list(inputs), layers
        self.multiply_by_inputs = multiply_by_inputs

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        nets = loss_networks(hooked.model)
        state = hooked.state
        # resolved against the networks, so the sites' modules belong to the loss
        state.layers = resolve(nets, self.layers) if self.layers is not None else []
        weighted = [
            (name, [p for p in m.parameters(recurse=False) if p.requires_grad])
            for name, m in nets.named_modules()
        ]
        state.weighted = [(name, ps) for name, ps in weighted if ps]
        state.grad_norms = None
        state.labels = {name: [] for name, _ in state.layers}
        sets = _parameter_sets(hooked.model)
        for name, module in state.layers:
            probe = _first_parameter(nets[name.split(".")[0]])

            def label(mod: nn.Module, args: object, name: str = name, probe: tuple = probe) -> None:
                state.labels[name].append(_which(probe, sets))

            hooks.forward_pre(module, label)

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        for labels in hooked.state.labels.values():
            labels.clear()
        work = td.copy()
        leaves = {}
        for key in self.inputs:
            x = get_key(work, key)
            leaves[key] = x.detach().clone().requires_grad_(True)
            work.set(key, leaves[key])
        with torch.enable_grad():
            with hooked.run(work) as run:
                saved = {name: run.save((name, module)) for name, module in hooked.state.layers}
            out = run.output
            calls = {name: _checked_calls(name, proxy) for name, proxy in saved.items()}
            missing = [t for t in self.terms if t not in out.keys()]
            if missing:
                raise KeyError(f"the loss wrote no {missing}; it wrote {sorted(map(str, out.keys()))}")
            acts = {
                key: a
                for name, outputs in calls.items()
                for key, a in zip(_call_keys(name, hooked.state.labels[name]), outputs)
            }
            params = dict(hooked.state.weighted)
            flat_params = [p for ps in params.values() for p in ps]
            wrt = list(leaves.values()) + list(acts.values()) + flat_params
            products: dict[str, dict[NestedKey, torch.Tensor]] = {}
            norms = {}
            for i, term in enumerate(self.terms):
                value = out.get(term)
                if value.numel() != 1 or not value.requires_grad:
                    raise ValueError(
                        f"loss term {term!r} is not a differentiable scalar (shape {tuple(value.shape)})"
                    )
                # calls made without grad (target values, bootstrapped estimates) get a zero map: the term
                # does not depend on them through the graph
                live = [w for w in wrt if w.requires_grad]
                got = iter(
                    torch.autograd.grad(
                        value.sum(), live, retain_graph=i < len(self.terms) - 1, allow_unused=True
                    )
                )
                grads = [next(got) if w.requires_grad else None for w in wrt]
                grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
                maps: dict[NestedKey, torch.Tensor] = {}
                for (key, x), g in zip(leaves.items(), grads):
                    maps[key] = g * x.detach() if self.multiply_by_inputs else g
                for name, g in zip(acts, grads[len(leaves) :]):
                    maps[name] = g
                product_maps = {k: _fit(v, td.batch_size) for k, v in maps.items()}
                products[term] = product_maps
                rest = iter(grads[len(leaves) + len(acts) :])
                norms[term] = {
                    name: torch.sqrt(sum((next(rest) ** 2).sum() for _ in ps)) for name, ps in params.items()
                }
        for term, maps in products.items():
            for k, value in maps.items():
                td.set(self.key("attr", term, k), value.detach())
            for name, norm in norms[term].items():
                td.set(self.key("grad_norm", term, name), norm.detach().expand(td.batch_size))
        hooked.state.grad_norms = TensorDict(
            {t: {n: v.detach() for n, v in m.items()} for t, m in norms.items()}, batch_size=[]
        )
        return td


def _parameter_sets(loss: nn.Module) -> dict[str, set[int]]:
    """The parameter sets a TorchRL loss swaps into its networks (``value_network_params``,
    ``target_value_network_params``...), as the data pointers of their tensors, by set name without ``_params``."""
    sets = {}
    for name, child in loss.named_children():
        if name.endswith("_params") and isinstance(child, TensorDictBase):
            sets[name[: -len("_params")]] = {t.data_ptr() for t in child.values(True, True) if t.numel()}
    return sets


def _first_parameter(net: nn.Module) -> tuple[nn.Module, str] | None:
    """Owner module and attribute of ``net``'s first parameter: where a swapped-in parameter set shows."""
    name = next((n for n, _ in net.named_parameters()), None)
    if name is None:
        return None
    owner, _, attr = name.rpartition(".")
    return net.get_submodule(owner), attr


def _which(probe: tuple[nn.Module, str] | None, sets: dict[str, set[int]]) -> str | None:
    """Which parameter set the network holds right now (its first parameter decides), or None."""
    value = getattr(*probe, None) if probe is not None else None
    if not isinstance(value, torch.Tensor) or is_vmapped(value):
        return None
    return next((label for label, ptrs in sets.items() if value.data_ptr() in ptrs), None)


def _call_keys(name: str, labels: list[str | None]) -> list[str]:
    """Keys of a layer's calls: ``name`` for one call; ``name#value_network``, ``name#target_value_network``
    when each call ran with its own parameter set; ``name#0``, ``name#1``... otherwise."""
    if len(labels) == 1:
        return [name]
    if None not in labels and len(set(labels)) == len(labels):
        return [f"{name}#{label}" for label in labels]
    return [f"{name}#{i}" for i in range(len(labels))]


def _fit(value: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """Activations of a flattened minibatch back to the batch shape (when they are per-sample)."""
    n = batch.numel()
    if len(batch) and value.shape[: len(batch)] != batch and value.dim() >= 1 and value.shape[0] == n:
        value = value.reshape(*batch, *value.shape[1:])
    return value.reshape(n, *value.shape[len(batch) :]) if len(batch) != 1 else value
