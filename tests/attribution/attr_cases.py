"""Shared cases of the attribution test matrix: models (MLP, CNN, multi-input TensorDictModule, TorchRL actor)
and, for each method, how rlhook runs it and how captum computes the same thing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn

from tests.models import CNN, MLP, two_input_td_module

DT = torch.float64


@dataclass
class Case:
    """A model with its TensorDict inputs, a target, and the equivalent captum forward/target."""

    name: str
    model: nn.Module  # what rlhook prepares
    shapes: dict  # input key -> one example's shape
    target: Callable
    captum_forward: Callable  # f(*inputs, *extra) -> outputs
    captum_target: int | None
    extra: Callable[[TensorDict], tuple] = lambda td: ()  # additional forward args for captum
    relu: bool = False  # has nn.ReLU modules (guided backprop, LRP)
    conv: str | None = None  # conv layer path (Grad-CAM)
    layer: str | None = None  # a hidden module path (attribution patching)
    in_keys: list | None = None
    out_keys: list | None = None
    fixed: dict = field(default_factory=dict)  # non-attributed entries: key -> fn(batch) -> tensor

    def td(self, batch: tuple[int, ...], seed: int = 0) -> TensorDict:
        gen = torch.Generator().manual_seed(seed)
        data = {k: torch.randn(*batch, *s, generator=gen, dtype=DT) for k, s in self.shapes.items()}
        data.update({k: fn(batch, gen) for k, fn in self.fixed.items()})
        return TensorDict(data, batch_size=batch)

    def prepare(self, method):
        return method.prepare(self.model, in_keys=self.in_keys, out_keys=self.out_keys)

    def keys(self) -> list:
        return list(self.shapes)


def _mlp() -> Case:
    torch.manual_seed(1)
    m = MLP().to(DT)
    return Case("mlp", m, {"input": (16,)}, lambda o: o["output"][..., 1], m, 1, relu=True, layer="layers.1")


def _cnn() -> Case:
    torch.manual_seed(2)
    m = CNN().to(DT)
    return Case(
        "cnn",
        m,
        {"input": (3, 8, 8)},
        lambda o: o["output"][..., 2],
        m,
        2,
        relu=True,
        conv="conv2",
        layer="conv2",
    )


def _td2() -> Case:
    torch.manual_seed(3)
    m = two_input_td_module().to(DT)
    return Case(
        "td2",
        m,
        {"obs": (6,), "goal": (3,)},
        lambda o: o["logits"][..., 1],
        lambda obs, goal: m.module(obs, goal)[0],
        1,
        layer="obs_net",
    )


def tanh_actor(seed: int = 4):
    """A TorchRL ``ProbabilisticActor`` (TanhNormal, 4-d observation, 2-d action) in float64."""
    from torchrl.modules import ProbabilisticActor, TanhNormal

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4), NormalParamExtractor()).to(DT)
    params = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        params,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
    )


def _actor() -> Case:
    from torchrl.modules import TanhNormal

    from rlhook.targets import ActionLogProb, policy_params

    actor = tanh_actor()
    net = actor.module[0].module

    def log_prob(obs, action):
        loc, scale = net(obs)
        return TanhNormal(loc, scale, low=-1.0, high=1.0).log_prob(action)

    return Case(
        "actor",
        policy_params(actor),
        {"observation": (4,)},
        ActionLogProb(actor),
        log_prob,
        None,
        extra=lambda td: (td["action"].reshape(-1, 2),),
        fixed={"action": lambda batch, gen: torch.rand(*batch, 2, generator=gen, dtype=DT) * 1.6 - 0.8},
        layer="0",
    )


CASES = {"mlp": _mlp, "cnn": _cnn, "td2": _td2, "actor": _actor}


def flat_inputs(case: Case, td: TensorDict) -> tuple[torch.Tensor, ...]:
    """The attributed inputs with the batch dims flattened (what captum sees)."""
    return tuple(td[k].reshape(-1, *case.shapes[k]) for k in case.keys())


@contextlib.contextmanager
def captum_noise(noise: dict, keys: list):
    """Make captum's NoiseTunnel add our pre-drawn noise (``{key: (B, n, *shape)}``), inputs in key order."""
    from captum.attr._core.noise_tunnel import NoiseTunnel

    order = iter(keys)
    original = NoiseTunnel.__dict__["_add_noise_to_input"]

    def add(input, stdev, n):
        z = noise[next(order)]
        return input.repeat_interleave(n, 0) + z.reshape(-1, *z.shape[2:])

    NoiseTunnel._add_noise_to_input = staticmethod(add)
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = original


@contextlib.contextmanager
def captum_shap_draws(index: torch.Tensor, alpha: torch.Tensor):
    """Make captum's GradientShap pick our baseline indices and segment positions (example-major rows)."""
    choice, uniform = numpy.random.choice, numpy.random.uniform
    numpy.random.choice = lambda n, size: index.reshape(-1).numpy()
    numpy.random.uniform = lambda lo, hi, size: alpha.reshape(-1).numpy()
    try:
        yield
    finally:
        numpy.random.choice, numpy.random.uniform = choice, uniform
