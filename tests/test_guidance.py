"""Guided inversion: the batched engine against the sequential loop, the search on real digits,
candidate enumeration, and the CLIP guide's plumbing with a tiny random CLIP."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.inversion import REGULARIZERS, InversionConfig, invert, preset
from gradleak.attacks.inversion.batched import BatchedMatcher, invert_batched, invert_sequential
from gradleak.attacks.inversion.guidance import GUIDES, Guidance, build_guide
from gradleak.attacks.inversion.invert import GradientMatcher
from gradleak.attacks.inversion.search import align_to_slots, enumerate_candidates, run_guided
from gradleak.errors import ConfigError
from gradleak.metrics import evaluate_images
from gradleak.models import build_model
from gradleak.studies.evaluate import evaluate_guidance
from gradleak.threat import ThreatModel, simulate_client

pytestmark = pytest.mark.usefixtures("one_thread")

# The TV weight and step the rates quoted below were measured with (the IG preset's before they
# became 0.3 and 0.5).
MEASURED_TV = 0.05
MEASURED_LR = 0.1


@pytest.fixture(scope="module")
def digits_aux():
    """The attacker's classifier, trained on the PUBLIC train split (the private batches come from test)."""
    from gradleak.data import load_dataset
    from gradleak.vision import train_aux_classifier

    public = load_dataset("digits", "train")
    return train_aux_classifier(public.images, public.labels, 10, steps=150, seed=0)


def _observe(data, model="lenet", batch=2, seed=0, width=None, first=0, train=True):
    x, y = data.images[first:first + batch], data.labels[first:first + batch]
    m = build_model(model, data.input_shape, 10, width=width, seed=seed).train(train)
    update = simulate_client(m, x, y, mean=data.mean, std=data.std)
    obs = ThreatModel().observe(m, update, data.input_shape, 10, data.mean, data.std, batch_size=batch,
                                class_names=data.class_names)
    return obs, x, y


def _random_guide(channels=1, seed=0):
    from gradleak.vision import SmallCNN

    torch.manual_seed(seed)
    return build_guide("classifier", aux_classifier=SmallCNN(channels, 10, 8, width=8).eval())


# ---- batched == sequential ---------------------------------------------------------------------


