"""The evaluator: the only code that reads the private batch, to score what the attacker recovered."""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import evaluate_images, label_accuracy, matched_label_accuracy, random_baseline


def _timing(outcome) -> dict[str, Any]:
    recon = outcome.reconstruction
    return {
        "matching_loss": recon.matching_loss,
        "restart_losses": recon.restart_losses,
        "iterations": recon.iterations,
        "seconds": outcome.seconds,
        "seconds_per_iteration": recon.seconds / (recon.iterations * len(recon.restart_losses)),
    }


def evaluate_outcome(outcome, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Labels order-free against ``y``, images under the best one-to-one matching against ``x``."""
    ev = evaluate_images(outcome.reconstruction.images, x)
    return {
        "true_labels": y.tolist(),
        "recovered_labels": outcome.labels.tolist(),
        "label_method": outcome.label_method,
        "label_accuracy": label_accuracy(outcome.labels, y),
        "label_random_baseline": random_baseline(y, num_classes),
        "ssim": ev.ssim,
        "psnr": ev.psnr,
        "assignment": ev.assignment,
        "per_image_ssim": ev.per_image_ssim,
        "per_image_psnr": ev.per_image_psnr,
        **uninformative_image_baseline(x),
        **_timing(outcome),
    }


# Draws of the uninformative reconstruction whose scores are averaged: the baseline is an expectation.
BASELINE_DRAWS = 8


def uninformative_image_baseline(x: torch.Tensor, draws: int = BASELINE_DRAWS, seed: int = 0) -> dict[str, float]:
    """SSIM and PSNR that a reconstruction which learned nothing from the update scores: the
    inversion's own random starting images (``randn`` init) matched to ``x`` like a reconstruction,
    averaged over ``draws`` seeded draws. A leakage measure indistinguishable from it means the
    attack recovered nothing beyond its starting point (the "where attacks stop" report)."""
    from ..attacks.inversion.invert import _init_images

    gen = torch.Generator().manual_seed(seed)
    scores = [evaluate_images(_init_images(tuple(x.shape), "randn", gen), x.detach().cpu().float())
              for _ in range(draws)]
    return {"ssim_random_baseline": sum(e.ssim for e in scores) / draws,
            "psnr_random_baseline": sum(e.psnr for e in scores) / draws}


def no_truth_summary(outcome) -> dict[str, Any]:
    """The summary of an attack on a recorded update without ground truth: nothing is scored."""
    return {"true_labels": None, "recovered_labels": outcome.labels.tolist(), "label_method": outcome.label_method,
            "label_accuracy": None, "label_random_baseline": None, "ssim": None, "psnr": None, "assignment": None,
            "per_image_ssim": None, "per_image_psnr": None, "ssim_random_baseline": None,
            "psnr_random_baseline": None, **_timing(outcome)}


def evaluate_guidance(outcome, true_labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Order-free accuracy of the searched labels, the random baseline (B uniform guesses), and the
    candidate baseline (a uniform pick among the candidates searched: with counts constrained,
    neighbours of the recovered multiset already share labels with the truth)."""
    if outcome.search_labels is None:
        return {"search_accuracy": None, "search_random_baseline": None, "search_candidate_baseline": None}
    per_candidate = [label_accuracy(c.guidance, true_labels, num_classes) for c in outcome.candidates]
    return {
        "search_accuracy": label_accuracy(outcome.search_labels, true_labels, num_classes),
        "search_random_baseline": random_baseline(true_labels, num_classes),
        "search_candidate_baseline": sum(per_candidate) / len(per_candidate),
    }


def _name_ids(names: list[str], vocabulary: dict[str, int]) -> list[int]:
    # Names outside the dataset's classes get fresh ids, so they never count as correct.
    return [vocabulary.setdefault(n, len(vocabulary)) for n in names]


def evaluate_naming(labeller, naming, truths: list[tuple[torch.Tensor, torch.Tensor]], true_names: list[str],
                    assignment: list[int]) -> dict[str, Any]:
    """Naming accuracy by class *name* on the first batch's images: the labeller alone (top-1 per
    reconstruction, order-free and under the image matching), through the label map pooled over all
    observed batches, and with the index → name map given (the gradient's counts constrain the
    names: an upper bound no attacker without the map reaches). The labeller on the originals is the
    ceiling. ``truths`` holds every observed batch's (images, labels), batch 0 first."""
    from ..semantic import constrained_assignment

    x, y = truths[0]
    vocab = {n: i for i, n in enumerate(true_names)}
    truth = [int(t) for t in y]
    names = naming.class_names
    top1 = _name_ids([names[i] for i in naming.top1], vocab)
    original = labeller.probabilities(x, names).argmax(dim=1).tolist()
    out = {
        "semantic_accuracy": label_accuracy(top1, truth),
        "semantic_matched_accuracy": matched_label_accuracy(top1, truth, assignment),
        "semantic_random_baseline": random_baseline(truth, len(names)),
        "original_semantic_accuracy": label_accuracy(_name_ids([names[i] for i in original], vocab), truth),
        "original_semantic_labels": [names[i] for i in original],
        "semantic_batches": len(truths),
    }
    if len(names) == len(true_names):
        counts = torch.bincount(torch.as_tensor(naming.indices[0]), minlength=len(names)).tolist()
        known = constrained_assignment(naming.tables[0].clamp_min(1e-12).log(), counts)
        out["semantic_accuracy_known_map"] = label_accuracy(_name_ids([names[i] for i in known], vocab), truth)
    if naming.label_map is not None:
        mapped = _name_ids([names[i] for i in naming.by_label_map], vocab)
        out["semantic_accuracy_aggregated"] = label_accuracy(mapped, truth)
        # Output index i stands for the dataset's class i: the map is right where it names it so.
        right = [i for i in naming.indices_seen if names[naming.label_map[i]] == true_names[i]]
        out["label_map_accuracy"] = len(right) / len(naming.indices_seen) if naming.indices_seen else None
        out["label_map_indices_seen"] = len(naming.indices_seen)
        every = [t for _, ys in truths for t in ys.tolist()]
        named = [naming.label_map[i] for idx in naming.indices for i in idx]
        out["semantic_accuracy_aggregated_all"] = label_accuracy(
            _name_ids([names[i] for i in named], vocab), every)
        for r, (mapping, seen) in sorted(naming.prefix_maps.items()):
            out[f"label_map_accuracy_R{r}"] = sum(names[mapping[i]] == true_names[i] for i in seen) / len(seen)
            out[f"semantic_accuracy_aggregated_R{r}"] = label_accuracy(
                _name_ids([names[mapping[i]] for i in naming.indices[0]], vocab), truth)
    return out
