"""solve_counts_bounded under a noisy update: the lower bound may reach or pass B."""
import torch

from gradleak.attacks.labels.ilrg import solve_counts_bounded


def test_lower_bound_at_or_past_batch_size_is_clamped_not_refused():
    torch.manual_seed(0)
    classes, batch = 5, 4
    mean_probs = torch.softmax(torch.randn(classes, classes), dim=1).float()
    grad_bias = torch.randn(classes).float()
    lower = torch.tensor([4.0, 5.0, 0.0, float("nan"), 0.0])  # == B, > B, NaN: what strong noise gives
    counts = solve_counts_bounded(mean_probs, grad_bias, batch, lower)
    assert counts.shape == (classes,)
    assert torch.isfinite(counts).all()
    assert (counts >= -1e-9).all() and (counts <= batch + 1e-6).all()
    assert counts[0] >= batch - 1e-3  # the clamped bound still holds


def test_exact_system_returns_the_true_counts():
    # Known answer: ∇b built from the bias identity B ∇b_i = Σ_j k_j p̄_j[i] − k_i for known k.
    torch.manual_seed(1)
    classes, batch = 4, 6
    mean_probs = torch.softmax(torch.randn(classes, classes), dim=1).double()
    true = torch.tensor([3.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    grad_bias = (mean_probs.T @ true - true) / batch
    counts = solve_counts_bounded(mean_probs, grad_bias, batch, torch.zeros(classes))
    assert torch.allclose(counts.double(), true, atol=1e-6)
