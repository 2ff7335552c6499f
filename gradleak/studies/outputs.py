"""A study's output folder and files: refuse to mix runs, write everything atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ConfigError
from ..io import write_json

# Files by which a folder is recognised as gradleak's output (so --overwrite never empties another folder).
OUTPUT_MARKERS = ("result.json", "rounds.json", "labels.csv", "config.json", "results.sqlite", "leaks.jsonl")


def check_output(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that holds earlier results (unless ``overwrite``) or other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out} is not empty; pass --overwrite to replace it, or choose another "
                              "with -o")
        if not any((out / m).exists() for m in OUTPUT_MARKERS):
            raise ConfigError(f"output folder {out} holds files gradleak did not write; choose another with -o")
    return out


def prepare_output(out: str | Path, overwrite: bool = False) -> Path:
    """An empty folder to write a study's files to, after :func:`check_output`: with ``overwrite``
    the earlier results are removed now, so old and new files never mix."""
    out = check_output(out, overwrite)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def replacing_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh staging folder beside ``out`` to write into; it replaces ``out`` only when the block
    succeeds, so a failed run neither loses earlier results nor leaves half of new ones."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_outputs(result, out: Path) -> None:
    """``grid.png`` (originals above their matched reconstructions), ``probabilities.png`` when a
    labeller ran, and ``result.json``."""
    from ..viz import save_grid, save_probability_table

    s = result.summary
    names = result.class_names
    if result.originals is None:  # a recorded update without ground truth: reconstructions only
        bottom = [names[label] for label in s["recovered_labels"]]
        save_grid(out / "grid.png", [result.reconstruction], [bottom], row_titles=["reconstruction"])
    else:
        perm = s["assignment"]
        top = [f"{names[t]}" for t in s["true_labels"]]
        # Reconstruction i was matched to original perm[i]; show it under that original.
        recon = torch.empty_like(result.reconstruction)
        bottom = [""] * len(perm)
        for i, j in enumerate(perm):
            recon[j] = result.reconstruction[i]
            bottom[j] = f"{names[s['recovered_labels'][i]]} {s['per_image_ssim'][i]:.2f}"
        save_grid(out / "grid.png", [result.originals, recon], [top, bottom],
                  row_titles=["original", "reconstruction"])
    if result.semantic is not None:
        save_probability_table(out / "probabilities.png", result.semantic.tables[0], result.semantic.class_names)
    write_json(out / "result.json", s)
