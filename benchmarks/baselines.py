"""What users would do instead of lana; each is a knob that :func:`benchmarks.search.search_band` sets.

- Torch-Pruning, as its documentation recommends for accuracy (:func:`prune_taylor`):
  global ranking of channel groups by group Taylor importance, iterative (5 steps, fresh
  gradients at each), channel counts rounded to hardware widths; and the simple uniform
  L2-magnitude pruner (:func:`prune_magnitude`) as a second row. Knob: the pruning ratio.
  A vision transformer (timm attention: a ``qkv`` linear and ``num_heads``) is pruned as
  Torch-Pruning's timm ViT example does it (:func:`_transformer_settings`): whole heads
  and MLP hidden units, the same ratio for both, the token width kept; ranked per layer
  (uniform), in one shot.
- Width and depth: the teacher's family at a width multiplier (:func:`width_scaled`), and
  the family's real smaller members (timm ``resnet10t``/``resnet14t`` beside ResNet-18-D,
  TinyNet depths beside EfficientNet-B0, shallower ViTs beside the DeiT-Tiny-shaped one:
  :data:`MEMBERS`) at a width multiplier too.
- Random selections from lana's own table whose predicted latency lies inside the band
  (:func:`random_in_band`).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.efficientnet import _gen_efficientnet
from torch import nn

from lana.errors import ConfigError, InfeasibleError
from lana.teacher.demo_net import DEMO_WIDTHS
from lana.teacher.load import build_model

PRUNE_STEPS = 5  # Torch-Pruning's iterative schedule: ratio reached in this many steps


def efficientnet(width: float = 1.0, depth: float = 1.0, **kwargs) -> nn.Module:
    """timm's EfficientNet-B0 architecture at ``width`` × its channels and ``depth`` × its repeats.

    ``timm.create_model("efficientnet_b0")`` fixes both multipliers at 1, so the half-width
    CPU-mode teacher and the TinyNet-depth members are built through timm's own generator.
    """
    return _gen_efficientnet("efficientnet_b0", channel_multiplier=width, depth_multiplier=depth, **kwargs)


EFFICIENTNET = "benchmarks.baselines:efficientnet"
DEIT = "timm:deit_tiny_patch16_224"
VIT_PREFIXES = ("timm:deit_", "timm:vit_")  # timm VisionTransformer names: embed_dim / depth / num_heads by kwargs

# The family's smaller members: (label, model, kwargs changed from the teacher's). Widths are
# then scaled by the searched multiplier. TinyNet-C/-E keep B0's blocks at 0.85 / 0.6 depth;
# DeiT has no smaller member, so the shallower ViTs keep its blocks at half and a third of its depth.
MEMBERS = {
    "timm:resnet18d": [("resnet14t", "timm:resnet14t", {}), ("resnet10t", "timm:resnet10t", {})],
    EFFICIENTNET: [("tinynet_c depth", EFFICIENTNET, {"depth": 0.85}), ("tinynet_e depth", EFFICIENTNET, {"depth": 0.6})],
    DEIT: [("depth 6", DEIT, {"depth": 6}), ("depth 4", DEIT, {"depth": 4})],
}


def _classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The output layer pruning must keep: the last Linear or conv with ``num_classes`` outputs."""
    outputs = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
               or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    return outputs[-1:]


def _attention_heads(model: nn.Module) -> dict[nn.Linear, int]:
    """Torch-Pruning's ``num_heads``: the ``qkv`` linear of every timm-style attention → its heads."""
    return {m.qkv: m.num_heads for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)}


def _transformer_settings(model: nn.Module, ratio: float) -> dict:
    """MetaPruner's settings for a vision transformer's heads and MLPs ({} for a model without attention).

    As Torch-Pruning's timm ViT example: ``num_heads`` per ``qkv``, whole heads removed
    (``prune_num_heads``, not head dimensions) at ``ratio``, capped so every layer keeps one
    head (per-layer ranking removes ``ceil(ratio × heads)``); the MLPs' second linears are
    ignored, so their hidden units are pruned and the token width (the residual stream,
    position embedding and class token) is kept. Its global head ranking is not used: in
    Torch-Pruning 1.6.1 it raises ``UnboundLocalError`` on a step that removes no head and
    at high ratios leaves layers with zero heads (measured on the DeiT-Tiny-shaped teacher).
    """
    heads = _attention_heads(model)
    if not heads:
        return {}
    fewest = min(heads.values())
    head_ratio = min(ratio, (fewest - 1) / fewest - 1e-9) if fewest > 1 else 0.0
    second = [m.mlp.fc2 for m in model.modules() if isinstance(getattr(getattr(m, "mlp", None), "fc2", None), nn.Linear)]
    return {"num_heads": heads, "prune_num_heads": head_ratio > 0, "prune_head_dims": False,
            "head_pruning_ratio": max(0.0, head_ratio), "extra_ignored": second}


