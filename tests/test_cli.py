"""The command line: outputs, YAML overrides, and one-line errors that lose nothing."""

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


REQUIRED_KEYS = {"true_labels", "recovered_labels", "label_accuracy", "label_random_baseline", "ssim", "psnr",
                 "assignment", "iterations", "seconds", "seconds_per_iteration", "config"}


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


def test_yaml_config_is_overridden_by_flags(tmp_path, cli):
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("batch_size: 3\niterations: 50\nseed: 4\n")
    code, _, err = cli(["attack", "--config", str(cfg), "--iterations", "5", "-q", "--out", str(tmp_path / "o")])
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["config"]["batch_size"] == 3 and result["config"]["seed"] == 4 and result["iterations"] == 5
    nested = tmp_path / "nested.yaml"
    nested.write_text("data: {batch_size: 3}\ninversion: {iterations: 50}\nrun: {seed: 4}\n")
    code, _, err = cli(["attack", "--config", str(nested), "--iterations", "5", "-q", "--out", str(tmp_path / "n")])
    assert code == 0, err
    assert json.loads((tmp_path / "n" / "result.json").read_text())["config"] == result["config"]


def _malicious_cifar(folder: Path, marker: Path):
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))


def _edit_update(src: Path, dst: Path, change) -> None:
    """Copy a recorded update with its tensors changed by ``change(name, tensor)`` (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: change(k, fh.get_tensor(k)) for k in fh.keys()}
    save_file(tensors, str(dst), metadata=meta)


def _edit_meta(src: Path, dst: Path, **changes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["gradleak"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(dst), metadata={"gradleak": json.dumps({**meta, **changes})})


def test_bad_inputs_end_with_one_line_and_keep_earlier_results(tmp_path, cli):
    out = tmp_path / "run"
    u = tmp_path / "u.safetensors"
    code, _, err = cli(["attack", "--iterations", "3", "-q", "--out", str(out), "--save-update", str(u)])
    assert code == 0, err
    good = (out / "result.json").read_text()

    _edit_update(u, tmp_path / "nan.safetensors", lambda k, t: t * float("nan") if k == "update.0" else t)
    _edit_meta(u, tmp_path / "lr0.safetensors", kind="fedavg", lr=0.0)
    (tmp_path / "u.pt").write_bytes(pickle.dumps({"tensors": [1, 2]}))
    marker = tmp_path / "pwned"
    _malicious_cifar(tmp_path / "evil", marker)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    yaml_cases = {"no": "knows_labels: \"no\"\n", "str50": "iterations: \"50\"\n", "abc": "seed: abc\n",
                  "high": "tv: high\n", "half": "restarts: 1.5\n", "typo": "iteratoins: 5\n",
                  "nested": "inversion: {iterations: 0}\n"}
    for name, text in yaml_cases.items():
        (tmp_path / f"{name}.yaml").write_text(text)

    cases = [
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "missing")], "does not exist"),
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "evil")], "refusing to unpickle"),
        (["--batch-size", "100000"], "larger than"),
        (["--observed-update", str(tmp_path / "nan.safetensors")], "NaN or inf"),
        (["--observed-update", str(tmp_path / "lr0.safetensors")], "positive local learning rate"),
        (["--model", "convnet", "--width", "2", "--observed-update", str(u)], "recorded against other weights"),
        (["--seed", "1", "--observed-update", str(u)], "recorded against other weights"),
        (["--observed-update", str(tmp_path / "absent.safetensors")], "not found"),
        (["--observed-update", str(tmp_path / "u.pt")], "not a gradleak update file"),
        (["--attack", "ig", "--labels", "nonsense"], "Invalid value for '--labels'"),
        (["--step-size", "-1"], "option step_size must be greater than 0"),
        (["--step-size", "0"], "option step_size must be greater than 0"),
        (["--tv", "-1"], "option tv must be at least 0"),
        (["--iterations", "0"], "option iterations must be at least 1"),
        (["--local-lr", "0", "--update", "fedavg"], "option local_lr must be greater than 0"),
        (["--labeler", "clip", "--clip-model", str(tmp_path / "nonexistent")], "CLIP model folder"),
        (["--labeler", "classifier", "--class-names", str(tmp_path / "empty.txt")], "is empty"),
        (["--config", str(tmp_path / "no.yaml")], "option knows_labels must be true/false, got 'no'"),
        (["--config", str(tmp_path / "str50.yaml")], "option iterations must be an integer or null, got '50'"),
        (["--config", str(tmp_path / "abc.yaml")], "option seed must be an integer, got 'abc'"),
        (["--config", str(tmp_path / "high.yaml")], "option tv must be a number or null, got 'high'"),
        (["--config", str(tmp_path / "half.yaml")], "option restarts must be an integer, got 1.5"),
        (["--config", str(tmp_path / "typo.yaml")], "unknown option 'iteratoins' (did you mean iterations?)"),
        (["--config", str(tmp_path / "nested.yaml")], "option iterations must be at least 1"),
    ]
    for extra, message in cases:
        started = time.perf_counter()
        few = [] if extra[0] == "--config" else ["--iterations", "2"]  # a typed flag would win over the file
        code, _, err = cli(["attack", "-q", *few, "--out", str(out), "--overwrite"] + extra)
        assert code == 2, (extra, err)
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (extra, err)
        assert time.perf_counter() - started < 20, extra  # rejected before any expensive work
        assert (out / "result.json").read_text() == good, extra
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "result.json"]
    assert not list(tmp_path.glob(".run.partial-*"))  # a failed run leaves no staging folder behind


def test_an_output_folder_is_refused_or_replaced_never_mixed(tmp_path, cli):
    out = tmp_path / "run"
    assert cli(["attack", "-q", "--iterations", "2", "--labeler", "classifier", "--classifier-steps", "2",
                    "--out", str(out)])[0] == 0
    assert (out / "probabilities.png").exists()
    code, _, err = cli(["attack", "-q", "--iterations", "2", "--out", str(out)])
    assert code == 2 and "not empty; pass --overwrite" in err
    assert cli(["attack", "-q", "--iterations", "2", "--out", str(out), "--overwrite"])[0] == 0
    assert not (out / "probabilities.png").exists()  # no stale file from the earlier run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, _, err = cli(["attack", "-q", "--iterations", "2", "--out", str(other), "--overwrite"])
    assert code == 2 and "did not write" in err and (other / "notes.txt").read_text() == "keep me"


def test_replayed_update_gives_the_same_attack(tmp_path, cli):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    u, t = tmp_path / "u.safetensors", tmp_path / "t.safetensors"
    cli(["attack", "-q", "--iterations", "20", "--out", str(a), "--save-update", str(u)])
    cli(["attack", "-q", "--iterations", "20", "--out", str(tmp_path / "a2"), "--save-update", str(t),
             "--save-truth"])
    code, out, _ = cli(["attack", "-q", "--iterations", "20", "--out", str(b), "--observed-update", str(u),
                            "--seed", "0"])
    assert code == 0 and "nothing scored" in out
    assert cli(["attack", "-q", "--iterations", "20", "--out", str(c), "--observed-update", str(t)])[0] == 0
    ra, rb, rc = (json.loads((d / "result.json").read_text()) for d in (a, b, c))
    assert ra["recovered_labels"] == rb["recovered_labels"] == rc["recovered_labels"]
    assert ra["matching_loss"] == pytest.approx(rb["matching_loss"], rel=1e-5, abs=1e-7)
    # without ground truth nothing is scored against a re-sampled batch; with it, the same scores
    assert rb["ssim"] is None and rb["label_accuracy"] is None and rb["true_labels"] is None
    assert rc["ssim"] == pytest.approx(ra["ssim"]) and rc["true_labels"] == ra["true_labels"]


def test_a_degenerate_recorded_update_is_warned_about(tmp_path, cli):
    u, z = tmp_path / "u.safetensors", tmp_path / "zero.safetensors"
    cli(["attack", "-q", "--iterations", "2", "--out", str(tmp_path / "a"), "--save-update", str(u)])
    _edit_update(u, z, lambda k, t: torch.zeros_like(t) if k.startswith("update.") else t)
    with pytest.warns(UserWarning, match="all zeros"):
        cli(["attack", "-q", "--iterations", "2", "--out", str(tmp_path / "b"), "--observed-update", str(z)])


def test_tv_prior_is_off_by_default_only_for_tiny_images():
    from gradleak.config import AttackConfig
    from gradleak.studies.attack import inversion_config

    assert "tv" not in inversion_config(AttackConfig(), (1, 8, 8)).regularizers
    assert inversion_config(AttackConfig(), (3, 32, 32)).regularizers["tv"] > 0
    assert inversion_config(AttackConfig.of(tv=0.3), (1, 8, 8)).regularizers["tv"] == 0.3
