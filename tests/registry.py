"""The method registry: one row per method, driving every contract test in ``tests/test_contracts.py``.

A new method joins every contract (failure matrix, batched == one-by-one, chunked == unchunked, two models and
nested prepare, reuse after a fault, pickling, input contract, CUDA == CPU) by adding one row here. Targets are
module-level functions so that configured methods pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict

from rlhook import Method
from rlhook.attribution import (
    AttributionPatching,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    FeaturePermutation,
    GradCAM,
    GradientSHAP,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerConductance,
    Lime,
    Neuron,
    NeuronConductance,
    NoiseTunnel,
    Occlusion,
    PerturbationSaliency,
    RelevancePatching,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
    SmoothGrad,
)
from rlhook.attribution.lrp import LRP, Composite, ConceptRelevance, ConstantNormScale, ReLUBetaSmooth, ZBox
from rlhook.latent import (
    TCAV,
    ActivationAddition,
    ActivationCaching,
    ActivationPatching,
    PathPatching,
    Probing,
    SAESplice,
    SparseAutoencoder,
    SteeringVectors,
)
from rlhook.rl import Ablation
from rlhook.targets import Aggregate, CategoricalKL
from rlhook.weights import LowRank, Pruning, Splice, TaskVector
from tests.models import MLP


class Boom(RuntimeError):
    """Raised on purpose inside a model, a user's callable or a ``with`` block."""


class Flaky(MLP):
    """An MLP whose forward raises after its first block when ``fail`` is set."""

    fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](x)
        if self.fail:
            raise Boom("inside the forward")
        for layer in self.layers[1:]:
            x = layer(x)
        return self.head(x)


def first(out: TensorDict) -> torch.Tensor:
    return out["output"][..., 0]


def two(out: TensorDict) -> TensorDict:
    return TensorDict({"a": out["output"][..., 1], "b": out["output"][..., 2]}, out.batch_size)


def count(out: TensorDict) -> torch.Tensor:
    """An integer-valued target (perturbation methods accept it)."""
    return (out["output"] > 0).sum(-1)


def mean_square(out: TensorDict) -> torch.Tensor:
    """One value for the whole batch (an ``Aggregate`` target): the mean squared output."""
    return out["output"].pow(2).mean()


def reference_set(td: TensorDict) -> torch.Tensor:
    """Callable GradientSHAP baselines: made from the batch."""
    return (
        0.5 * td["input"].mean(0, keepdim=True).expand(3, -1)
        + torch.arange(3.0, dtype=td["input"].dtype)[:, None]
    )


def boom(out: TensorDict) -> torch.Tensor:
    raise Boom("in the user's target")


def model(seed: int = 0) -> Flaky:
    """Mixed training flags and a frozen parameter, which every method must leave as they were."""
    torch.manual_seed(seed)
    m = Flaky().double()
    m.layers[1].eval()
    m.head.bias.requires_grad_(False)
    return m


