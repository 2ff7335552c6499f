"""Image-quality metrics for reconstructions: SSIM, PSNR, optional LPIPS, and all-pairs matrices.

Images are float tensors ``B×C×H×W`` with values in ``[0, 1]`` (data range 1). Every metric
returns one value per image pair, shape ``(B,)``, so that :func:`pairwise` can score every
reconstruction against every original in one batched call.
"""

from __future__ import annotations

from typing import Callable

import torch
from pytorch_msssim import ssim as _msssim_ssim
from torch import Tensor

from ..errors import ConfigError, GradleakError
from ..registry import Registry

ImageMetric = Callable[[Tensor, Tensor], Tensor]

IMAGE_METRICS: Registry[ImageMetric] = Registry("image metric")

SSIM_MAX_WIN_SIZE = 11  # Wang et al. 2004: 11×11 Gaussian window, sigma 1.5
SSIM_WIN_SIGMA = 1.5
PSNR_CAP_DB = 100.0  # identical images would give +inf; JSON results must stay finite
_PSNR_MIN_MSE = 10.0 ** (-PSNR_CAP_DB / 10.0)  # the MSE at which PSNR reaches the cap
_RANGE_SLACK = 1e-4  # tolerate float round-off just outside [0, 1]
_PAIRWISE_CHUNK_ELEMENTS = 1 << 22  # pixels per batched call: SSIM peaks near 100 B per pixel


def _check_images(x: Tensor, y: Tensor) -> None:
    """Raise ConfigError unless x and y are same-shaped, finite B×C×H×W images in [0, 1]."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise ConfigError(f"image metric: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ConfigError(f"image metric: {name} must be B×C×H×W, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ConfigError(f"image metric: {name} must be a float tensor, got {t.dtype}")
    if x.shape != y.shape:
        raise ConfigError(f"image metric: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.numel() == 0:
        raise ConfigError(f"image metric: empty images, shape {tuple(x.shape)}")
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise ConfigError(f"image metric: {name} holds NaN or inf")
        lo, hi = float(t.min()), float(t.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            raise ConfigError(
                f"image metric: {name} has values in [{lo:.3g}, {hi:.3g}], expected [0, 1] "
                "(de-normalise / clamp first)"
            )


def ssim_window_size(height: int, width: int) -> int:
    """Gaussian window used for an H×W image: 11 (Wang et al. 2004) or, for small images,
    the largest odd size that fits, e.g. 7 for 8×8 digits. Images must be at least 3×3."""
    side = min(height, width)
    if side < 3:
        raise ConfigError(f"ssim: images must be at least 3×3, got {height}×{width}")
    return min(SSIM_MAX_WIN_SIZE, side if side % 2 == 1 else side - 1)


@IMAGE_METRICS.register("ssim")
def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM, shape (B,), averaged over channels (Wang et al., IEEE TIP 2004).

    Gaussian window with sigma 1.5, K = (0.01, 0.03), data range 1, "valid" filtering (no
    padding), computed by ``pytorch_msssim``. Window size: :func:`ssim_window_size`
    (11, or the largest odd size <= min(H, W) for small images: 7 for 8×8). Symmetric in x, y.
    Images outside [0, 1] (e.g. still mean/std-normalised) raise ConfigError.
    """
    _check_images(x, y)
    win_size = ssim_window_size(x.shape[-2], x.shape[-1])
    # float64 throughout, window included (pytorch_msssim builds it in float32): the variance
    # terms E[x²] − μ² cancel, and float32 errors there shift SSIM by ~1e-5
    coords = torch.arange(win_size, dtype=torch.float64) - win_size // 2
    window = torch.exp(-(coords**2) / (2 * SSIM_WIN_SIGMA**2))
    window = (window / window.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    return _msssim_ssim(
        x.double(), y.double(), data_range=1.0, size_average=False, win=window.to(x.device)
    ).to(x.dtype)


@IMAGE_METRICS.register("psnr")
def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape (B,): ``10 log10(1 / MSE)`` with data range 1.

    MSE is over all channels and pixels of an image. Identical images (PSNR = +inf) and any
    MSE <= 1e-10 are capped at :data:`PSNR_CAP_DB` = 100 dB so that results serialise to JSON.
    """
    _check_images(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(_PSNR_MIN_MSE))).to(x.dtype)


_LPIPS_MODELS: dict[str, torch.nn.Module] = {}


@IMAGE_METRICS.register("lpips")
def lpips(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """Per-image LPIPS distance, shape (B,), lower is more similar (Zhang et al., CVPR 2018).

    Optional: needs the ``lpips`` package (and its pretrained weights); raises GradleakError
    when it cannot be imported. Inputs in [0, 1] are mapped to LPIPS's [-1, 1].
    """
    _check_images(x, y)
    if x.shape[1] != 3:
        raise ConfigError(f"lpips: needs 3-channel images, got {x.shape[1]} channels")
    try:
        import lpips as lpips_package
    except Exception as exc:  # ImportError, or a broken install failing at import time
        raise GradleakError(f"lpips metric unavailable: cannot import the 'lpips' package ({exc})") from None
    if net not in _LPIPS_MODELS:
        _LPIPS_MODELS[net] = lpips_package.LPIPS(net=net, verbose=False).eval()
    model = _LPIPS_MODELS[net].to(x.device)
    with torch.no_grad():
        return model(x.float() * 2 - 1, y.float() * 2 - 1).flatten().to(x.dtype)


def pairwise(metric: ImageMetric | str, recon: Tensor, orig: Tensor) -> Tensor:
    """All-pairs matrix ``S[i, j] = metric(recon[i], orig[j])``, shape (N, M).

    ``metric`` is a per-image metric (or its name in :data:`IMAGE_METRICS`). The N·M pairs are
    expanded and scored in a few large batched calls (chunked only to bound memory), never one
    call per pair.
    """
    metric_fn = IMAGE_METRICS.get(metric) if isinstance(metric, str) else metric
    for name, t in (("recon", recon), ("orig", orig)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConfigError(f"pairwise: {name} must be a B×C×H×W tensor, got {shape}")
    if recon.shape[1:] != orig.shape[1:]:
        raise ConfigError(
            f"pairwise: image shapes differ: {tuple(recon.shape[1:])} vs {tuple(orig.shape[1:])}"
        )
    n, m = recon.shape[0], orig.shape[0]
    if n == 0 or m == 0:
        raise ConfigError(f"pairwise: empty batch ({n} reconstructions, {m} originals)")
    pair_index = torch.arange(n * m, device=recon.device)
    per_image = max(1, recon[0].numel())
    chunk = max(1, _PAIRWISE_CHUNK_ELEMENTS // per_image)
    scores = [
        metric_fn(recon[idx // m], orig[idx % m]) for idx in pair_index.split(chunk)
    ]
    return torch.cat(scores).reshape(n, m)
