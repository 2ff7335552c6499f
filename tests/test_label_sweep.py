"""``gradleak labels``: rows per (method, batch size, trial), table, CSV and plot."""

import csv

import pytest

from gradleak.attacks.labels.sweep import LabelSweepConfig, run_label_sweep, summarise
from gradleak.cli import main
from gradleak.errors import ConfigError


def test_label_sweep_rows_and_summary():
    cfg = LabelSweepConfig(dataset="digits", model="lenet", batch_sizes=[1, 8], trials=3, methods=["idlg", "ilrg", "llg"])
    rows = run_label_sweep(cfg, progress=False)
    assert len(rows) == 2 * 3 * 3
    idlg_b8 = [r for r in rows if r["method"] == "idlg" and r["batch_size"] == 8]
    assert all(r["accuracy"] is None and "single label" in r["error"] for r in idlg_b8)  # iDLG needs B = 1
    summary = {(s["method"], s["batch_size"]): s for s in summarise(rows)}
    assert summary[("idlg", 1)]["accuracy"] == 1.0 and summary[("ilrg", 8)]["accuracy"] >= 0.95
    assert summary[("ilrg", 1)]["random_baseline"] == pytest.approx(0.1)


def test_labels_command_writes_csv_and_plot(tmp_path, capsys):
    main(["labels", "--dataset", "digits", "--model", "lenet", "--batch-sizes", "2", "4", "--trials", "2",
          "--methods", "ilrg,llg", "-q", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ilrg" in out and "random" in out
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2
    assert {"method", "batch_size", "trial", "accuracy", "exact", "random_baseline"} <= set(rows[0])
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_method_and_oversized_batch_are_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        run_label_sweep(LabelSweepConfig(dataset="digits", model="lenet", batch_sizes=[1], trials=1, methods=["x"]), False)
    with pytest.raises(ConfigError, match="do not fit"):
        run_label_sweep(LabelSweepConfig(dataset="digits", model="lenet", batch_sizes=[10_000], trials=1), False)
