"""Conductance (Dhamdhere et al., 2018): how much of the target's change along the integrated-gradients path
flows through each unit of a layer (LayerConductance), and through one unit from each input (NeuronConductance)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import GradientMethod, baselines, put_target_sites, save_layer, target_sites
from rlhook.attribution.integrated import PathRule, path_points
from rlhook.attribution.neuron import Neuron
from rlhook.methods import Prepared
from rlhook.targets import Target, evaluate

__all__ = ["LayerConductance", "NeuronConductance"]


class LayerConductance(GradientMethod):
    """Conductance of each unit ``y`` of the layers in ``layers=``: ``sum_i dF/dy(z_i) (y(z_{i+1}) - y(z_i))``
    over ``n_steps + 1`` points ``z_i = b + alpha_i (x - b)`` of the straight path from ``("baseline", k)``
    (zeros if absent) to the inputs, ``alpha_i`` the nodes of ``rule`` (as captum's LayerConductance). Summed
    over a layer's units it approaches ``f(x) - f(b)`` as the steps grow (the layer is a cut of the network).

    One forward per chunk of path points (``chunk_size`` rows: points x examples, rounded to whole points)
    and one backward per target; ``layer_input=True`` uses the layers' inputs.

    Reads the attributed inputs and ``("baseline", k)``; writes ``("attr", layer)`` (or
    ``("attr", name, layer)``), the layer output's shape.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_steps: int = 50,
        rule: PathRule = "gausslegendre",
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if self.options.layers is None:
            raise ValueError("LayerConductance needs layers=... (the module(s) whose units are scored)")
        path_points(n_steps + 1, rule)  # validate early
        self.n_steps, self.rule = n_steps, rule

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        n_ex, n_pts = flat.batch_size[0], self.n_steps + 1
        alphas = path_points(n_pts, self.rule)[0]
        base = baselines(flat, keys)
        per = n_pts if self.options.chunk_size is None else max(1, self.options.chunk_size // n_ex)
        result: dict = {}
        last_act: dict = {}  # the previous chunk's last point: {layer: act}, {target: {layer: grad}}
        last_grad: dict = {}
        for s0 in range(0, n_pts, per):
            n_s = min(per, n_pts - s0)
            step = torch.arange(s0, s0 + n_s).repeat_interleave(n_ex)
            ex = torch.arange(n_ex).repeat(n_s)
            chunk = flat[ex]
            for k in keys:
                x, b = flat.get(k)[ex], base[k][ex]
                a = alphas[step].to(x.device, x.dtype).reshape(-1, *[1] * (x.dim() - 1))
                chunk.set(k, (b + a * (x - b)).detach().requires_grad_(x.is_floating_point()))
            with hooked.run(chunk) as run:
                saved = {
                    name: save_layer(run, hooked, (name, module)) for name, module in hooked.state.layers
                }
                sites = target_sites(run, self.options.target)
            acts = run.collect(saved)
            scores = evaluate(self.options.target, put_target_sites(run, run.output, sites), batch_dims=1)
            names = list(acts)
            points = {n: acts[n].detach().reshape(n_s, n_ex, *acts[n].shape[1:]) for n in names}
            for i, (t, score) in enumerate(scores.items()):
                gs = torch.autograd.grad(
                    score.sum(), [acts[n] for n in names], retain_graph=i < len(scores) - 1, allow_unused=True
                )
                for n, g in zip(names, gs):
                    g = torch.zeros_like(acts[n]) if g is None else g
                    g = g.detach().reshape(n_s, n_ex, *g.shape[1:])
                    y = points[n]
                    if last_act:
                        g, y = torch.cat([last_grad[t][n][None], g]), torch.cat([last_act[n][None], y])
                    part = (g[:-1] * (y[1:] - y[:-1])).sum(0)
                    acc = result.setdefault(t, {})
                    acc[n] = part if n not in acc else acc[n] + part
                    last_grad.setdefault(t, {})[n] = g[-1]
            last_act = {n: points[n][-1] for n in names}
        return result


class NeuronConductance(GradientMethod):
    """Conductance of each input element through one unit ``y`` (a ``Neuron``): ``(x - b) sum_i w_i
    dF/dy(z_i) dy/dx(z_i)`` over ``n_steps`` points ``z_i`` of the straight path from ``("baseline", k)``
    (zeros if absent) to the inputs, weights and nodes of ``rule`` (captum's NeuronConductance, whose default
    is the trapezoid rule too; captum's trapezoid steps are ``1/n`` and sum to ``(n - 1)/n``, so its maps are
    ``(n - 1)/n`` of these; the Riemann rules agree).

    All targets share one forward per chunk of points (``chunk_size`` rows, rounded to whole points); each
    takes one backward to the unit and one from the unit to the inputs.

    Reads the attributed inputs and ``("baseline", k)``; writes ``("attr", k)`` (or ``("attr", name, k)``).
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        neuron: Neuron,
        n_steps: int = 50,
        rule: PathRule = "riemann_trapezoid",
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if not isinstance(neuron, Neuron) or neuron.many:
            raise TypeError(f"neuron must be one Neuron(path, unit), got {neuron!r}")
        if self.options.layers is not None:
            raise ValueError(
                "NeuronConductance attributes to inputs; name the unit with neuron=Neuron(path, unit)"
            )
        path_points(n_steps, rule)  # validate early
        self.neuron, self.n_steps, self.rule = neuron, n_steps, rule

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        n_ex = flat.batch_size[0]
        alphas, weights = path_points(self.n_steps, self.rule)
        base = baselines(flat, keys)
        per = self.n_steps if self.options.chunk_size is None else max(1, self.options.chunk_size // n_ex)
        result: dict = {}
        for s0 in range(0, self.n_steps, per):
            n_s = min(per, self.n_steps - s0)
            step = torch.arange(s0, s0 + n_s).repeat_interleave(n_ex)
            ex = torch.arange(n_ex).repeat(n_s)
            chunk, leaves = flat[ex], []
            for k in keys:
                x, b = flat.get(k)[ex], base[k][ex]
                a = alphas[step].to(x.device, x.dtype).reshape(-1, *[1] * (x.dim() - 1))
                leaf = (b + a * (x - b)).detach().requires_grad_(True)
                chunk.set(k, leaf)
                leaves.append(leaf)
            with hooked.run(chunk) as run:
                unit = run.save(self.neuron.path)
                sites = target_sites(run, self.options.target)
            act = run.collect({"unit": unit})["unit"]
            out = put_target_sites(run, run.output, sites)
            out.set(("neuron", self.neuron.path), act)
            y = self.neuron(out)  # (rows,)
            scores = evaluate(self.options.target, out, batch_dims=1)
            w = weights[step].to(y.device, y.dtype)
            for i, (t, score) in enumerate(scores.items()):
                (dfdy,) = torch.autograd.grad(score.sum(), act, retain_graph=True)
                carried = self.neuron(
                    TensorDict({("neuron", self.neuron.path): dfdy}, batch_size=act.shape[:1])
                )
                gs = torch.autograd.grad(
                    (y * (carried * w).detach()).sum(),
                    leaves,
                    retain_graph=i < len(scores) - 1,
                    allow_unused=True,
                )
                acc = result.setdefault(t, {})
                for k, leaf, g in zip(keys, leaves, gs):
                    g = torch.zeros_like(leaf) if g is None else g
                    part = g.detach().reshape(n_s, n_ex, *g.shape[1:]).sum(0)
                    acc[k] = part if k not in acc else acc[k] + part
        return {t: {k: g * (flat.get(k) - base[k]) for k, g in maps.items()} for t, maps in result.items()}
