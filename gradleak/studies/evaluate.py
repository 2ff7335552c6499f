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
        **_timing(outcome),
    }


def no_truth_summary(outcome) -> dict[str, Any]:
    """The summary of an attack on a recorded update without ground truth: nothing is scored."""
    return {"true_labels": None, "recovered_labels": outcome.labels.tolist(), "label_method": outcome.label_method,
            "label_accuracy": None, "label_random_baseline": None, "ssim": None, "psnr": None, "assignment": None,
            "per_image_ssim": None, "per_image_psnr": None, **_timing(outcome)}


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


def evaluate_semantics(labeller, semantic, x: torch.Tensor, y: torch.Tensor, true_names: list[str],
                       assignment: list[int]) -> dict[str, Any]:
    """Naming accuracy by class *name*, order-free and under the image matching; the labeller on the
    originals is the upper bound."""
    vocab = {n: i for i, n in enumerate(true_names)}
    truth = [int(t) for t in y]
    pred = _name_ids(semantic.names(), vocab)
    top1 = _name_ids([semantic.class_names[i] for i in semantic.top1], vocab)
    original = labeller.probabilities(x, semantic.class_names).argmax(dim=1).tolist()
    original_ids = _name_ids([semantic.class_names[i] for i in original], vocab)
    out = {
        "semantic_labels": semantic.names(),
        "semantic_accuracy": label_accuracy(pred, truth),
        "semantic_accuracy_top1": label_accuracy(top1, truth),
        "semantic_matched_accuracy": matched_label_accuracy(pred, truth, assignment),
        "semantic_random_baseline": random_baseline(truth, len(semantic.class_names)),
        "original_semantic_accuracy": label_accuracy(original_ids, truth),
        "original_semantic_labels": [semantic.class_names[i] for i in original],
    }
    aggregated = getattr(semantic, "aggregated", None)
    if aggregated is not None:
        agg_ids = _name_ids([semantic.class_names[i] for i in aggregated], vocab)
        out["semantic_accuracy_aggregated"] = label_accuracy(agg_ids, truth)
    return out
