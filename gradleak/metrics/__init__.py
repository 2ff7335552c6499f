"""How good a recovery is: image metrics under the best matching, and label accuracy with its
random baseline (see docs/ALGORITHMS.md, "Evaluation")."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .image import IMAGE_METRICS, PSNR_CAP_DB, lpips, pairwise, psnr, ssim, ssim_window_size
from .intervals import PairedDifference, Stat, bootstrap_interval, paired_difference, standard_error, stat
from .labels import label_accuracy, label_counts, matched_label_accuracy, random_baseline
from .matching import best_assignment, brute_force_assignment


@dataclass
class ImageEvaluation:
    """Image quality of a batch reconstruction under the SSIM-optimal matching.

    ``ssim`` is the mean matched SSIM (the seed's SSIM_SMART); ``psnr`` the mean PSNR over the
    same pairs (each capped at 100 dB). ``assignment[i]`` is the original matched to
    reconstruction i; ``per_image_*[i]`` score that pair; ``ssim_matrix[i][j]`` is
    SSIM(reconstruction i, original j).
    """

    ssim: float
    psnr: float
    assignment: list[int]
    per_image_ssim: list[float]
    per_image_psnr: list[float]
    ssim_matrix: list[list[float]]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_images(recon: Tensor, orig: Tensor) -> ImageEvaluation:
    """Match reconstructions to originals by the Hungarian method on the B×B SSIM matrix
    (permutation-agnostic SSIM), then report PSNR on the same matching."""
    if not isinstance(recon, Tensor) or not isinstance(orig, Tensor):
        raise ConfigError("evaluate_images: recon and orig must be torch tensors")
    if recon.shape != orig.shape:
        raise ConfigError(
            f"evaluate_images: recon shape {tuple(recon.shape)} != orig shape {tuple(orig.shape)}"
        )
    ssim_matrix = pairwise(ssim, recon, orig)
    perm, mean_ssim = best_assignment(ssim_matrix, maximize=True)
    matched = torch.as_tensor(perm, device=recon.device)
    per_image_ssim = ssim_matrix[torch.arange(len(perm), device=recon.device), matched]
    per_image_psnr = psnr(recon, orig[matched])
    return ImageEvaluation(
        ssim=mean_ssim,
        psnr=float(per_image_psnr.double().mean()),
        assignment=[int(j) for j in perm],
        per_image_ssim=[float(v) for v in per_image_ssim],
        per_image_psnr=[float(v) for v in per_image_psnr],
        ssim_matrix=[[float(v) for v in row] for row in ssim_matrix],
    )


__all__ = [
    "IMAGE_METRICS",
    "PSNR_CAP_DB",
    "ImageEvaluation",
    "PairedDifference",
    "Stat",
    "best_assignment",
    "bootstrap_interval",
    "brute_force_assignment",
    "evaluate_images",
    "label_accuracy",
    "label_counts",
    "lpips",
    "matched_label_accuracy",
    "paired_difference",
    "pairwise",
    "psnr",
    "random_baseline",
    "ssim",
    "ssim_window_size",
    "standard_error",
    "stat",
]