@pytest.mark.parametrize("model,width,train", [("lenet", None, True), ("convnet", 4, True), ("convnet", 4, False)])
def test_batched_pixel_gradient_equals_gradient_matcher(digits, model, width, train):
    """Per-candidate matching losses and pixel gradients of the vmapped engine equal GradientMatcher's.
    The ConvNet in train mode (BN batch statistics) guards against vmap's wrong BN double backward;
    in eval mode BN uses the running statistics."""
    obs, _, y = _observe(digits, model, width=width, train=train)
    labels = torch.stack([y, torch.tensor([1, 2]), torch.tensor([3, 3])])
    cfg = InversionConfig(regularizers={"tv": 0.05})
    x = torch.rand(3, 2, *obs.input_shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    matching, total, _ = BatchedMatcher(obs, cfg, labels).losses(x)
    (grad,) = torch.autograd.grad(total.sum(), [x])
    for k in range(3):
        xk = x[k].detach().clone().requires_grad_(True)
        m_ref, t_ref = GradientMatcher(obs, cfg, labels[k]).matching_loss(xk)
        (g_ref,) = torch.autograd.grad(t_ref, [xk])
        assert matching[k].item() == pytest.approx(m_ref.item(), rel=1e-5, abs=1e-6)  # 1 − cos: fp32 cancellation
        assert total[k].item() == pytest.approx(t_ref.item(), rel=1e-5, abs=1e-6)
        assert ((grad[k] - g_ref).norm() / g_ref.norm()).item() < 1e-4


@pytest.mark.parametrize("model,width", [("lenet", None), ("convnet", 4)])
def test_batched_search_trajectory_equals_sequential_loop(digits, model, width):
    """Five signed-Adam steps of three guided candidates, batched vs one at a time."""
    obs, _, y = _observe(digits, model, width=width)
    labels = torch.stack([y, torch.tensor([1, 2]), torch.tensor([5, 5])])
    cfg = InversionConfig(iterations=5, regularizers={"tv": 0.05}, lr_decay=False)
    guidance = Guidance(_random_guide(), 0.1)
    b = invert_batched(obs, labels, cfg, guidance)
    s = invert_sequential(obs, labels, cfg, guidance)
    for rb, rs in zip(b.reconstructions, s.reconstructions):
        assert rb.matching_loss == pytest.approx(rs.matching_loss, rel=1e-4, abs=1e-6)
        assert [h[1] for h in rb.history] == pytest.approx([h[1] for h in rs.history], rel=1e-4, abs=1e-6)
        assert (rb.images - rs.images).abs().max().item() < 1e-3
    assert b.prior_losses == pytest.approx(s.prior_losses, rel=1e-4)
    assert b.guidance_losses == pytest.approx(s.guidance_losses, rel=1e-4)
    # the candidates really differ (guidance and labels change the problem)
    assert len({round(r.matching_loss, 6) for r in b.reconstructions}) == 3


def test_batched_restarts_equal_invert_restarts(digits):
    obs, _, y = _observe(digits, "lenet")
    cfg = InversionConfig(iterations=6, restarts=3)
    ref = invert(obs, y, cfg, progress=False)
    got = invert_batched(obs, y.unsqueeze(0), cfg).reconstructions[0]
    assert got.restart_losses == pytest.approx(ref.restart_losses, rel=1e-4)
    assert len(set(ref.restart_losses)) == 3  # restarts start from different images
    assert (got.images - ref.images).abs().max().item() < 1e-3


def test_bn_stats_prior_is_batched_per_problem(digits):
    """The bn_stats prior reads each problem's own BN inputs inside vmap."""
    x, y = digits.images[:2], digits.labels[:2]
    m = build_model("convnet", digits.input_shape, 10, width=4, seed=0).train()
    m(torch.rand(16, *digits.input_shape))  # non-trivial running statistics
    update = simulate_client(m, x, y, mean=digits.mean, std=digits.std)
    obs = ThreatModel(knows_bn_stats=True).observe(m, update, digits.input_shape, 10, digits.mean, digits.std,
                                                   batch_size=2)
    cfg = InversionConfig(regularizers={"bn_stats": 0.01})
    xs = torch.rand(2, 2, *obs.input_shape, generator=torch.Generator().manual_seed(2))
    labels = torch.stack([y, y])
    _, total, _ = BatchedMatcher(obs, cfg, labels).losses(xs)
    for k in range(2):
        _, t_ref = GradientMatcher(obs, cfg, y).matching_loss(xs[k], create_graph=False)
        assert total[k].item() == pytest.approx(t_ref.item(), rel=1e-5, abs=1e-6)


# ---- candidates ----------------------------------------------------------------------------------


def test_candidates_single_image_are_all_classes():
    cands = enumerate_candidates(10, 1)
    assert cands.squeeze(1).tolist() == list(range(10))
    evidence = torch.arange(10.0)  # class 9 most plausible
    assert enumerate_candidates(10, 1, evidence=evidence, max_candidates=3).squeeze(1).tolist() == [7, 8, 9]


def test_candidates_with_counts_are_the_multiset_and_its_one_substitution_neighbours():
    counts = torch.zeros(10, dtype=torch.long)
    counts[3], counts[7] = 1, 1
    cands = enumerate_candidates(10, 2, counts=counts, max_candidates=100)
    sets = [tuple(c) for c in cands.tolist()]
    assert sets[0] == (3, 7)
    assert len(sets) == 1 + 2 * 9 == len(set(sets))
    assert all(len(set(s) & {3, 7}) >= 1 for s in sets)  # one substitution keeps one of the two
    assert (3, 3) in sets and (7, 7) in sets and (0, 7) in sets
    # the cap keeps the substitutions the evidence finds most plausible
    evidence = torch.zeros(10)
    evidence[5] = 1.0
    capped = [tuple(c) for c in enumerate_candidates(10, 2, counts, evidence, max_candidates=3).tolist()]
    assert capped == [(3, 7), (5, 7), (3, 5)]


def test_candidates_without_counts_are_multisets_of_top_classes():
    evidence = torch.tensor([0.0, 5, 4, 3, 2, 1, 0, 0, 0, 0])
    cands = enumerate_candidates(10, 2, evidence=evidence, max_candidates=15)
    sets = {tuple(c) for c in cands.tolist()}
    assert len(sets) == 15 == len(cands)  # C(5 + 1, 2) = 15 multisets over the top 5 classes
    assert set().union(*sets) == {1, 2, 3, 4, 5}
    assert all(list(c) == sorted(c) for c in sets)


def test_align_to_slots():
    assert align_to_slots([7, 3], [3, 7]) == [3, 7]
    assert align_to_slots([7, 3], [3, 3]) == [3, 7]
    assert align_to_slots([1, 2], [3, 4]) == [1, 2]


# ---- the search on real digits ---------------------------------------------------------------


@pytest.mark.slow
def test_guidance_search_recovers_single_labels_far_above_random(digits, digits_aux):
    """B = 1, LeNet, classifier guide, search over guidance only (the client-loss label is the
    gradient's, so only guidance can tell candidates apart). Measured 16/20 batches at 200 iterations
    (weight 0.1); random picks 1 in 10, so ≥ 5 of 8 happens by chance with p ≈ 4e-4."""
    cfg = preset("ig", iterations=200, regularizers={"tv": MEASURED_TV}, lr=MEASURED_LR)
    hits = 0
    for trial in range(8):
        obs, _, y = _observe(digits, "lenet", batch=1, seed=trial, first=7 * trial)
        out = run_guided(obs, y, cfg, "search", "classifier", 0.1, aux_classifier=digits_aux,
                         search_space="guidance")
        assert len(out.candidates) == 10
        assert out.chosen == min(range(10), key=lambda k: out.candidates[k].matching_loss)
        hits += evaluate_guidance(out, y, 10)["search_accuracy"]
    assert hits >= 5


def test_oracle_guidance_improves_reconstructions(digits, digits_aux):
    """Guidance toward the true class makes digits reconstructions better: measured SSIM 0.51 → 0.75
    (weight 0.1, 200 iterations, 20 batches, better in 20/20; smallest gain +0.03)."""
    cfg = preset("ig", iterations=200, regularizers={"tv": MEASURED_TV}, lr=MEASURED_LR)
    gains = []
    for trial in range(3):
        obs, x, y = _observe(digits, "lenet", batch=1, seed=trial, first=5 * trial + 1)
        plain = run_guided(obs, y, cfg, "none")
        oracle = run_guided(obs, y, cfg, "oracle", "classifier", 0.1, true_labels_for_oracle=y,
                            aux_classifier=digits_aux)
        assert plain.guidance_labels is None and oracle.guidance_labels.tolist() == y.tolist()
        gains.append(evaluate_images(oracle.reconstruction.images, x).ssim
                     - evaluate_images(plain.reconstruction.images, x).ssim)
    assert min(gains) > 0 and sum(gains) / len(gains) > 0.1


def test_label_search_over_multisets_picks_the_batch_labels(digits, digits_aux):
    """B = 2 with recovered counts: 1 + 2·9 candidate multisets; wrong multisets cannot match the
    gradient (measured final L_grad ≈ 0.004 for the true multiset vs ≥ 0.18 for the others)."""
    from gradleak.attacks.labels import recover_labels

    obs, _, y = _observe(digits, "lenet", batch=2, seed=0, first=3)
    assert len(set(y.tolist())) == 2
    cfg = preset("ig", iterations=100, regularizers={"tv": MEASURED_TV}, lr=MEASURED_LR)
    out = run_guided(obs, recover_labels(obs), cfg, "search", "classifier", 0.1,
                     aux_classifier=digits_aux, search_space="labels")
    assert len(out.candidates) == 19
    assert sorted(out.search_labels.tolist()) == sorted(y.tolist())
    summary = out.summary()
    assert summary["guidance_mode"] == "search" and len(summary["candidate_losses"]) == 19
    assert summary["search_labels"] == out.search_labels.tolist()


# ---- errors --------------------------------------------------------------------------------------


def test_guidance_regulariser_refuses_to_be_built_without_a_guide(digits):
    obs, _, y = _observe(digits)
    with pytest.raises(ConfigError, match="guidance"):
        invert(obs, y, InversionConfig(iterations=1, regularizers={"guidance": 0.1}), progress=False)
    assert "guidance" in REGULARIZERS and set(GUIDES.names()) == {"clip", "classifier"}


def test_bad_modes_and_optimisers_are_one_line_errors(digits):
    obs, _, y = _observe(digits)
    cfg = InversionConfig(iterations=1)
    with pytest.raises(ConfigError, match="true labels"):
        run_guided(obs, y, cfg, "oracle", "classifier", 0.1, aux_classifier=_random_guide().model)
    with pytest.raises(ConfigError, match="guidance mode"):
        run_guided(obs, y, cfg, "sometimes")
    with pytest.raises(ConfigError, match="adam"):
        invert_batched(obs, y.unsqueeze(0), InversionConfig(iterations=1, optimizer="lbfgs"))
    with pytest.raises(ConfigError, match="clip guide needs a CLIP"):
        build_guide("clip", class_names=["a"])


# ---- CLIP plumbing -------------------------------------------------------------------------------


class _ByteTokenizer:
    """Bytes → ids 1..250, EOS 257, padding 0: enough of a tokenizer for a random CLIP."""

    def __call__(self, texts, padding=True, truncation=True, max_length=32, return_tensors="pt"):
        ids = [[b % 250 + 1 for b in t.encode()][: max_length - 1] + [257] for t in texts]
        n = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}


