"""Shared types and helpers for analytic label recovery.

Notation (docs/ALGORITHMS.md, "Label recovery from gradients"): C classes, batch B, last layer
``z = W h + b``, ``p = softmax(z)``, mean cross-entropy, so ``∇W_c = (1/B) Σ_n (p_nc − y_nc) h_n``,
``∇b_c = (1/B) Σ_n (p_nc − y_nc)`` and ``s_c = Σ_m ∇W_cm``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ...errors import ConfigError
from ...models import last_linear
from ...registry import Registry
from ...threat import Observation


def labels_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """The multiset ``counts`` (per class) as a sorted ``(B,)`` int64 tensor of labels."""
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


@dataclass
class LabelEstimate:
    """Recovered label multiset of one batch.

    ``counts[c]`` is how many samples of class c the batch holds (sums to B); ``scores`` is the
    per-class quantity the method ranks or rounds (e.g. a real-valued count), where it has one.
    """

    counts: torch.Tensor
    scores: Optional[torch.Tensor]
    method: str

    @property
    def labels(self) -> torch.Tensor:
        """The recovered labels as a sorted ``(B,)`` int64 tensor."""
        return labels_from_counts(self.counts)

    @property
    def batch_size(self) -> int:
        return int(self.counts.sum())


@dataclass
class AuxData:
    """Public images the attacker may hold (pixel space [0, 1], ``(N, C, H, W)``); labels optional."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None


LabelStrategy = Callable[[Observation, Optional[AuxData]], LabelEstimate]
LABEL_STRATEGIES: Registry[LabelStrategy] = Registry("label strategy")


@dataclass
class LastLayer:
    """The final linear layer's parameters and their observed gradients (float64 on the CPU: the
    algebra is small and needs the precision)."""

    weight: torch.Tensor  # (C, D)
    bias: Optional[torch.Tensor]  # (C,)
    grad_weight: torch.Tensor  # (C, D)
    grad_bias: Optional[torch.Tensor]  # (C,)
    module_name: str

    @property
    def class_sums(self) -> torch.Tensor:
        """``s_c = Σ_m ∇W_cm``: a sample's pull on its own class row (negative when h ≥ 0)."""
        return self.grad_weight.sum(dim=1)


def read_last_layer(obs: Observation) -> LastLayer:
    """Locate the final ``nn.Linear`` of ``obs.model`` and pair it with its observed gradient."""
    weight_name, bias_name = last_linear(obs.model)
    params = dict(obs.model.named_parameters())
    grads = obs.named_gradient()
    weight = params[weight_name].detach().double().cpu()
    if weight.shape[0] != obs.num_classes:
        raise ConfigError(
            f"the last linear layer has {weight.shape[0]} outputs but the observation says "
            f"{obs.num_classes} classes"
        )
    return LastLayer(
        weight=weight,
        bias=params[bias_name].detach().double().cpu() if bias_name else None,
        grad_weight=grads[weight_name].detach().double().cpu().flatten(1),
        grad_bias=grads[bias_name].detach().double().cpu() if bias_name else None,
        module_name=weight_name.rsplit(".", 1)[0] if "." in weight_name else "",
    )