def _rewire_heads(model: nn.Module, pruner) -> None:
    """After pruning: each attention's ``num_heads`` (and timm's ``head_dim``/``attn_dim``) as the pruner left them."""
    for m in model.modules():
        if isinstance(getattr(m, "qkv", None), nn.Linear) and m.qkv in pruner.num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim


def _pruner(model: nn.Module, example: torch.Tensor, importance, ratio: float, num_classes: int, round_to: int | None,
            **options):
    """Torch-Pruning's MetaPruner on ``model`` (the classifier kept; a transformer's heads and MLPs as above)."""
    import torch_pruning as tp

    settings = _transformer_settings(model, ratio)
    ignored = _classifier(model, num_classes) + settings.pop("extra_ignored", [])
    with warnings.catch_warnings():  # a ViT's class token and position embedding: the token width is kept, they are not pruned
        warnings.filterwarnings("ignore", message="Unwrapped parameters")
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio, ignored_layers=ignored,
                                      round_to=_round_to(model, round_to), **settings, **options)
    return pruner


def _round_to(model: nn.Module, round_to: int | None) -> int | None:
    """``round_to``, unless the narrowest conv has fewer than 4 × it channels (rounding would forbid pruning it)."""
    narrowest = min((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), default=0)
    return None if not round_to or narrowest < 4 * round_to else round_to


def prune_magnitude(teacher: nn.Module, input_shape: tuple[int, ...], ratio: float, num_classes: int,
                    round_to: int | None = 8) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of each layer's channels removed: uniform, one shot, L2 magnitude."""
    import torch_pruning as tp

    model = copy.deepcopy(teacher).cpu().eval()
    if ratio <= 0:
        return model
    pruner = _pruner(model, torch.randn(1, *input_shape), tp.importance.GroupMagnitudeImportance(p=2), ratio,
                     num_classes, round_to)
    pruner.step()
    _rewire_heads(model, pruner)
    return model.eval()


def prune_taylor(teacher: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], ratio: float, num_classes: int,
                 round_to: int | None = 8, steps: int = PRUNE_STEPS, max_layer_ratio: float = 0.9) -> nn.Module:
    """A copy of ``teacher`` pruned to ``ratio`` by global group-Taylor ranking, in ``steps`` iterations.

    At each step the gradients of the distillation loss (KL to the teacher's soft outputs
    plus cross-entropy) over ``batches`` of training images give first-order Taylor
    importance of every channel group; groups are ranked across the whole network
    (``global_pruning``), no layer losing more than ``max_layer_ratio`` of its channels.
    A vision transformer is pruned as Torch-Pruning's timm ViT example and DeiT scripts
    ("taylor uniform") do it: heads and MLP hidden units ranked per layer, one step with
    the gradients of all ``batches`` (see :func:`_transformer_settings`).
    The shared fine-tune comes after the last step (``benchmarks.compare``).
    """
    import torch_pruning as tp

    model = copy.deepcopy(teacher).cpu()
    if ratio <= 0:
        return model.eval()
    images = batches[0][0][:1]
    transformer = bool(_attention_heads(model))
    steps = 1 if transformer else steps
    pruner = _pruner(model, images, tp.importance.GroupTaylorImportance(), ratio, num_classes, round_to,
                     global_pruning=not transformer, iterative_steps=steps, max_pruning_ratio=max_layer_ratio)
    with torch.no_grad():
        soft = [teacher.eval()(x).softmax(1) for x, _ in batches]
    for _ in range(steps):
        model.eval()  # BatchNorm statistics stay the teacher's; gradients only rank the channels
        model.zero_grad()
        for (x, y), target in zip(batches, soft):
            logits = model(x)
            loss = F.kl_div(F.log_softmax(logits, 1), target, reduction="batchmean") + F.cross_entropy(logits, y)
            loss.backward()
        pruner.step()
        _rewire_heads(model, pruner)  # the next step's forward needs the new head counts
    model.zero_grad(set_to_none=True)
    return model.eval()


def _divisible(value: float, by: int = 8) -> int:
    return max(by, int(value / by + 0.5) * by)