@pytest.fixture(scope="module")
def tiny_clip():
    transformers = pytest.importorskip("transformers")
    from gradleak.vision import ClipBackend

    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=257, pad_token_id=0,
                         bos_token_id=256),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )
    return ClipBackend(transformers.CLIPModel(config), _ByteTokenizer(), name="tiny-random")


def test_clip_guide_reaches_pixels_and_descends_toward_its_prompt(tiny_clip):
    guide = build_guide("clip", clip=tiny_clip, class_names=["cat", "dog", "truck"])
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 2])
    # the guide compares against "image of a {c}" for each image's own class
    text = tiny_clip.encode_texts(["image of a cat", "image of a truck"])
    expected = 1 - (tiny_clip.encode_images(x0) * text).sum(-1)
    assert guide.per_image(x0, targets).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert guide.per_image(x0, torch.tensor([1, 1])).tolist() != pytest.approx(expected.tolist(), abs=1e-3)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    first = None
    for _ in range(15):
        loss = guide.per_image(x, targets).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        assert x.grad.abs().sum() > 0
        opt.step()
    assert guide.per_image(x.detach(), targets).mean().item() < first - 0.01


def test_clip_guided_search_runs_batched_equal_to_sequential(tiny_clip):
    """The clip guide inside the batched engine: same losses as the loop (3-channel 8×8 images)."""
    shape = (3, 8, 8)
    m = build_model("lenet", shape, 3, seed=0).train()
    x, y = torch.rand(1, *shape), torch.tensor([1])
    obs = ThreatModel().observe(m, simulate_client(m, x, y), shape, 3, batch_size=1,
                                class_names=["cat", "dog", "truck"])
    guidance = Guidance(build_guide("clip", clip=tiny_clip, class_names=obs.class_names), 0.5)
    cfg = InversionConfig(iterations=3)
    labels = torch.arange(3).unsqueeze(1)
    b = invert_batched(obs, labels, cfg, guidance)
    s = invert_sequential(obs, labels, cfg, guidance)
    assert [r.matching_loss for r in b.reconstructions] == pytest.approx([r.matching_loss for r in s.reconstructions],
                                                                         rel=1e-4)
    assert b.guidance_losses == pytest.approx(s.guidance_losses, rel=1e-4)


def test_clip_guide_averages_over_views(tiny_clip):
    """views=1 is the plain CLIP loss; with views, each view's loss reaches the pixels and the loss is
    the mean over views of CLIP on the shifted/flipped/noised images."""
    names = ["cat", "dog", "truck"]
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.tensor([0, 2])
    plain = build_guide("clip", clip=tiny_clip, class_names=names)
    text = tiny_clip.encode_texts(["image of a cat", "image of a truck"])
    assert torch.equal(plain.per_image(x, targets), tiny_clip.guidance_loss(x, text, reduction="none"))
    viewed = build_guide("clip", clip=tiny_clip, class_names=names, views=3, seed=4)
    losses = viewed.view_losses(x, targets)
    assert losses.shape == (3, 2) and len({round(v, 6) for v in losses[:, 0].tolist()}) == 3
    for v in range(3):
        (g,) = torch.autograd.grad(losses[v].sum(), [x], retain_graph=True)
        assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
    again = build_guide("clip", clip=tiny_clip, class_names=names, views=3, seed=4)
    assert torch.equal(again.per_image(x, targets), losses.mean(dim=0))  # same seed, same draws
