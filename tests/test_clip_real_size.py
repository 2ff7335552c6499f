"""A CLIP of the real ViT-B/32 size (random weights) loads offline through gradleak's loader and one
guided inversion step runs on CIFAR-size images (benchmarks/clip_real_size.py times it)."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
BUDGET_S = 60.0  # the whole test; skipped (not failed) where one step would not fit
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def b32_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from gradleak.vision.clip import save_random_clip

    started = time.perf_counter()
    folder = save_random_clip(tmp_path_factory.mktemp("clip_b32"))
    return folder, time.perf_counter() - started


def _guided_step(folder, device: str, started: float):
    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.search import run_guided
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client
    from gradleak.vision import load_clip

    clip = load_clip(str(folder), device=device, local_files_only=True)  # offline: the folder alone
    assert clip.image_size == 224 and clip.embed_dim == 512
    assert sum(p.numel() for p in clip.model.parameters()) > 140e6  # ViT-B/32 + text tower ≈ 151 M
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # one image-tower pass, to tell whether a guided step fits the budget
        t = time.perf_counter()
        clip.encode_images(x)
        forward = time.perf_counter() - t
    if time.perf_counter() - started + 6 * forward > BUDGET_S:  # fwd + bwd, twice (step and final score)
        pytest.skip(f"a ViT-B/32 step would exceed the {BUDGET_S:.0f} s budget here (forward {forward:.1f} s); "
                    "benchmarks/clip_real_size.py runs it")
    model = build_model("lenet", (3, 32, 32), 10, seed=0).to(device)
    y = torch.tensor([3])
    update = simulate_client(model, x.to(device), y.to(device), mean=MEAN, std=STD)
    obs = ThreatModel(knows_labels=True).observe(model, update, (3, 32, 32), 10, MEAN, STD, 1, y,
                                                 class_names=CLASSES)
    out = run_guided(obs, y, preset("ig", iterations=1), "oracle", "clip", 0.1, true_labels_for_oracle=y,
                     clip_model=clip)
    return clip, out


def test_real_size_clip_loads_offline_and_a_guided_step_runs(b32_folder, monkeypatch):
    folder, build_s = b32_folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip, out = _guided_step(folder, "cpu", time.perf_counter() - build_s)
    rec = out.reconstruction
    assert rec.images.shape == (1, 3, 32, 32) and torch.isfinite(rec.images).all()
    assert out.guidance_labels.tolist() == [3]
    assert out.candidates[0].guidance_loss is not None and 0.0 <= out.candidates[0].guidance_loss <= 2.0
    assert len(clip._text_cache) == 1  # the class prompts were embedded once, by the guide


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_size_clip_guided_step_on_cuda(b32_folder, monkeypatch):
    folder, build_s = b32_folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip, out = _guided_step(folder, "cuda", time.perf_counter() - build_s)
    assert clip.device.type == "cuda" and torch.isfinite(out.reconstruction.images).all()
