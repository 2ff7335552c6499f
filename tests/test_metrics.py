"""Known-answer tests for gradleak.metrics: SSIM/PSNR, all-pairs matrices, Hungarian matching,
order-free label accuracy and its exact random baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from gradleak.errors import ConfigError, GradleakError
from gradleak.metrics import (
    ImageEvaluation,
    best_assignment,
    brute_force_assignment,
    evaluate_images,
    label_accuracy,
    label_counts,
    matched_label_accuracy,
    pairwise,
    psnr,
    random_baseline,
    ssim,
    ssim_window_size,
)
from gradleak.metrics import image as image_module


def smooth_images(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random but structured images in [0, 1] (upsampled noise), so SSIM is discriminative."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, max(2, h // 4), max(2, w // 4), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


def reference_ssim(x: np.ndarray, y: np.ndarray, win_size: int, sigma: float = 1.5) -> float:
    """Direct transcription of Wang et al. 2004 (Gaussian window, valid region, K=(0.01, 0.03),
    data range 1) for one C×H×W image pair, averaged over channels."""
    coords = np.arange(win_size) - win_size // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2

    def local_mean(img: np.ndarray) -> np.ndarray:
        return (sliding_window_view(img, (win_size, win_size)) * window).sum(axis=(-1, -2))

    per_channel = []
    for xc, yc in zip(x, y):
        mx, my = local_mean(xc), local_mean(yc)
        vx, vy = local_mean(xc * xc) - mx**2, local_mean(yc * yc) - my**2
        cxy = local_mean(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


# ---------------------------------------------------------------- SSIM


def test_ssim_of_identical_images_is_one():
    x = smooth_images(3, 3, 32, 32, seed=0)
    np.testing.assert_allclose(ssim(x, x.clone()).numpy(), np.ones(3), atol=1e-6)


def test_ssim_decreases_with_noise():
    x = smooth_images(1, 1, 8, 8, seed=1).repeat(4, 1, 1, 1)
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    levels = torch.tensor([0.0, 0.05, 0.15, 0.4]).view(4, 1, 1, 1)
    noisy = (x + levels * noise).clamp(0, 1)
    values = ssim(noisy, x)
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert torch.all(values[1:] < values[:-1]), values


def test_ssim_of_constant_images_is_luminance_term():
    # constant images: zero variance, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = 0.01²
    a, b, c1 = 0.2, 0.6, 1e-4
    x = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    y = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim(x, y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 32, 32), (1, 1, 9, 12)])
def test_ssim_matches_reference_and_is_symmetric(shape):
    x = smooth_images(*shape, seed=3)
    y = smooth_images(*shape, seed=4)
    got = ssim(x, y).double().numpy()
    win = ssim_window_size(shape[2], shape[3])
    want = [reference_ssim(xi.double().numpy(), yi.double().numpy(), win) for xi, yi in zip(x, y)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, ssim(y, x).double().numpy(), atol=1e-6)


def test_ssim_window_size_fits_small_images():
    assert ssim_window_size(8, 8) == 7  # sklearn-digits size
    assert ssim_window_size(32, 32) == 11  # Wang et al. default
    assert ssim_window_size(9, 12) == 9
    assert ssim_window_size(3, 40) == 3
    with pytest.raises(ConfigError):
        ssim_window_size(2, 8)


@pytest.mark.parametrize(
    "x, y",
    [
        (torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)),  # batch mismatch
        (torch.rand(1, 8, 8), torch.rand(1, 8, 8)),  # not 4-D
        (torch.rand(1, 1, 8, 8) * 2 - 0.5, torch.rand(1, 1, 8, 8)),  # normalised, not in [0, 1]
        (torch.full((1, 1, 8, 8), float("nan")), torch.rand(1, 1, 8, 8)),
    ],
)
def test_image_metrics_reject_bad_input(x, y):
    with pytest.raises(ConfigError):
        ssim(x, y)
    with pytest.raises(ConfigError):
        psnr(x, y)


# ---------------------------------------------------------------- PSNR


def test_psnr_known_answer():
    x = torch.full((2, 3, 8, 8), 0.5)
    y = x + 0.1  # uniform error 0.1 → MSE 0.01 → 20 dB
    np.testing.assert_allclose(psnr(x, y).numpy(), [20.0, 20.0], atol=1e-4)
    y2 = x.clone()
    y2[:, :, :4] += 0.2  # half the pixels off by 0.2 → MSE 0.02
    np.testing.assert_allclose(psnr(x, y2).numpy(), 10 * np.log10(1 / 0.02), atol=1e-4)


def test_psnr_of_identical_images_is_capped_finite():
    x = smooth_images(2, 1, 8, 8, seed=5)
    values = psnr(x, x.clone())
    np.testing.assert_array_equal(values.numpy(), [100.0, 100.0])


# ---------------------------------------------------------------- pairwise


@pytest.mark.parametrize("metric", [ssim, psnr])
def test_pairwise_equals_looping_the_metric(metric):
    recon = smooth_images(4, 3, 12, 12, seed=6)
    orig = smooth_images(3, 3, 12, 12, seed=7)
    matrix = pairwise(metric, recon, orig)
    looped = torch.stack(
        [torch.cat([metric(recon[i : i + 1], orig[j : j + 1]) for j in range(3)]) for i in range(4)]
    )
    assert matrix.shape == (4, 3)
    torch.testing.assert_close(matrix, looped)


def test_pairwise_is_batched_and_chunks_give_same_answer(monkeypatch):
    recon = smooth_images(5, 1, 8, 8, seed=8)
    orig = smooth_images(5, 1, 8, 8, seed=9)
    calls = []

    def counting_ssim(x, y):
        calls.append(x.shape[0])
        return ssim(x, y)

    full = pairwise(counting_ssim, recon, orig)
    assert calls == [25]  # one call on all B·B pairs
    calls.clear()
    monkeypatch.setattr(image_module, "_PAIRWISE_CHUNK_ELEMENTS", 7 * 64)  # 7 pairs per chunk
    chunked = pairwise(counting_ssim, recon, orig)
    assert calls == [7, 7, 7, 4]
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(pairwise("ssim", recon, orig), full)  # by registry name


# ---------------------------------------------------------------- matching


@pytest.mark.parametrize("b", range(1, 7))
@pytest.mark.parametrize("maximize", [True, False])
def test_hungarian_equals_brute_force(b, maximize):
    for seed in range(5):
        score = np.random.default_rng(100 * b + seed).normal(size=(b, b))
        perm, value = best_assignment(score, maximize=maximize)
        ref_perm, ref_value = brute_force_assignment(score, maximize=maximize)
        assert value == pytest.approx(ref_value, abs=1e-12)
        np.testing.assert_array_equal(perm, ref_perm)  # continuous scores: optimum is unique
        assert value == pytest.approx(score[np.arange(b), perm].mean())


def test_assignment_accepts_tensor_and_recovers_planted_permutation():
    planted = np.array([2, 0, 3, 1])
    score = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) * 0.1
    score[torch.arange(4), torch.as_tensor(planted)] += 1.0
    perm, value = best_assignment(score)
    np.testing.assert_array_equal(perm, planted)
    assert value > 1.0


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((0, 0)), np.array([[0.0, np.nan], [1, 2]])])
def test_assignment_rejects_bad_matrices(bad):
    with pytest.raises(ConfigError):
        best_assignment(bad)


def test_brute_force_refuses_large_batches():
    with pytest.raises(ConfigError):
        brute_force_assignment(np.zeros((9, 9)))


# ---------------------------------------------------------------- evaluate_images


@pytest.mark.parametrize("shape", [(6, 3, 16, 16), (5, 1, 8, 8)])
def test_evaluate_images_recovers_shuffle(shape):
    orig = smooth_images(*shape, seed=10)
    planted = np.random.default_rng(11).permutation(shape[0])
    noise = 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(12))
    recon = (orig[torch.as_tensor(planted)] + noise).clamp(0, 1)
    result = evaluate_images(recon, orig)
    assert result.assignment == planted.tolist()
    matched_ssim = ssim(recon, orig[torch.as_tensor(planted)])
    np.testing.assert_allclose(result.per_image_ssim, matched_ssim.numpy(), atol=1e-6)
    assert result.ssim == pytest.approx(float(matched_ssim.mean()), abs=1e-6)
    matched_psnr = psnr(recon, orig[torch.as_tensor(planted)])
    np.testing.assert_allclose(result.per_image_psnr, matched_psnr.numpy(), atol=1e-4)
    assert result.psnr == pytest.approx(float(matched_psnr.mean()), abs=1e-4)
    # the identity pairing scores lower than the recovered one
    assert result.ssim > float(ssim(recon, orig).mean())
    assert np.asarray(result.ssim_matrix).shape == (shape[0], shape[0])


def test_evaluation_of_perfect_recovery_serialises_to_strict_json():
    orig = smooth_images(3, 1, 8, 8, seed=13)
    result = evaluate_images(orig[[1, 2, 0]], orig)
    assert isinstance(result, ImageEvaluation)
    assert result.assignment == [1, 2, 0]
    assert result.ssim == pytest.approx(1.0, abs=1e-6)
    assert result.psnr == 100.0
    decoded = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert decoded["assignment"] == [1, 2, 0]


def test_evaluate_images_rejects_shape_mismatch():
    with pytest.raises(ConfigError, match="shape"):
        evaluate_images(torch.rand(3, 1, 8, 8), torch.rand(4, 1, 8, 8))


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        ([1, 1, 2, 3], [1, 2, 2, 4], 0.5),  # overlap {1, 2}
        ([3, 3, 3], [3, 3, 3], 1.0),
        ([0, 0, 0, 1], [0, 1, 1, 1], 0.5),  # overlap {0, 1}
        ([5, 4, 3, 2], [2, 3, 4, 5], 1.0),  # order does not matter
        ([7, 7, 7, 7], [1, 2, 3, 7], 0.25),
        ([0], [1], 0.0),
    ],
)
def test_label_accuracy_hand_computed(pred, true, expected):
    assert label_accuracy(pred, true) == pytest.approx(expected)
    assert label_accuracy(torch.tensor(pred), np.array(true), num_classes=10) == pytest.approx(expected)
    assert label_accuracy(true, pred) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize(
    "pred, true, num_classes",
    [([1, 2], [1, 2, 3], None), ([], [], None), ([1, 10], [1, 2], 10), ([-1], [0], None), ([0.5], [0], None)],
)
def test_label_accuracy_rejects_bad_input(pred, true, num_classes):
    with pytest.raises(ConfigError):
        label_accuracy(pred, true, num_classes)


def test_label_counts():
    np.testing.assert_array_equal(label_counts(torch.tensor([2, 0, 2, 4]), 5), [1, 0, 2, 0, 1])
    with pytest.raises(ConfigError):
        label_counts([5], 5)


@pytest.mark.parametrize("b, expected", [(1, 0.1), (2, 0.19), (4, 0.3439)])
def test_random_baseline_distinct_labels_closed_form(b, expected):
    assert random_baseline(list(range(b)), 10) == pytest.approx(expected, abs=1e-12)
    assert random_baseline(list(range(b)), 10) == pytest.approx(1 - 0.9**b, abs=1e-12)


def test_random_baseline_repeated_labels_exact():
    # all labels one class: accuracy = fraction of guesses hitting it, mean 1/C for any B
    assert random_baseline([3, 3, 3, 3, 3], 10) == pytest.approx(0.1, abs=1e-12)
    # true {0, 0}, C = 2: counts of guesses for class 0 ~ Bin(2, 1/2); E[min(X, 2)] = 1 → 1/2
    assert random_baseline([0, 0], 2) == pytest.approx(0.5, abs=1e-12)
    # true {0, 1}, C = 2: E[min(X,1) + min(2−X,1)] = 0.25·1 + 0.5·2 + 0.25·1 = 1.5 → 0.75
    assert random_baseline([0, 1], 2) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("true, num_classes", [([0, 0, 1, 2, 2], 10), ([4, 4, 4, 1], 5), ([0, 1, 2, 3, 4, 5, 6, 6], 10)])
def test_random_baseline_matches_simulation(true, num_classes):
    rng = np.random.default_rng(2024)
    draws, b = 200_000, len(true)
    guesses = rng.integers(0, num_classes, size=(draws, b))
    guess_counts = np.zeros((draws, num_classes), dtype=np.int64)
    np.add.at(guess_counts, (np.repeat(np.arange(draws), b), guesses.ravel()), 1)
    true_counts = np.bincount(true, minlength=num_classes)
    simulated = np.minimum(guess_counts, true_counts).sum(axis=1).mean() / b
    assert random_baseline(true, num_classes) == pytest.approx(simulated, abs=0.01)
    # and the cheap spot check that the loop-free formula equals label_accuracy on a few draws
    few = [label_accuracy(g, true) for g in guesses[:50]]
    np.testing.assert_allclose(few, np.minimum(guess_counts[:50], true_counts).sum(axis=1) / b)


def test_matched_label_accuracy():
    true = [1, 2, 3]
    pred = [3, 1, 2]
    assert matched_label_accuracy(pred, true, [2, 0, 1]) == 1.0  # true[perm] = [3, 1, 2]
    assert matched_label_accuracy(pred, true, [0, 1, 2]) == 0.0
    assert matched_label_accuracy(pred, true, np.array([2, 1, 0])) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="permutation"):
        matched_label_accuracy(pred, true, [0, 0, 1])
    with pytest.raises(ConfigError):
        matched_label_accuracy(pred, true, [0, 1])


# ---------------------------------------------------------------- LPIPS (optional)


def _lpips_importable() -> bool:
    try:
        import lpips  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_lpips_importable(), reason="lpips is installed; the missing-package path is not reachable")
def test_lpips_without_package_raises_clear_error():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(GradleakError, match="lpips"):
        image_module.lpips(x, x)


@pytest.mark.skipif(not _lpips_importable(), reason="lpips not installed (optional)")
def test_lpips_identical_images_near_zero():
    x = smooth_images(2, 3, 64, 64, seed=14)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    same, different = image_module.lpips(x, x.clone()), image_module.lpips(noisy, x)
    assert torch.all(same < 1e-3) and torch.all(different > same)
