"""One prepared GPU check, under 5 minutes on one GPU: the ``gpu`` tests, the IG speed benchmark, the
label-search benchmark and the real-size CLIP benchmark on CUDA, summarised in one table.

    python benchmarks/gpu_check.py [--budget 280] [--dry-run]

Steps (each with its share of ``--budget`` seconds, all on ``--device cuda``):

1. ``pytest -m gpu tests``: CUDA attacks against the CPU ones within a tolerance (tests/test_device.py);
2. ``attack_speed.py``: s/iteration of IG, ConvNet-64, B = 1 and 4: reference, fp32, bf16, auto;
3. ``search_halving.py``: label search over 10 candidates, exhaustive vs successive halving;
4. ``clip_real_size.py``: ViT-B/32-shaped CLIP guidance (1 view, 4 views, 10 candidates), fp32/bf16.

Without a CUDA device it says so and exits 0 (CI has none); ``--dry-run`` prints the plan only.
Every row of the benchmarks' own tables is repeated in the summary table under its step's name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _cifar() -> str | None:
    path = os.environ.get("GRADLEAK_CIFAR10_DIR") or os.path.join(ROOT, "..", "shared", "data", "cifar-10-batches-py")
    return path if os.path.isfile(os.path.join(path, "batches.meta")) else None


def plan() -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) of every step."""
    py = sys.executable
    data = _cifar()
    search_data = ["--dataset", "cifar10", "--data-dir", data] if data else ["--dataset", "digits"]
    return [
        ("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], 0.25),
        ("attack_speed", [py, os.path.join(HERE, "attack_speed.py"), "--device", "cuda", "--iterations", "20",
                          "--batch-sizes", "1", "4", "--repeats", "2"], 0.15),
        ("search_halving", [py, os.path.join(HERE, "search_halving.py"), "--device", "cuda", *search_data,
                            "--images", "3", "--iterations", "100", "--model", "convnet"], 0.25),
        ("clip_real_size", [py, os.path.join(HERE, "clip_real_size.py"), "--device", "cuda", "--iterations", "5",
                            "--views", "4", "--candidates", "10"], 0.35),
    ]


def _table_lines(name: str, out: str) -> list[str]:
    """The lines of a step's result table (its last block of output), or pytest's summary line."""
    lines = [line.rstrip() for line in out.splitlines() if line.strip()]
    if name.startswith("pytest"):
        return lines[-1:]
    keep = [line for line in lines if not line.startswith(("Writing", "wrote", "image "))]
    return keep[-12:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=280.0, help="seconds for all steps together (default 280)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    import torch

    steps = plan()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; " + (f"CUDA device: {torch.cuda.get_device_name(0)}" if cuda
                                           else "no CUDA device: the GPU checks do not run (gpu tests skip)"))
    for name, cmd, share in steps:
        shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])
        print(f"  {name:15} {share * args.budget:5.0f} s  {shown}")
    if args.dry_run or not cuda:
        return 0
    rows, started = [], time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name, cmd, share in steps:
        left = args.budget - (time.perf_counter() - started)
        limit = max(10.0, min(share * args.budget, left))
        t = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            status, out = ("ok" if done.returncode == 0 else f"rc {done.returncode}"), done.stdout
            if done.returncode:
                out += "\n" + done.stderr[-1500:]
        except subprocess.TimeoutExpired as exc:
            status, out = f"timeout {limit:.0f} s", (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) \
                else (exc.stdout or "")
        rows.append((name, status, time.perf_counter() - t, _table_lines(name, out)))
    print(f"\n{'step':15} {'status':12} {'wall s':>7}  result")
    for name, status, wall, lines in rows:
        print(f"{name:15} {status:12} {wall:7.1f}  {lines[0] if lines else ''}")
        for line in lines[1:]:
            print(f"{'':15} {'':12} {'':>7}  {line}")
    print(f"total {time.perf_counter() - started:.0f} s (budget {args.budget:.0f} s)")
    return 0 if all(status == "ok" for _, status, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
