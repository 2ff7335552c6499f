"""The command line: outputs, YAML overrides, and one-line errors that lose nothing."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradleak.cli import main

REQUIRED_KEYS = {"true_labels", "recovered_labels", "label_accuracy", "label_random_baseline", "ssim", "psnr",
                 "assignment", "iterations", "seconds", "seconds_per_iteration", "config"}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_attack_writes_result_and_grid(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gradleak", "attack", "--iterations", "300", "--tv", "0", "--batch-size", "2",
         "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert REQUIRED_KEYS <= set(result)
    assert result["iterations"] == 300 and result["config"]["batch_size"] == 2
    assert result["label_accuracy"] == 1.0  # labels were recovered from the gradient, not granted
    assert result["ssim"] > 0.8
    assert sorted(result["assignment"]) == [0, 1]
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SSIM" in proc.stdout


def test_yaml_config_is_overridden_by_flags(tmp_path, capsys):
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("batch_size: 3\niterations: 50\nseed: 4\n")
    code, _, err = run_cli(["attack", "--config", str(cfg), "--iterations", "5", "-q", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["config"]["batch_size"] == 3 and result["config"]["seed"] == 4 and result["iterations"] == 5


def _malicious_cifar(folder: Path, marker: Path):
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))


def test_bad_inputs_end_with_one_line_and_keep_earlier_results(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["attack", "--iterations", "3", "-q", "--out", str(out),
                            "--save-update", str(tmp_path / "u.pt")], capsys)
    assert code == 0, err
    good = (out / "result.json").read_text()

    update = torch.load(tmp_path / "u.pt", weights_only=True)
    update["tensors"][0] = update["tensors"][0] * float("nan")
    torch.save(update, tmp_path / "nan.pt")
    marker = tmp_path / "pwned"
    _malicious_cifar(tmp_path / "evil", marker)

    cases = [
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "missing")], "does not exist"),
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "evil")], "refusing to unpickle"),
        (["--batch-size", "100000"], "larger than"),
        (["--observed-update", str(tmp_path / "nan.pt")], "NaN or inf"),
        (["--model", "convnet", "--width", "2", "--observed-update", str(tmp_path / "u.pt")], "does not match"),
        (["--observed-update", str(tmp_path / "absent.pt")], "not found"),
        (["--attack", "ig", "--labels", "nonsense"], "unknown"),
        (["--step-size", "-1"], "step size must be a positive number"),
        (["--step-size", "0"], "step size must be a positive number"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(["attack", "-q", "--iterations", "2", "--out", str(out)] + extra, capsys)
        assert code == 2, (extra, err)
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (extra, err)
    assert not marker.exists()
    assert (out / "result.json").read_text() == good


def test_replayed_update_gives_the_same_attack(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(["attack", "-q", "--iterations", "20", "--out", str(a), "--save-update", str(tmp_path / "u.pt")], capsys)
    run_cli(["attack", "-q", "--iterations", "20", "--out", str(b), "--observed-update", str(tmp_path / "u.pt")], capsys)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["recovered_labels"] == rb["recovered_labels"]
    assert ra["matching_loss"] == pytest.approx(rb["matching_loss"], rel=1e-5, abs=1e-7)


def test_tv_prior_is_off_by_default_only_for_tiny_images():
    from gradleak.pipeline import AttackConfig, inversion_config

    assert "tv" not in inversion_config(AttackConfig(), (1, 8, 8)).regularizers
    assert inversion_config(AttackConfig(), (3, 32, 32)).regularizers["tv"] > 0
    assert inversion_config(AttackConfig(tv=0.3), (1, 8, 8)).regularizers["tv"] == 0.3