def round_counts(real_counts: torch.Tensor, batch_size: int, lower: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Integer counts summing to ``batch_size`` closest to ``real_counts`` (negatives clipped).

    Round each entry (no lower than ``lower`` where given), then move units where the rounding
    was least faithful (largest remainder): add to the entries most under-counted, take from the
    most over-counted, one unit per entry per round.
    """
    x = real_counts.detach().double().cpu().nan_to_num(0.0, posinf=float(batch_size), neginf=0.0)
    x = x.clamp(0.0, float(batch_size))
    floor = torch.zeros_like(x, dtype=torch.long) if lower is None else lower.detach().cpu().long().clamp(min=0)
    if int(floor.sum()) > batch_size:
        floor = torch.zeros_like(floor)
    counts = torch.maximum(torch.round(x).long(), floor)
    while (missing := batch_size - int(counts.sum())) != 0:
        if missing > 0:
            counts[torch.topk(x - counts, min(missing, len(x))).indices] += 1
        else:
            over = (counts - x).masked_fill(counts <= floor, -math.inf)
            counts[torch.topk(over, min(-missing, int((counts > floor).sum()))).indices] -= 1
    return counts


def present_at_least(grad_bias: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Exact lower bounds on the counts: ``k_c = Σ_n p_nc − B ∇b_c > −B ∇b_c`` since probabilities are positive."""
    return torch.ceil(-batch_size * grad_bias.detach().double().cpu() - 1e-6).clamp(min=0).long()


def select_smallest(scores: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Counts with a 1 for each of the ``batch_size`` classes with the smallest score."""
    counts = torch.zeros(scores.numel(), dtype=torch.long)
    counts[torch.argsort(scores, stable=True)[:batch_size]] = 1
    return counts


@dataclass
class FeatureSample:
    """Last-layer inputs ``h`` (N, D) and softmax outputs ``p`` (N, C) of inputs the attacker chose."""

    features: torch.Tensor
    probs: torch.Tensor

    @property
    def feature_mass(self) -> torch.Tensor:
        """``a_n = Σ_m h_nm`` (= ‖h_n‖₁ when h ≥ 0): how strongly sample n moves ``s``."""
        return self.features.sum(dim=1)


# Dummy estimates average over at least this many inputs. Their sampling noise matters: untrained
# LeNet, CIFAR-10, B = 32, ilrg-dummy: 0.984 with 32 inputs, 0.994 with 512, no gain with 2048.
DUMMY_MIN_SAMPLES = 512
DUMMY_SEED = 0


def dummy_images(count: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random images with a natural-image-like ``1/f`` amplitude spectrum, in [0, 1].

    Each image: a random-phase field with amplitude ``1/f`` (shared luminance plus weaker per-channel
    colour), random brightness and contrast. Through an untrained network such images give mean
    predictions much closer to those of real photographs than i.i.d. pixel noise does (measured on
    CIFAR-10 with LeNet and ConvNet: error of the batch-summed probabilities 3.7 vs 5.6 and 0.8 vs
    2.6 at B = 64), and they need no data.
    """
    channels, height, width = shape
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    amplitude = 1.0 / torch.sqrt(fy**2 + fx**2).clamp(min=1e-12)
    amplitude[0, 0] = 0.0  # brightness is drawn separately
    spectrum_shape = (count, 1, height, width // 2 + 1)
    luminance = torch.complex(torch.randn(spectrum_shape, generator=generator), torch.randn(spectrum_shape, generator=generator))
    colour_shape = (count, channels, height, width // 2 + 1)
    colour = torch.complex(torch.randn(colour_shape, generator=generator), torch.randn(colour_shape, generator=generator))
    field = torch.fft.irfft2((luminance + 0.3 * colour) * amplitude, s=(height, width))
    field = field / field.flatten(1).std(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    brightness = 0.2 + 0.6 * torch.rand((count, 1, 1, 1), generator=generator) + 0.1 * torch.randn((count, channels, 1, 1), generator=generator)
    contrast = 0.1 + 0.2 * torch.rand((count, 1, 1, 1), generator=generator)
    return (brightness + contrast * field).clamp(0.0, 1.0)


# Strategies and sweeps send the same inputs through the same θ again and again (each observation
# holds its own copy of the model, so identity cannot tell): keep the last few results, keyed by a
# fingerprint of the model's architecture, mode and tensors, and by the aux images' id. An entry
# holds those images, so their id cannot be recycled by another tensor while the entry lives.
_FEATURE_CACHE: "OrderedDict[tuple, tuple[Optional[torch.Tensor], FeatureSample]]" = OrderedDict()
_FEATURE_CACHE_SIZE = 8  # a default sweep's batch sizes


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's architecture, train/eval modes and every parameter and buffer."""
    from ...models import weights_fingerprint

    modes = bytes(module.training for module in model.modules()).hex()
    return hashlib.blake2b(f"{weights_fingerprint(model)} {modes}".encode(), digest_size=16).hexdigest()


def sample_features(
    obs: Observation,
    batch_size: int,
    aux: Optional[AuxData] = None,
    min_samples: int = DUMMY_MIN_SAMPLES,
    seed: int = DUMMY_SEED,
) -> FeatureSample:
    """Run attacker-chosen inputs through θ and record the last layer's inputs and probabilities.

    Inputs are ``aux.images`` when given, else :func:`dummy_images`. They go through in batches of
    the victim's ``batch_size`` (at least ``min_samples`` in all) and in the model's own train/eval
    mode, so that BatchNorm in train mode normalises with statistics of a batch as large as the
    client's. A private copy of the model is used: train-mode passes would move its BN running stats.
    """
    if aux is not None and tuple(aux.images.shape[1:]) != tuple(obs.input_shape):
        raise ConfigError(
            f"auxiliary images have shape {tuple(aux.images.shape[1:])}, the model expects {tuple(obs.input_shape)}"
        )
    source = None if aux is None else aux.images
    key = (model_fingerprint(obs.model), batch_size, min_samples, seed, obs.input_shape, obs.mean, obs.std, id(source))
    cached = _FEATURE_CACHE.get(key)
    if cached is not None:
        _FEATURE_CACHE.move_to_end(key)
        return cached[1]
    layer = read_last_layer(obs)
    model = copy.deepcopy(obs.model)
    device = next(model.parameters()).device
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    module = model.get_submodule(layer.module_name)
    handle = module.register_forward_hook(lambda m, inp, out: captured.append((inp[0].detach(), out.detach())))
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for _ in range(-(-min_samples // batch_size)):
                if aux is not None:
                    x = aux.images[torch.randint(len(aux.images), (batch_size,), generator=generator)].float()
                else:
                    x = dummy_images(batch_size, obs.input_shape, generator)
                model(obs.normalize(x.to(device)))
    finally:
        handle.remove()
    features = torch.cat([h.flatten(1) for h, _ in captured]).double().cpu()
    logits = torch.cat([z for _, z in captured]).double().cpu()
    sample = FeatureSample(features=features, probs=torch.softmax(logits, dim=1))
    _FEATURE_CACHE[key] = (source, sample)
    while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
        _FEATURE_CACHE.popitem(last=False)
    return sample
