"""Options and data loading shared by the label benchmarks (``label_recovery``, ``label_ceiling``)."""

from __future__ import annotations

import argparse
import sys

import torch

from gradleak.data import load_dataset
from gradleak.errors import GradleakError
from gradleak.models import INITS, init_name


def add_victim_options(parser: argparse.ArgumentParser, model: str) -> None:
    """``--model --width --init --dataset --data-dir``."""
    parser.add_argument("--model", default=model, choices=["lenet", "convnet", "resnet18"])
    parser.add_argument("--width", type=int, default=None, help="model width (default: the model's own)")
    parser.add_argument("--init", default=None, choices=INITS.names(),
                        help="victim initialisation (default: the model's own: dlg for lenet, he otherwise)")
    parser.add_argument("--dataset", default="cifar10", choices=["digits", "cifar10"])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (cifar-10-batches-py or its parent)")


def victim_name(args: argparse.Namespace) -> str:
    """``lenet (dlg init)``: the model and the initialisation the rows were measured on."""
    return f"{args.model} ({init_name(args.model, args.init)} init)"


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return sizes


def add_batch_sizes_option(parser: argparse.ArgumentParser, default: tuple[int, ...]) -> None:
    """``--batch-sizes 1,4,16`` (a list of positive ints; anything else is a one-line usage error)."""
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=list(default), help="comma-separated, e.g. 8,16,64")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--seed --threads``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def load_splits(args: argparse.Namespace, *splits: str):
    """The named splits of ``args.dataset``; a missing or bad data folder exits with its message (status 2)."""
    try:
        return [load_dataset(args.dataset, split, args.data_dir, download=False) for split in splits]
    except GradleakError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