def data(batch: tuple[int, ...] = (6,), seed: int = 0) -> TensorDict:
    """Inputs and every read key a method may need, each computed per example (so slicing keeps them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, 16, generator=g, dtype=torch.float64)
    return TensorDict(
        {
            "input": x,
            ("baseline", "input"): 0.1 * x.flip(-1),
            ("patched", "input"): x.roll(1, -1),
            ("positive", "input"): x + 1,
            ("negative", "input"): x - 1,
            "labels": x[..., :3].sum(-1),
        },
        batch_size=batch,
    )


def _seeded(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module with the same random initialisation on every call (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return make().double()


def _base_weights() -> dict[str, torch.Tensor]:
    return {k: v + 0.01 for k, v in model(1).state_dict().items()}


@dataclass
class Row:
    """How to make the method, and which contracts apply to it."""

    make: Callable[[], Method]
    #: per-example results: batched == one-by-one, and an unbatched TensorDict == a batch of one
    per_example: bool = True
    #: options that chunk it (chunked == unchunked)
    chunk: dict = field(default_factory=dict)
    #: the attribute holding a user callable that can be made to raise (``options.target``, ``target``)
    callable_attr: str | None = "options.target"
    #: gives an empty result for an empty batch
    empty: bool = True


ROWS: dict[str, Row] = {
    "saliency": Row(lambda: Saliency(two), chunk={"chunk_size": 4}),
    "ixg_layers": Row(lambda: InputXGradient(first, layers="layers.1"), chunk={"chunk_size": 4}),
    "ig": Row(lambda: IntegratedGradients(two, n_steps=5), chunk={"chunk_size": 7}),
    "layer_ig": Row(
        lambda: IntegratedGradients(first, n_steps=4, layers="layers.0"), chunk={"chunk_size": 5}
    ),
    "layer_ig_input": Row(
        lambda: IntegratedGradients(first, n_steps=4, layers="layers.1", layer_input=True),
        chunk={"chunk_size": 5},
    ),
    "neuron_ig": Row(
        lambda: IntegratedGradients(Neuron("layers.1", [3, 5]), n_steps=4), chunk={"chunk_size": 7}
    ),
    "neuron_conductance": Row(
        lambda: NeuronConductance(two, neuron=Neuron("layers.1", 4), n_steps=4), chunk={"chunk_size": 7}
    ),
    "neuron_ablation": Row(lambda: FeatureAblation(Neuron("layers.0", 2)), chunk={"chunk_size": 6}),
    "conductance": Row(lambda: LayerConductance(two, n_steps=4, layers="layers.1"), chunk={"chunk_size": 7}),
    "noise_tunnel": Row(lambda: NoiseTunnel(Saliency(first), n_samples=3, stdev=0.2), per_example=False),
    "noise_tunnel_delta": Row(
        lambda: NoiseTunnel(IntegratedGradients(first, n_steps=4), n_samples=3, stdev=0.2, delta=True),
        per_example=False,
    ),
    "smoothgrad": Row(
        lambda: SmoothGrad(two, n_samples=3, stdev=0.2, kind="vargrad"),
        per_example=False,
        chunk={"chunk_size": 5},
    ),
    "gradient_shap": Row(
        lambda: GradientSHAP(first, n_samples=3, stdev=0.1, delta=True),
        per_example=False,
        chunk={"chunk_size": 4},
    ),
    "gradient_shap_callable": Row(
        lambda: GradientSHAP(first, n_samples=3, baselines=reference_set),
        per_example=False,
        chunk={"chunk_size": 4},
    ),
    "guided": Row(lambda: GuidedBackprop(two)),
    "deconvolution": Row(lambda: Deconvolution(two)),
    "deeplift": Row(lambda: DeepLift(two, delta=True), chunk={"chunk_size": 4}),
    "deeplift_shap": Row(
        lambda: DeepLiftShap(first, baselines=torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(3, 16)),
        chunk={"chunk_size": 5},
    ),
    "gradcam": Row(lambda: GradCAM(first, layers="layers.1", channel_dim=-1, spatial_dims=())),
    "gradcam_channels": Row(
        lambda: GradCAM(two, layers="layers.1", channel_dim=-1, spatial_dims=(), sum_channels=False)
    ),
    "guided_gradcam": Row(lambda: GuidedGradCAM(two, layers="layers.0", channel_dim=-1, spatial_dims=())),
    "occlusion": Row(lambda: Occlusion(two, window=(3,), strides=2), chunk={"chunk_size": 5}),
    "feature_ablation": Row(lambda: FeatureAblation(first), chunk={"chunk_size": 6}),
    "ablation_int_target": Row(lambda: FeatureAblation(count), chunk={"chunk_size": 6}),
    "shapley_sampling": Row(lambda: ShapleyValueSampling(two, n_samples=2), chunk={"chunk_size": 7}),
    "shapley_exact": Row(
        lambda: ShapleyValues(first, feature_mask=torch.arange(16) // 4), chunk={"chunk_size": 5}
    ),
    "kernel_shap": Row(lambda: KernelShap(two, n_samples=20), chunk={"chunk_size": 6}),
    "lime": Row(lambda: Lime(first, n_samples=20, alpha=1e-3), chunk={"chunk_size": 6}),
    "feature_permutation": Row(
        lambda: FeaturePermutation(two), per_example=False, empty=False, chunk={"chunk_size": 4}
    ),
    "perturbation": Row(lambda: PerturbationSaliency(first), chunk={"chunk_size": 5}),
    # one value for the whole batch: a forward holds one whole batch, so chunks are whole batches
    "ig_aggregate": Row(
        lambda: IntegratedGradients(Aggregate(mean_square), n_steps=4),
        per_example=False,
        chunk={"chunk_size": 12},
    ),
    "ablation_aggregate": Row(
        lambda: FeatureAblation(Aggregate(mean_square)), per_example=False, chunk={"chunk_size": 12}
    ),
    "attribution_patching": Row(lambda: AttributionPatching(two, layers=r"layers\.\d")),
    "relevance_patching": Row(
        lambda: RelevancePatching(two, layers=r"layers\.\d", rules=[ConstantNormScale()])
    ),
    "lrp": Row(lambda: LRP(two)),
    "crp": Row(
        lambda: ConceptRelevance(two, layer="layers.1", concepts=[0, [1, 2], 5]), chunk={"chunk_size": 4}
    ),
    "lrp_zbox_smooth": Row(
        lambda: LRP(first, composite=Composite([(torch.nn.ReLU, ReLUBetaSmooth(5.0))], rule=ZBox(-4.0, 4.0)))
    ),
    "caching": Row(
        lambda: ActivationCaching(r"layers\.\d", direction="both", target="output"), callable_attr="target"
    ),
    "patching": Row(
        lambda: ActivationPatching(r"layers\.[01]", first, divergence=CategoricalKL("output"), units=[1, 2]),
        callable_attr="target",
    ),
    "path_patching": Row(
        lambda: PathPatching("layers.0", "layers.2", first, freeze="layers.1"), callable_attr="target"
    ),
    "activation_addition": Row(lambda: ActivationAddition("layers.1"), per_example=False, callable_attr=None),
    "steering": Row(
        lambda: SteeringVectors({"layers.1": torch.ones(32, dtype=torch.float64)}), callable_attr=None
    ),
    "probing": Row(
        lambda: Probing(["layers.0", "layers.2"]), per_example=False, callable_attr=None, empty=False
    ),
    "tcav": Row(lambda: TCAV("layers.1", first), per_example=False, callable_attr="target", empty=False),
    "sae": Row(
        lambda: SAESplice("layers.2", _seeded(lambda: SparseAutoencoder(32, 16, kind="topk", k=4))),
        per_example=False,
        callable_attr=None,
    ),
    "splice": Row(
        lambda: Splice("layers.1", _seeded(lambda: LowRank(32, 2, init_scale=1.0)), mode="add"),
        callable_attr=None,
    ),
    "pruning": Row(lambda: Pruning(amount=0.5, structured=True), callable_attr=None),
    "task_vector": Row(
        lambda: TaskVector(model(1).state_dict(), _base_weights(), scale=2.0), callable_attr=None
    ),
    "ablation": Row(lambda: Ablation({"layers.1": [0, 3]}), callable_attr=None),
}
