"""The levers on a guided iteration's cost (issue #28): ``guide_every`` (the guide on every k-th step
only, at k times the weight) in both engines, and ``clip_input_size`` (a smaller CLIP input with
interpolated position embeddings)."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.inversion import InversionConfig
from gradleak.attacks.inversion.batched import BatchedMatcher, invert_batched, invert_sequential
from gradleak.attacks.inversion.guidance import Guidance, build_guide
from gradleak.attacks.inversion.invert import GradientMatcher, PixelAdam, _init_images, pixel_lr
from gradleak.attacks.inversion.regularizers import lazy_weight
from gradleak.attacks.inversion.search import run_guided
from gradleak.config import AttackConfig
from gradleak.errors import ConfigError
from gradleak.models import build_model
from gradleak.threat import ThreatModel, simulate_client

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (3, 8, 8)
NAMES = ["cat", "dog", "truck"]


def _obs(seed=0):
    m = build_model("lenet", SHAPE, 3, seed=seed).train()
    x, y = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(seed)), torch.tensor([1])
    return ThreatModel().observe(m, simulate_client(m, x, y), SHAPE, 3, batch_size=1, class_names=NAMES)


class CountingGuide:
    """A classifier guide that counts its calls."""

    def __init__(self, seed=0):
        from gradleak.vision import SmallCNN

        torch.manual_seed(seed)
        self.inner = build_guide("classifier", aux_classifier=SmallCNN(3, 3, 8, width=4).eval())
        self.name, self.calls = "counting", 0

    def per_image(self, x, targets):
        self.calls += 1
        return self.inner.per_image(x, targets)


def _cfg(iterations=7):
    return InversionConfig(iterations=iterations, regularizers={"tv": 0.05})


# ---- guide_every ---------------------------------------------------------------------------------


def test_lazy_weight_skips_off_steps_and_scales_on_them():
    assert [lazy_weight(0.1, 1, s) for s in range(3)] == [0.1, 0.1, 0.1]
    assert [lazy_weight(0.5, 3, s) for s in range(7)] == [1.5, None, None, 1.5, None, None, 1.5]
    assert lazy_weight(0.5, 3, None) == 0.5  # scoring, outside the optimisation: the plain weight


def test_guide_every_one_is_the_old_loop_bit_for_bit():
    """k = 1 (the default) reproduces, bit for bit, a hand-written loop of the old update rule
    ``total = L_grad + λ_TV TV + λ L_guide`` in both engines."""
    obs, cfg, labels = _obs(), _cfg(), torch.tensor([[1]])
    guide = CountingGuide().inner
    x0 = _init_images((1, *SHAPE), cfg.init, torch.Generator().manual_seed(cfg.seed))

    def reference(batched: bool):
        x = (x0.unsqueeze(0) if batched else x0).clone().requires_grad_(True)
        opt, trace = PixelAdam(x, pixel_lr(obs, cfg), cfg), []
        plain = BatchedMatcher(obs, cfg, labels) if batched else GradientMatcher(obs, cfg, labels[0])
        for _ in range(cfg.iterations):
            if batched:
                m, total, _ = plain.losses(x)
                total = (total + 0.3 * Guidance(guide, 0.3).per_candidate(x, labels)).sum()
            else:
                m, total = plain.matching_loss(x)
                total = total + 0.3 * guide.per_image(x, labels[0]).mean()
            trace.append(m.detach().reshape(-1)[0].item())
            opt.step(total)
        return x.detach().reshape(1, *SHAPE), trace

    for engine, batched in ((invert_batched, True), (invert_sequential, False)):
        for guidance in (Guidance(guide, 0.3), Guidance(guide, 0.3, every=1)):
            out = engine(obs, labels, cfg, guidance).reconstructions[0]
            x_ref, trace = reference(batched)
            assert torch.equal(out.images, x_ref)
            assert [v for _, v in out.history] == [trace[i] for i, _ in out.history]


@pytest.mark.parametrize("engine", [invert_batched, invert_sequential])
def test_guide_every_three_calls_the_guide_on_every_third_step(engine):
    """7 steps with k = 3: the guide runs on steps 0, 3 and 6, plus the final scoring (batched: one
    call; sequential: the final matching loss and the guidance score)."""
    guide = CountingGuide()
    engine(_obs(), torch.tensor([[1]]), _cfg(7), Guidance(guide, 0.3, every=3))
    assert guide.calls == 3 + (1 if engine is invert_batched else 2)
    every_step = CountingGuide()
    engine(_obs(), torch.tensor([[1]]), _cfg(7), Guidance(every_step, 0.3))
    assert every_step.calls == 7 + (1 if engine is invert_batched else 2)


def test_batched_matcher_adds_k_times_the_guide_on_its_steps_only():
    obs, labels = _obs(), torch.tensor([[0], [2]])
    guide = CountingGuide()
    matcher = BatchedMatcher(obs, _cfg(), labels, Guidance(guide, 0.3, every=3), labels)
    x = torch.rand(2, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    for step in range(7):
        matching, total, g = matcher.losses(x, step=step)
        if step % 3:
            assert g is None
            continue
        _, plain_total, _ = BatchedMatcher(obs, _cfg(), labels).losses(x)
        assert torch.allclose(total, plain_total + 0.9 * g, rtol=0, atol=1e-6)
    assert guide.calls == 3


def test_guide_every_batched_equals_sequential():
    obs, labels, cfg = _obs(), torch.arange(3).unsqueeze(1), _cfg(6)
    guidance = Guidance(CountingGuide().inner, 0.5, every=2)
    b = invert_batched(obs, labels, cfg, guidance)
    s = invert_sequential(obs, labels, cfg, guidance)
    assert [r.matching_loss for r in b.reconstructions] == pytest.approx([r.matching_loss for r in s.reconstructions],
                                                                         rel=1e-4)
    assert b.guidance_losses == pytest.approx(s.guidance_losses, rel=1e-4)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_guide_every_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError) as err:
        Guidance(CountingGuide().inner, 0.1, every=bad)
    assert "guide_every" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        AttackConfig.of(guide_every=bad)
    assert "guide_every" in str(err.value) and "\n" not in str(err.value)


def test_guide_every_reaches_run_guided():
    obs, y = _obs(), torch.tensor([1])
    from gradleak.vision import SmallCNN

    torch.manual_seed(0)
    aux = SmallCNN(3, 3, 8, width=4).eval()
    runs = [run_guided(obs, y, _cfg(6), "oracle", weight=0.5, true_labels_for_oracle=y, aux_classifier=aux,
                       guide_every=k) for k in (1, 1, 3)]
    assert torch.equal(runs[0].reconstruction.images, runs[1].reconstruction.images)
    assert not torch.equal(runs[0].reconstruction.images, runs[2].reconstruction.images)
    assert AttackConfig.of(guide_every=4).semantic.guide_every == 4


# ---- clip_input_size -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """A tiny random CLIP (32 px input, 8 px patches) written and loaded offline like a real one."""
    pytest.importorskip("transformers")
    from gradleak.vision import load_clip
    from gradleak.vision.clip import save_random_clip

    folder = save_random_clip(
        tmp_path_factory.mktemp("small_clip"), projection_dim=16,
        text=dict(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=32),
        vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2))
    return load_clip(str(folder), local_files_only=True)


def test_smaller_clip_input_gives_features_of_the_same_shape(small_clip):
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    native = small_clip.encode_images(x)
    assert torch.equal(small_clip.encode_images(x, 32), native)  # its own size: the default path
    assert small_clip.preprocess(x, 16).shape == (3, 3, 16, 16)
    small = small_clip.encode_images(x, 16)
    assert small.shape == native.shape == (3, 16)
    assert torch.allclose(small.norm(dim=-1), torch.ones(3)) and not torch.allclose(small, native, atol=1e-3)


def test_clip_guide_at_a_smaller_input_reaches_pixels_in_a_search(small_clip):
    guide = build_guide("clip", clip=small_clip, class_names=NAMES, input_size=16)
    x = torch.rand(2, *SHAPE, requires_grad=True)
    loss = guide.per_image(x, torch.tensor([0, 2]))
    text = small_clip.class_text_embeddings(NAMES, "image of a {c}")[[0, 2]]
    assert torch.allclose(loss, 1 - (small_clip.encode_images(x, 16) * text).sum(-1), atol=1e-6)
    loss.sum().backward()
    assert x.grad.abs().sum() > 0
    out = run_guided(_obs(), None, _cfg(2), "search", "clip", 0.5, clip_model=small_clip, clip_input_size=16,
                     guide_every=2)
    assert len(out.candidates) == 3 and all(c.guidance_loss is not None for c in out.candidates)


def test_clip_input_size_errors_are_one_line(small_clip):
    for bad, words in ((12, "multiple of the CLIP patch size 8; got 12: use 8 or 16"), (4, "use 8 or more"),
                       (20.0, "integer")):
        with pytest.raises(ConfigError) as err:
            build_guide("clip", clip=small_clip, class_names=NAMES, input_size=bad)
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        AttackConfig.of(clip_input_size=0)
    assert "clip_input_size" in str(err.value) and "\n" not in str(err.value)
    assert AttackConfig.of(clip_input_size=160).semantic.clip_input_size == 160


def test_clip_input_size_needs_interpolated_position_embeddings(small_clip):
    """A transformers whose CLIP cannot interpolate its position embeddings: a smaller input is
    refused (no hand-made resize of the embeddings); its own size still works."""
    import copy

    from gradleak.vision import ClipBackend

    class NoInterpolation(type(small_clip.model)):
        def get_image_features(self, pixel_values, **kwargs):
            return super().get_image_features(pixel_values=pixel_values)

    model = copy.deepcopy(small_clip.model)
    model.__class__ = NoInterpolation
    old = ClipBackend(model, small_clip.tokenizer)
    assert old.check_input_size(32) is None and old.check_input_size(None) is None
    with pytest.raises(ConfigError, match="interpolate_pos_encoding") as err:
        old.check_input_size(16)
    assert "\n" not in str(err.value)
