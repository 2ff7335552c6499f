"""Semantic guidance of gradient inversion (Malcewicz, Stępka, Turner, Dubrawski 2025).

``L_total = L_grad + λ_TV L_TV + λ_guide L_guide``: a guide scores how well each reconstructed
image shows its guidance class. Two guides, one registry (:data:`GUIDES`):

- ``clip``: ``L_CLIP(x̂_i, c_i) = 1 − cos(E_img(x̂_i), E_txt("image of a {c_i}"))`` through a
  differentiable resize to CLIP's input and CLIP's normalisation (docs/ALGORITHMS.md, "CLIP terms").
- ``classifier``: ``CE(aux(x̂_i), c_i)`` of an auxiliary classifier the attacker trained on PUBLIC
  data (:func:`gradleak.vision.train_public_classifier`): the offline stand-in for CLIP (no weights
  to download).

Views (``views`` > 1): a guide scores V random differentiable views of each image — a zero-padded
shift of up to H/8 pixels (the classifier's own training augmentation), a horizontal flip (colour
images only: digits are not mirror-symmetric) and Gaussian noise of σ ≤ 0.03 — and averages the
loss over them, as CLIP-guided synthesis averages over augmented cutouts (Crowson et al. 2022,
VQGAN-CLIP; "transformation robustness" in Olah et al. 2017, Feature Visualization): a pixel
pattern that fools the model in one exact position rarely fools it under every shift, so the
averaged gradient should favour what the class looks like. ``views=1`` scores the image itself,
exactly as before. The draws come from the guide's own generator, seeded from the inversion's seed:
a run is reproducible, but with views > 1 the batched search and the sequential loop draw
differently and no longer agree.

Measured (``benchmarks/guide_robustness.py``: CIFAR-10 subset, untrained LeNet, B = 1, 800
iterations, 8 images, oracle guidance at weight 0.1): no guide raised SSIM; a PGD-trained classifier
lowered it more than a standard one (0.632 unguided → 0.552 standard, 0.429 robust, 0.361 robust
with 4 views), and at weight 0.01 all three stayed within ~0.07 below unguided.

Cost (issue #28; ``benchmarks/clip_guide_levers.py``): ``Guidance.every`` = k (``--guide-every``)
evaluates the guide only on steps 0, k, 2k, … at weight k·λ — lazy regularisation (Karras et al.
2020, StyleGAN2 §3.1): the pull summed over k steps stays that of guiding every step, while the
image tower runs k times less often. (Under IG's signed Adam the step is the sign of the total
gradient, so equal mean pull is exact only before the sign; ``benchmarks/guide_every_quality.py``
measures what it costs.) k = 1 is the every-step loop, bit for bit. ``ClipGuide(input_size=)``
(``--clip-input-size``) is the other lever.

A guide returns one loss per image so that the batched search (``batched.py``) can reduce it per
candidate; :class:`GuidanceRegularizer` wraps a guide with fixed targets as a regulariser of the
ordinary (sequential) inversion and is registered as ``"guidance"`` in
:data:`~gradleak.attacks.inversion.regularizers.REGULARIZERS`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import Registry
from ...threat import Observation
from ...vision.prompts import GUIDANCE_TEMPLATE  # "image of a {c}", the seed's guidance prompt
from .regularizers import REGULARIZERS, lazy_weight


class Guide(Protocol):
    """Scores images against guidance classes; differentiable in the images."""

    name: str

    def per_image(self, x: Tensor, targets: Tensor) -> Tensor:
        """``x`` (N, C, H, W) in [0, 1], ``targets`` (N,) class indices → loss per image (N,)."""
        ...


GUIDES: Registry[Callable[..., Guide]] = Registry("guide")


VIEW_NOISE_STD = 0.03
VIEW_SEED_OFFSET = 104_729  # the views' stream differs from the initial images' (same inversion seed)


class ViewSampler:
    """Random differentiable views of images (N, C, H, W): per image and view, a zero-padded shift of
    up to ``max_shift`` px (default H/8), a horizontal flip with probability ½ (``flip``; default:
    colour images) and Gaussian noise of σ ~ U(0, ``noise_std``). Draws from its own generator."""

    def __init__(self, views: int = 1, seed: int = 0, max_shift: int | None = None, flip: bool | None = None,
                 noise_std: float = VIEW_NOISE_STD):
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"guide views must be a positive integer; got {views!r}")
        self.views, self.max_shift, self.flip, self.noise_std = views, max_shift, flip, float(noise_std)
        self.generator = torch.Generator().manual_seed(int(seed) + VIEW_SEED_OFFSET)

    def __call__(self, x: Tensor) -> Tensor:
        """(V, N, C, H, W) views of ``x``; ``views=1`` returns ``x`` itself (unsqueezed), untouched."""
        if self.views == 1:
            return x.unsqueeze(0)
        v, (n, c, h, w) = self.views, x.shape
        m, g = v * n, self.generator
        s = max(1, h // 8) if self.max_shift is None else int(self.max_shift)
        xs = x.unsqueeze(0).expand(v, *x.shape).reshape(m, c, h, w)
        if s > 0:
            # per-view crop of the zero-padded image at offsets (dy, dx) ∈ [0, 2s]²: a shift by (s−dy, s−dx)
            padded = F.pad(xs, (s, s, s, s))
            dy, dx = torch.randint(0, 2 * s + 1, (2, m), generator=g).to(x.device)
            rows = (torch.arange(h, device=x.device) + dy[:, None])[:, None, :, None]  # (M, 1, H, 1)
            cols = (torch.arange(w, device=x.device) + dx[:, None])[:, None, None, :]  # (M, 1, 1, W)
            xs = padded[torch.arange(m, device=x.device)[:, None, None, None],
                        torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        flip = c == 3 if self.flip is None else self.flip
        if flip:
            mask = (torch.rand(m, 1, 1, 1, generator=g) < 0.5).to(x.device)
            xs = torch.where(mask, xs.flip(-1), xs)
        if self.noise_std > 0:
            sigma = (torch.rand(m, 1, 1, 1, generator=g) * self.noise_std).to(x)
            xs = xs + sigma * torch.randn(xs.shape, generator=g).to(x)  # unclamped: no dead gradients at 0 / 1
        return xs.view(v, n, c, h, w)


class _ViewAveraged:
    """Shared by the guides: ``per_image`` = the mean over views of ``_loss`` (one loss per image)."""

    sampler: ViewSampler

    def _loss(self, x: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def views(self) -> int:
        return self.sampler.views

    def view_losses(self, x: Tensor, targets: Tensor) -> Tensor:
        """Loss of every view of every image, (V, N); one batched call of the model."""
        xs = self.sampler(x)
        v, n = xs.shape[:2]
        targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
        if targets.shape[0] != n:
            raise ConfigError(f"{targets.shape[0]} guidance classes for {n} images")
        return self._loss(xs.reshape(v * n, *xs.shape[2:]), targets.repeat(v)).view(v, n)

    def per_image(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.sampler.views == 1:
            return self._loss(x, targets)  # the unaugmented loss itself, bit for bit
        return self.view_losses(x, targets).mean(dim=0)


def _check_targets(x: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    if targets.shape[0] != x.shape[0]:
        raise ConfigError(f"{targets.shape[0]} guidance classes for {x.shape[0]} images")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ConfigError(f"guidance classes must lie in [0, {num_classes - 1}]")
    return targets


@GUIDES.register("clip")
class ClipGuide(_ViewAveraged):
    """CLIP guidance (Malcewicz et al. 2025; CLIP: Radford et al. 2021).

    Text embeddings of ``template`` filled with each class name are computed once; per step only
    the image tower runs (frozen; gradients flow to the pixels only), on ``views`` views per image.
    ``input_size``: the side the images are resized to for CLIP (default: the model's own, 224 for
    ViT-B/32); a smaller multiple of the patch size runs with interpolated position embeddings
    (:meth:`~gradleak.vision.ClipBackend.check_input_size`), cheaper per step.
    """

    name = "clip"

    def __init__(self, clip: Any = None, class_names: Sequence[str] | None = None,
                 template: str = GUIDANCE_TEMPLATE, views: int = 1, seed: int = 0, input_size: int | None = None,
                 **_: Any):
        if clip is None:
            raise ConfigError("the clip guide needs a CLIP model (pass --clip-model DIR, or use --guide classifier offline)")
        if not class_names:
            raise ConfigError("the clip guide needs the class names (the threat model must grant them)")
        self.clip = clip
        self.input_size = clip.check_input_size(input_size)  # None: the model's own
        self.class_names = list(class_names)
        self.template = template
        with torch.no_grad():
            self.text = clip.class_text_embeddings(self.class_names, template).float()  # (C, D), unit norm
        self.sampler = ViewSampler(views, seed)

    def _loss(self, x: Tensor, targets: Tensor) -> Tensor:
        targets = _check_targets(x, targets, len(self.class_names))
        text = self.text[targets.to(self.text.device)]
        if self.input_size is None:
            return self.clip.guidance_loss(x, text, reduction="none").to(x.device)
        return self.clip.guidance_loss(x, text, reduction="none", size=self.input_size).to(x.device)


@GUIDES.register("classifier")
class ClassifierGuide(_ViewAveraged):
    """Cross-entropy of the attacker's auxiliary classifier (trained on public data, taking [0, 1]
    pixels) toward each image's guidance class; frozen, in eval mode. ``classifier_training=
    "adversarial"`` gives one whose input gradients are perceptually aligned (Santurkar et al. 2019);
    see the measurement above for what that does to SSIM."""

    name = "classifier"

    def __init__(self, aux_classifier: nn.Module | None = None, num_classes: int | None = None, views: int = 1,
                 seed: int = 0, **_: Any):
        if aux_classifier is None:
            raise ConfigError("the classifier guide needs an auxiliary classifier trained on public data")
        self.model = copy.deepcopy(aux_classifier).eval().requires_grad_(False)
        self.num_classes = num_classes
        self.sampler = ViewSampler(views, seed)

    def _loss(self, x: Tensor, targets: Tensor) -> Tensor:
        logits = self.model(x)
        targets = _check_targets(x, targets, self.num_classes or logits.shape[-1])
        return F.cross_entropy(logits.float(), targets, reduction="none")


def build_guide(name: str, **kwargs: Any) -> Guide:
    """A guide by name: ``clip`` (clip=ClipBackend, class_names=, template=) or ``classifier``
    (aux_classifier=, num_classes=); both take ``views`` (random views averaged per step) and
    ``seed`` (of the views' draws)."""
    return GUIDES.get(name)(**kwargs)


def check_every(every: Any) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"guide_every must be a positive integer (1: guide every step); got {every!r}")
    return every