def width_scaled(model: str, kwargs: dict, multiplier: float) -> nn.Module:
    """The teacher's family member at ``multiplier`` × its channel widths (untrained).

    Supported: timm ResNets (``channels`` and ``stem_width``), torchvision MobileNetV2
    (``width_mult``), :func:`efficientnet` (``width``), the demo ResNet (``widths``) and timm
    vision transformers (``embed_dim``: the same heads, each ``multiplier`` × as wide,
    rounded to an even width; the MLP keeps its ratio); other families raise ConfigError.
    """
    kwargs = dict(kwargs)
    if model.startswith(VIT_PREFIXES):
        # the teacher's own width and heads: from kwargs, else from the named model's defaults
        probe = None if {"embed_dim", "num_heads"} <= set(kwargs) else build_model(model, kwargs)
        heads = kwargs.get("num_heads") or probe.blocks[0].attn.num_heads
        head_dim = (kwargs.get("embed_dim") or probe.embed_dim) / heads
        kwargs["embed_dim"] = heads * max(2, 2 * round(head_dim * multiplier / 2))
        kwargs["num_heads"] = heads
        return build_model(model, kwargs)
    if model.startswith("timm:resnet") or model.startswith("timm:resnext"):
        channels = kwargs.pop("channels", (64, 128, 256, 512))
        kwargs["channels"] = tuple(_divisible(c * multiplier) for c in channels)
        kwargs["stem_width"] = _divisible(kwargs.pop("stem_width", 64) * multiplier)
    elif model == "torchvision:mobilenet_v2":
        kwargs["width_mult"] = kwargs.pop("width_mult", 1.0) * multiplier
    elif model == EFFICIENTNET:
        kwargs["width"] = kwargs.pop("width", 1.0) * multiplier
    elif model == "lana.teacher.demo_net:demo_resnet":
        kwargs["widths"] = tuple(_divisible(c * multiplier) for c in kwargs.pop("widths", DEMO_WIDTHS))
    else:
        raise ConfigError(
            f"no width multiplier known for '{model}'; the width baseline supports timm:resnet*, "
            f"torchvision:mobilenet_v2, {EFFICIENTNET}, lana.teacher.demo_net:demo_resnet and timm:vit_* / timm:deit_*"
        )
    return build_model(model, kwargs)


def random_in_band(problem, rng: np.random.Generator, low: float, high: float, latency: str = "latency_ms",
                   tries: int = 50) -> dict[str, str]:
    """A random selection whose predicted latency (the table's sum) lies in ``[low, high]`` ms.

    Blocks are visited in random order; each draws uniformly among its candidates that
    still leave the remaining blocks a way to end inside the window (by their fastest and
    slowest candidates), so draws land near the budget instead of anywhere under it; a draw
    that still misses (the sums are discrete) is drawn again, up to ``tries`` times.

    Args:
        problem: a :class:`solvers.SelectionProblem` (its limits are not used).
        rng: the random generator (seeded by the caller).
        low, high: the window on the predicted total (offsets included), in ms.

    Returns:
        block → op name.
    """
    cost = problem.cost(latency)
    offset = problem.offsets.get(latency, 0.0)
    starts = problem.block_start
    spans = list(zip(starts[:-1], starts[1:]))
    fastest = np.array([cost[a:z].min() for a, z in spans])
    slowest = np.array([cost[a:z].max() for a, z in spans])
    lo, hi = low - offset, high - offset
    if fastest.sum() > hi or slowest.sum() < lo:
        raise InfeasibleError(f"no selection predicted within {low:.4g}–{high:.4g} ms; the table spans "
                              f"{fastest.sum() + offset:.4g}–{slowest.sum() + offset:.4g} ms")
    for _ in range(tries):
        rest_min, rest_max, used = fastest.sum(), slowest.sum(), 0.0
        choice: dict[str, str] = {}
        for b in rng.permutation(problem.n_blocks):
            a, z = spans[b]
            rest_min -= fastest[b]
            rest_max -= slowest[b]
            total = used + cost[a:z]
            ok = np.flatnonzero((total + rest_min <= hi) & (total + rest_max >= lo))
            if ok.size == 0:
                break
            row = a + int(rng.choice(ok))
            used += cost[row]
            choice[problem.blocks[b]] = str(problem.candidates[row])
        else:
            return {block: choice[block] for block in problem.blocks}
    raise InfeasibleError(f"no random selection landed within {low:.4g}–{high:.4g} ms in {tries} draws")
