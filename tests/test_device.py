"""--device (auto | cpu | cuda) and --precision auto: resolution, recording, CPU equivalence; the
``gpu`` tests compare a CUDA attack with the CPU one (skipped without CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradleak.config import AttackConfig
from gradleak.errors import ConfigError
from gradleak.runtime import native_bf16, resolve_device, resolve_precision
from gradleak.studies.attack import run_attack

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")
TINY = dict(dataset="digits", batch_size=2, iterations=12, seed=3)


def _run(**options):
    return run_attack(AttackConfig.of(**{**TINY, **options}), progress=False)


def test_device_cpu_equals_the_default_and_is_recorded(tmp_path):
    cpu = run_attack(AttackConfig.of(**TINY, device="cpu"), out_dir=tmp_path, progress=False)
    default = _run()
    assert cpu.summary["device"] == "cpu"
    assert default.summary["device"] == str(resolve_device("auto"))
    if not CUDA:  # auto is the CPU here: bit for bit the same run
        assert torch.equal(cpu.reconstruction, default.reconstruction)
        assert cpu.summary["ssim"] == default.summary["ssim"]
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["device"] == "cpu" and written["config"]["device"] == "cpu"


def test_precision_auto_resolves_to_a_concrete_precision_and_records_it(tmp_path):
    result = run_attack(AttackConfig.of(**TINY, device="cpu", precision="auto"), out_dir=tmp_path, progress=False)
    expected = "bf16" if native_bf16("cpu") else "fp32"
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["config"]["precision"] == "auto"
    assert written["precision_resolved"] == written["inversion"]["precision"] == expected
    same = _run(device="cpu", precision=expected)  # auto is exactly the precision it resolved to
    assert torch.equal(result.reconstruction, same.reconstruction)


def test_native_bf16_is_detected_from_the_cpu_flags(monkeypatch):
    import gradleak.runtime as runtime

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    for flags, native in [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                          ({"fp", "asimd", "bf16"}, True)]:
        monkeypatch.setattr(runtime, "_cpu_flags", lambda flags=flags: flags)
        assert native_bf16("cpu") is native
        assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_device_and_precision_are_one_line_errors():
    with pytest.raises(ConfigError, match="device"):
        AttackConfig.of(device="tpu")
    with pytest.raises(ConfigError, match="precision"):
        AttackConfig.of(precision="fp8")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu")


@pytest.mark.skipif(CUDA, reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_one_line_error(cli, tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        run_attack(AttackConfig.of(**TINY, device="cuda"), progress=False)
    code, out, err = cli(["attack", "--device", "cuda", "--iterations", "2", "--out", str(tmp_path)])
    lines = [line for line in err.strip().splitlines() if line]
    assert code != 0 and len(lines) == 1 and "no CUDA device" in lines[0]
    assert not (tmp_path / "result.json").exists()


def test_observation_moves_with_its_update():
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client

    model = build_model("lenet", (1, 8, 8), 10, seed=0)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    obs = ThreatModel(knows_labels=True).observe(model, simulate_client(model, x, y), (1, 8, 8), 10, labels=y)
    assert obs.device == torch.device("cpu") and obs.to("cpu") is obs and obs.update.to("cpu") is obs.update


def test_gpu_check_exits_cleanly_without_cuda():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if not CUDA:
        assert "no CUDA device" in done.stdout
    assert "pytest -m gpu" in done.stdout  # the plan it would run


# ---- on a GPU (benchmarks/gpu_check.py runs these) -----------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("options", [dict(), dict(precision="bf16"),
                                     dict(guidance="oracle", guide="classifier", classifier_steps=30)])
def test_cuda_attack_matches_cpu(options):
    cpu, gpu = _run(device="cpu", **options), _run(device="cuda", **options)
    assert gpu.summary["device"].startswith("cuda")
    assert gpu.reconstruction.device.type == "cpu"  # brought back for the evaluator and the files
    assert gpu.summary["label_accuracy"] == cpu.summary["label_accuracy"]
    # Signed Adam amplifies float differences over iterations: compare what the attack achieved.
    assert abs(gpu.summary["psnr"] - cpu.summary["psnr"]) < 1.0
    assert abs(gpu.summary["ssim"] - cpu.summary["ssim"]) < 0.05


@pytest.mark.gpu
@needs_cuda
def test_cuda_matching_loss_matches_cpu():
    from gradleak.attacks.inversion import InversionConfig
    from gradleak.attacks.inversion.invert import GradientMatcher
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client

    model = build_model("convnet", (3, 32, 32), 10, width=16, seed=0).train()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    obs = ThreatModel(knows_labels=True).observe(model, simulate_client(model, x, y), (3, 32, 32), 10, labels=y)
    dummy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    values = {}
    for device in ("cpu", "cuda"):
        o = obs.to(device)
        m, _ = GradientMatcher(o, InversionConfig(), y).matching_loss(dummy.to(device), create_graph=False)
        values[device] = float(m)
    assert values["cuda"] == pytest.approx(values["cpu"], rel=1e-4, abs=1e-6)