@dataclass
class Guidance:
    """A guide and its weight λ in ``L_total``; ``every`` = k > 1 evaluates the guide only on steps
    0, k, 2k, … with weight k·λ (:func:`~.regularizers.lazy_weight`)."""

    guide: Guide
    weight: float
    every: int = 1

    def __post_init__(self) -> None:
        if not float(self.weight) >= 0:
            raise ConfigError(f"guidance weight must be a non-negative number; got {self.weight}")
        self.weight = float(self.weight)
        self.every = check_every(self.every)

    def weight_at(self, step: int | None) -> float | None:
        """The weight of the guidance term at optimisation step ``step``; None: not evaluated then."""
        return lazy_weight(self.weight, self.every, step)

    def per_candidate(self, x: Tensor, targets: Tensor) -> Tensor:
        """Unweighted mean guidance loss of each candidate: ``x`` (K, B, C, H, W), ``targets`` (K, B) → (K,)."""
        k, b = x.shape[:2]
        return self.guide.per_image(x.reshape(k * b, *x.shape[2:]), targets.reshape(-1)).view(k, b).mean(dim=1)


@REGULARIZERS.register("guidance")
class GuidanceRegularizer:
    """``mean_i L_guide(x̂_i, c_i)`` for fixed guidance classes ``targets`` (B,): the guidance term as
    a regulariser of the ordinary inversion loop.

    It needs a guide and per-image classes, which ``InversionConfig.regularizers`` cannot carry: build
    it with ``REGULARIZERS.get("guidance")(obs, model, guide=..., targets=...)`` (as
    :func:`~gradleak.attacks.inversion.batched.guided_matcher` does) or use ``--guidance``.
    """

    def __init__(self, observation: Observation, model: nn.Module, guide: Guide | None = None,
                 targets: Tensor | None = None, every: int = 1, **_: Any):
        if guide is None or targets is None:
            raise ConfigError("the guidance regulariser needs a guide and guidance classes; "
                              "enable it with --guidance oracle|search, not as a plain regulariser")
        self.guide = guide
        self.targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        self.every = check_every(every)  # the matcher evaluates it on every ``every``-th step only

    def __call__(self, x: Tensor) -> Tensor:
        return self.guide.per_image(x, self.targets).mean()
