"""``gradleak labels``: rows per (method, batch size, trial), table, CSV and plot."""

import csv
import json
import re

import pytest

from gradleak.studies.label_sweep import LabelSweepConfig, run_label_sweep, summarise
from gradleak.cli import main
from gradleak.errors import ConfigError


def test_label_sweep_rows_and_summary():
    cfg = LabelSweepConfig.of(dataset="digits", model="lenet", batch_sizes=[1, 8], trials=3, methods=["idlg", "ilrg", "llg"])
    rows = run_label_sweep(cfg, progress=False)
    assert len(rows) == 2 * 3 * 3
    idlg_b8 = [r for r in rows if r["method"] == "idlg" and r["batch_size"] == 8]
    assert all(r["accuracy"] is None and "single label" in r["error"] for r in idlg_b8)  # iDLG needs B = 1
    summary = {(s["method"], s["batch_size"]): s for s in summarise(rows)}
    assert summary[("idlg", 1)]["accuracy"] == 1.0 and summary[("ilrg", 8)]["accuracy"] >= 0.95
    assert summary[("ilrg", 1)]["random_baseline"] == pytest.approx(0.1)


def test_summary_standard_error_over_trials():
    def row(method, trial, accuracy):
        return {"method": method, "batch_size": 4, "trial": trial, "accuracy": accuracy,
                "exact": accuracy == 1.0, "random_baseline": 0.3}

    rows = [row("a", 0, 1.0), row("a", 1, 0.5), row("a", 2, 0.75), row("a", 3, None), row("b", 0, 0.25)]
    summary = {s["method"]: s for s in summarise(rows)}
    assert summary["a"]["trials"] == 3 and summary["a"]["accuracy"] == pytest.approx(0.75)
    assert summary["a"]["accuracy_se"] == pytest.approx(0.25 / 3**0.5)  # s = 0.25 over 3 trials
    assert summary["a"]["exact"] == pytest.approx(1 / 3)
    assert summary["b"]["accuracy_se"] is None  # one trial has no spread to report


def test_trials_take_turns_over_model_initialisations(monkeypatch):
    from gradleak.attacks.labels import recover_labels
    from gradleak.attacks.labels.base import LABEL_STRATEGIES as strategies
    from gradleak.attacks.labels.base import model_fingerprint
    from gradleak.data import load_dataset
    from gradleak.models import build_model

    seen = []

    def spy(obs, aux=None):
        seen.append(model_fingerprint(obs.model))
        return recover_labels(obs, "ilrg", aux)

    monkeypatch.setitem(strategies._items, "spy", spy)
    common = dict(dataset="digits", model="lenet", batch_sizes=[4], methods=["spy"], seed=7, client_mode="train")
    rows = run_label_sweep(LabelSweepConfig.of(trials=5, inits=3, **common), progress=False)
    assert [r["model_seed"] for r in rows] == [7, 8, 9, 7, 8]
    assert seen[0] == seen[3] and seen[1] == seen[4] and len(set(seen[:3])) == 3
    digits = load_dataset("digits", "test")
    assert seen[1] == model_fingerprint(build_model("lenet", digits.input_shape, digits.num_classes, seed=8))
    seen.clear()
    single = run_label_sweep(LabelSweepConfig.of(trials=2, **common), progress=False)
    assert [r["model_seed"] for r in single] == [7, 7] and seen[0] == model_fingerprint(build_model(
        "lenet", digits.input_shape, digits.num_classes, seed=7))
    # the batches do not depend on the inits: trial 0 attacks the same batch with the same model
    assert single[0]["random_baseline"] == rows[0]["random_baseline"]
    assert single[1]["random_baseline"] == rows[1]["random_baseline"]


