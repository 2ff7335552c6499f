"""The attacker's layers (cheaper second derivatives) against PyTorch's own, to float64 precision."""

import copy

import pytest
import torch
from torch import nn

from gradleak.attacks.inversion import InversionConfig
from gradleak.attacks.inversion.attacker_layers import _TrainBatchNorm, low_precision_copies, prepare_attacker_model
from gradleak.attacks.inversion.invert import GradientMatcher
from gradleak.models import build_model
from gradleak.runtime import tune_allocator
from gradleak.threat import ThreatModel, simulate_client


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 3)])
def test_train_batch_norm_first_and_second_derivatives_match_finite_differences(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return _TrainBatchNorm.apply(x, w, b, 1e-5)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    ref = nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)
    torch.testing.assert_close(f(x, w, b), ref)


class _Odd(nn.Module):
    """Convolutions with stride, dilation, groups, no bias, and BN in 1-D and 2-D."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=3, bias=False)
        self.c3 = nn.Conv2d(6, 4, 1)
        self.bn2 = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.tanh(self.c3(self.c2(h)))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.fc(torch.sigmoid(self.bn2(h)))


def _pixel_gradient(model, x, y, target):
    """d(1 − cos(g(x), target))/dx and g(x), through whatever layers ``model`` has."""
    x = x.clone().requires_grad_(True)
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    match = 1 - g @ target / (g.norm() * target.norm())
    (dx,) = torch.autograd.grad(match, [x])
    return match.detach(), dx, g.detach()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("make", ["odd", "convnet"])
def test_attacker_layers_give_the_plain_models_matching_loss_and_pixel_gradient(make, train):
    torch.manual_seed(0)
    if make == "odd":
        plain = _Odd().double()
        x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
        y = torch.tensor([0, 4, 4])
    else:
        plain = build_model("convnet", (3, 16, 16), 10, width=4, seed=0).double()
        x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
        y = torch.tensor([3, 7])
    for m in plain.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.momentum = 0.0
    plain.train(train)
    fast = prepare_attacker_model(copy.deepcopy(plain))
    n = sum(p.numel() for p in plain.parameters())
    target = torch.randn(n, dtype=torch.float64)
    m_ref, dx_ref, g_ref = _pixel_gradient(plain, x, y, target)
    m_fast, dx_fast, g_fast = _pixel_gradient(fast, x, y, target)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m_fast, m_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx_fast, dx_ref, rtol=1e-8, atol=1e-12)
    assert dx_ref.abs().max() > 0


def test_gradient_matcher_pixel_gradient_matches_the_plain_loop_in_bf16():
    torch.manual_seed(0)
    model = build_model("convnet", (3, 16, 16), 10, width=8, seed=0).train()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    update = simulate_client(model, x, y)
    obs = ThreatModel(knows_labels=True).observe(model, update, (3, 16, 16), 10, None, None, 2, y)
    matcher = GradientMatcher(obs, InversionConfig(precision="bf16"), y)
    x0 = torch.rand(2, 3, 16, 16, requires_grad=True)
    _, total = matcher.matching_loss(x0)
    (dx,) = torch.autograd.grad(total, [x0])
    plain = copy.deepcopy(obs.model)
    for m in plain.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    params = list(plain.parameters())
    x1 = x0.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(plain(obs.normalize(x1)).float(), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total_ref = matcher.objective(grads)
    for reg, weight in matcher.regularizers:
        total_ref = total_ref + weight * reg(x1)
    (dx_ref,) = torch.autograd.grad(total_ref, [x1])
    # bf16 rounding differs only where fp32 statistics replace bf16 ones; signs drive IG's steps.
    assert float(total.detach()) == pytest.approx(float(total_ref.detach()), rel=2e-2)
    agree = (dx.sign() == dx_ref.sign()).float().mean()
    assert agree > 0.9
    cos = nn.functional.cosine_similarity(dx.flatten(), dx_ref.flatten(), dim=0)
    assert cos > 0.95


def test_low_precision_copies_give_autocasts_values_and_leave_fp32_scoring_intact():
    torch.manual_seed(0)
    model = build_model("convnet", (3, 16, 16), 10, width=8, seed=0).eval()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    plain = prepare_attacker_model(copy.deepcopy(model))  # autocast rounds its fp32 weights each forward
    patched = prepare_attacker_model(copy.deepcopy(model))
    copies = low_precision_copies(patched, torch.bfloat16)
    kept = [n for n, p in patched.named_parameters() if id(p) in copies]
    layers = {name for name, m in patched.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert kept == [n for n, _ in patched.named_parameters() if n.rsplit(".", 1)[0] in layers]  # not BN
    assert kept and all(copies[id(p)].dtype == torch.bfloat16 for n, p in patched.named_parameters() if n in kept)
    params = [copies.get(id(p), p) for p in patched.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(patched(x).float(), y)
        loss_ref = nn.functional.cross_entropy(plain(x).float(), y)
    grads = torch.autograd.grad(loss, params)
    grads_ref = torch.autograd.grad(loss_ref, list(plain.parameters()))
    assert float(loss.detach()) == float(loss_ref.detach())
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.float(), g_ref, rtol=0, atol=0)
    # Outside autocast the same copy still runs on its fp32 parameters (the final scoring).
    torch.testing.assert_close(patched(x), plain(x), rtol=0, atol=0)
    update = simulate_client(model, x, y)
    obs = ThreatModel(knows_labels=True).observe(model, update, (3, 16, 16), 10, None, None, 2, y)
    fp32, bf16 = (GradientMatcher(obs, InversionConfig(precision=p), y) for p in ("fp32", "bf16"))
    bf16.dtype = None
    assert float(bf16.matching_loss(x, create_graph=False)[0]) == float(fp32.matching_loss(x, create_graph=False)[0])


def test_tune_allocator_applies_on_linux_glibc_and_is_idempotent():
    import sys

    first = tune_allocator()
    assert tune_allocator() == first
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert first