def test_labels_command_writes_csv_and_plot(tmp_path, capsys):
    main(["labels", "--dataset", "digits", "--model", "lenet", "--batch-sizes", "2", "4", "--trials", "2",
          "--methods", "ilrg,llg", "--client-mode", "train", "-q", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ilrg" in out and "random" in out
    assert out.startswith("lenet (dlg init, untrained, train mode) on digits test, fedsgd, 2 trials per batch size, "
                          "seed 0\n")
    assert re.search(r"^   4 +0\.\d{3} +1\.000±0\.000/1\.00 ", out, re.M)  # ilrg is exact on digits at B = 4
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2
    assert {"method", "batch_size", "trial", "model_seed", "accuracy", "exact", "random_baseline"} <= set(rows[0])
    assert {r["model_seed"] for r in rows} == {"0"}
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((tmp_path / "config.json").read_text())
    assert settings["attack"]["model"] == "lenet" and settings["attack"]["init"] is None
    assert settings["batch_sizes"] == [2, 4]


def test_the_sweep_attacks_the_initialisation_it_is_given():
    """iLRG's own setting (Ma et al. 2023): with PyTorch's init an untrained LeNet predicts nearly
    uniformly and the paper's estimate is exact at B = 64 on digits; with DLG's init (the default)
    it recovered 1 of these 4 batches exactly (measured: 0.980 mean accuracy)."""
    common = dict(dataset="digits", model="lenet", batch_sizes=[64], trials=4, methods=["ilrg"])
    plain = summarise(run_label_sweep(LabelSweepConfig.of(init="pytorch", **common), progress=False))[0]
    dlg = summarise(run_label_sweep(LabelSweepConfig.of(**common), progress=False))[0]
    assert plain["exact"] == 1.0 and dlg["exact"] < 1.0


def test_unknown_method_and_oversized_batch_are_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        run_label_sweep(LabelSweepConfig.of(dataset="digits", model="lenet", batch_sizes=[1], trials=1, methods=["x"]), False)
    with pytest.raises(ConfigError, match="do not fit"):
        run_label_sweep(LabelSweepConfig.of(dataset="digits", model="lenet", batch_sizes=[10_000], trials=1), False)


@pytest.mark.parametrize("stop, raised", [(KeyboardInterrupt, SystemExit), (RuntimeError, RuntimeError)])
def test_a_stopped_labels_sweep_keeps_the_rows_it_measured(tmp_path, capsys, monkeypatch, stop, raised):
    import gradleak.studies.label_sweep as sweep

    real = sweep.iter_label_sweep
    on_disk_before_the_stop = []

    def stops_after_two_batches(cfg, progress=True, done=frozenset()):
        for i, batch in enumerate(real(cfg, progress, done)):
            if i == 2:  # rows are on disk before the stop: a killed process keeps them too
                on_disk_before_the_stop.append((tmp_path / "labels.csv").read_text().count("\n") - 1)
                raise stop()
            yield batch

    monkeypatch.setattr(sweep, "iter_label_sweep", stops_after_two_batches)
    with pytest.raises(raised) as exc_info:
        main(["labels", "--dataset", "digits", "--model", "lenet", "--batch-sizes", "2", "4", "--trials", "2",
              "--methods", "ilrg,llg,yin", "-q", "--out", str(tmp_path)])
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["batch_size"], r["trial"]) for r in rows] == [
        (m, "2", t) for t in ("0", "1") for m in ("ilrg", "llg", "yin")]
    assert all(r["accuracy"] not in ("", None) for r in rows)
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert on_disk_before_the_stop == [6]
    told = capsys.readouterr().err if stop is KeyboardInterrupt else " ".join(exc_info.value.__notes__)
    assert f"stopped; the 6 rows measured so far are in {tmp_path}/labels.csv" in told


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], r"--trials.*0 is not in the range x>=1"),
    (["--batch-sizes", "0"], r"batch sizes must be positive integers, got \[0\]"),
    (["--batch-sizes=-2"], r"got \[-2\]"),
    (["--update", "fedavg", "--local-steps", "0"], "option local_steps must be at least 1, got 0"),
    (["--update", "fedavg", "--local-lr", "-0.1"], "option local_lr must be greater than 0, got -0.1"),
    (["--trained-steps", "-5"], "option trained_steps must be at least 0, got -5"),
    (["--width", "0"], "option width must be at least 1, got 0"),
    (["--inits", "0"], r"--inits.*0 is not in the range x>=1"),
])
def test_labels_command_refuses_bad_numbers_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["labels", "--dataset", "digits", "--model", "lenet", "--trials", "1", "-q", "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "labels.csv").exists()


def test_the_default_meets_the_target_on_real_cifar10(cifar10_dir):
    """#3's target on the real CIFAR-10 subset, in iLRG's setting (Ma et al. 2023: their LeNet5
    keeps PyTorch's init in its linear layers, so an untrained model predicts nearly uniformly):
    the default strategy recovers every batch exactly up to B = 128 (700 of 700 batches over seeds
    0–4 in ``gradleak labels --init pytorch --trials 100 --inits 5``). Under DLG's ±0.5 init (the
    LeNet default) it stays above the issue's 0.95 at B = 16 (0.969 on these ten batches, 0.978 over 100)."""
    common = dict(dataset="cifar10", data_dir=str(cifar10_dir), model="lenet", methods=["ilrg-dummy"], inits=5,
                  client_mode="train")
    plain = summarise(run_label_sweep(LabelSweepConfig.of(init="pytorch", batch_sizes=[16, 64, 128], trials=10, **common),
                                      progress=False))
    assert [row["exact"] for row in plain] == [1.0, 1.0, 1.0]
    dlg = summarise(run_label_sweep(LabelSweepConfig.of(batch_sizes=[16], trials=10, **common), progress=False))[0]
    assert dlg["accuracy"] >= 0.95


def test_rerunning_labels_resumes_and_another_sweep_is_refused(tmp_path, capsys, monkeypatch):
    import gradleak.attacks.labels as labels_module
    import gradleak.studies.label_sweep as sweep

    args = ["labels", "--dataset", "digits", "--model", "lenet", "--batch-sizes", "2", "4", "--methods", "ilrg,llg",
            "--trials", "2", "-q"]
    main(args + ["--out", str(tmp_path / "whole")])
    whole = (tmp_path / "whole" / "labels.csv").read_text()
    # a sweep stopped after two batches, then run again, ends with the rows of one uninterrupted sweep
    real = sweep.iter_label_sweep

    def stops_after_two_batches(cfg, progress=True, done=frozenset()):
        for i, batch in enumerate(real(cfg, progress, done)):
            if i == 2:
                raise RuntimeError("killed")
            yield batch

    monkeypatch.setattr(sweep, "iter_label_sweep", stops_after_two_batches)
    with pytest.raises(RuntimeError):
        main(args + ["--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(sweep, "iter_label_sweep", real)
    measured = []

    def counting(obs, method, aux=None):
        measured.append(method)
        return labels_module.LABEL_STRATEGIES.get(method)(obs, aux)

    monkeypatch.setattr(labels_module, "recover_labels", counting)
    main(args + ["--out", str(tmp_path / "resumed")])
    assert len(measured) == 2 * 2  # the two batches left, two methods each

    def cells(text):  # every column but the timing
        return [line.rsplit(",", 2)[0] for line in text.splitlines()]

    assert cells((tmp_path / "resumed" / "labels.csv").read_text()) == cells(whole)
    # once complete, the same sweep measures nothing; a sweep with other settings is refused in one line
    measured.clear()
    main(args + ["--out", str(tmp_path / "whole")])
    assert measured == [] and (tmp_path / "whole" / "labels.csv").read_text() == whole
    with pytest.raises(SystemExit) as stop:
        main(args + ["--seed", "1", "--out", str(tmp_path / "whole")])
    assert stop.value.code == 2 and "not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "whole" / "labels.csv").read_text() == whole
