"""CLIP guidance at the real model's size: seconds per iteration and peak memory, ViT-B/32 shape.

    python benchmarks/clip_real_size.py [--folder DIR] [--iterations 3] [--views 4] [--candidates 10]
                                        [--precisions fp32 bf16] [--device cpu|cuda|auto] [--no-cli]

A CLIP with transformers' default ``CLIPConfig()`` sizes (ViT-B/32 image tower, 224 px, 12-layer
text tower; those of openai/clip-vit-base-patch32) and random weights is written to ``--folder``
(default: a temporary folder) by :func:`gradleak.vision.clip.save_random_clip` and loaded offline
through gradleak's loader. The victim is ConvNet-64 on CIFAR-size input (3×32×32, B = 1); every
guided image is resized 32 → 224 px for CLIP. Rows, each the median of ``--iterations`` steps of the
batched engine after two untimed ones:

- ``IG``: no guidance (the unguided iteration every ratio is taken against);
- ``IG + CLIP``: oracle-style guidance of the one reconstruction, 1 view;
- ``IG + CLIP ×V views``: the same with ``--views`` random views per image;
- ``search K``: guidance over ``--candidates`` candidates at once (label search, 1 view).

Each precision runs in its own process, the rows in increasing memory order, so the process's peak
RSS after a row (``ru_maxrss``, monotone) is that row's peak; on CUDA the peak is
``torch.cuda.max_memory_allocated`` per row. The table also counts the text-tower calls (the class
prompts are embedded once, when the guide is built) and the image-tower calls per step and images
per call (one batched call over candidates × views). ``--precision`` applies to the gradient-matching
term (autocast); CLIP itself runs in fp32. Unless ``--no-cli``, ``gradleak attack --labeler clip
--guide clip --guidance search --clip-model DIR`` then runs end to end on CIFAR-10 (when the data is
found) for ``--cli-iterations`` iterations. On a shared machine only the ratios within one run mean
anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Counter:
    """Counts the calls of one CLIP tower and the images/prompts it was given."""

    def __init__(self, fn, key):
        self.fn, self.key, self.calls, self.items = fn, key, 0, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.items += int(kwargs[self.key].shape[0])
        return self.fn(*args, **kwargs)


def convnet_observation(device):
    """The benchmarks' victim: a ConvNet-64 in train mode and its update on one random CIFAR-size image
    (labels granted), as the attacker observes it."""
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client

    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, width=64, seed=0).train().to(device)
    x, y = torch.rand(1, 3, 32, 32).to(device), torch.tensor([3], device=device)
    update = simulate_client(model, x, y, mean=MEAN, std=STD)
    obs = ThreatModel(knows_labels=True).observe(model, update, (3, 32, 32), 10, MEAN, STD, 1, y.cpu(),
                                                 class_names=CLASSES)
    return model, obs


def run_rows(args) -> list[dict]:
    """One precision, every row, in this process."""
    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.batched import BatchedRun
    from gradleak.attacks.inversion.guidance import Guidance, build_guide
    from gradleak.runtime import resolve_device, tune_allocator
    from gradleak.vision import load_clip

    tune_allocator()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model, obs = convnet_observation(device)
    start = time.perf_counter()
    clip = load_clip(args.folder, device=device, local_files_only=True)
    load_s = time.perf_counter() - start
    text = clip.model.get_text_features = _Counter(clip.model.get_text_features, "input_ids")
    image = clip.model.get_image_features = _Counter(clip.model.get_image_features, "pixel_values")
    cfg = preset("ig", iterations=1000, precision=args.precision, regularizers={"tv": 0.05})
    k = args.candidates
    rows = [("IG", 1, 0), ("IG + CLIP", 1, 1), (f"IG + CLIP ×{args.views} views", 1, args.views),
            (f"search {k} cand.", k, 1)]
    out = [{"row": "loaded", "rss_mib": _rss_mib(), "load_s": load_s}]
    for name, candidates, views in rows:
        labels = torch.arange(candidates).remainder(10).unsqueeze(1)
        guidance = None
        text_before = text.calls
        if views:
            guidance = Guidance(build_guide("clip", clip=clip, class_names=CLASSES, views=views), 0.1)
        text_calls = text.calls - text_before
        run = BatchedRun(obs, labels, cfg, guidance, labels if guidance else None)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run.advance(2)  # warm-up: allocator, oneDNN primitives (bf16's are built on first use)
        calls, items = image.calls, image.items
        steps = []
        for it in range(2, 2 + args.iterations):  # the median step: a shared machine's stalls hit single steps
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            run.advance(it + 1)
            if cuda:
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - start)
        sec = sorted(steps)[len(steps) // 2]
        n_calls = image.calls - calls
        out.append({"row": name, "s_per_it": sec, "rss_mib": _rss_mib(),
                    "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                    "text_calls": text_calls, "image_calls_per_it": n_calls / args.iterations,
                    "images_per_call": items and (image.items - items) / max(n_calls, 1)})
        run.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="where the random ViT-B/32 CLIP is (or is written)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-cli", action="store_true", help="skip the end-to-end gradleak attack run")
    p.add_argument("--cli-iterations", type=int, default=2)
    p.add_argument("--precision", help=argparse.SUPPRESS)  # a child process: one precision's rows as JSON
    args = p.parse_args(argv)
    from gradleak.errors import ConfigError
    from gradleak.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        p.error(str(err))
    if args.precision:
        print(json.dumps(run_rows(args)))
        return
    tmp = None
    if args.folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="gradleak-clip-b32-")
        args.folder = tmp.name
    try:
        _report(args, device)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _report(args, device) -> None:
    from gradleak.vision.clip import save_random_clip

    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        start = time.perf_counter()
        save_random_clip(args.folder)
        print(f"wrote a random ViT-B/32-shaped CLIP to {args.folder} in {time.perf_counter() - start:.1f} s")
    size = sum(os.path.getsize(os.path.join(args.folder, f)) for f in os.listdir(args.folder)) / 2**20
    with open(os.path.join(args.folder, "config.json")) as f:
        px = json.load(f).get("vision_config", {}).get("image_size", 224)
    print(f"CLIP folder {size:.0f} MiB; device {device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; victim ConvNet-64, B=1, 3×32×32 → {px} px; median of {args.iterations} timed iterations per row")
    results = {}
    for precision in args.precisions:
        cmd = [sys.executable, os.path.abspath(__file__), "--folder", args.folder, "--precision", precision,
               "--iterations", str(args.iterations), "--views", str(args.views), "--candidates",
               str(args.candidates), "--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode:
            sys.exit(f"{precision} rows failed:\n{done.stderr[-2000:]}")
        results[precision] = json.loads(done.stdout.strip().splitlines()[-1])
    mem = "GPU peak MiB" if device.type == "cuda" else "peak RSS MiB"
    print(f"\n{'precision':9} {'row':24} {'s/iter':>8} {'vs IG':>7} {mem:>13} {'text calls':>10} "
          f"{'img calls/it':>12} {'imgs/call':>9}")
    for precision, rows in results.items():
        loaded, base = rows[0], rows[1]["s_per_it"]
        print(f"{precision:9} {'(CLIP loaded)':24} {'':>8} {'':>7} {loaded['rss_mib']:13.0f}   "
              f"load {loaded['load_s']:.1f} s")
        for r in rows[1:]:
            peak = r["gpu_mib"] if r["gpu_mib"] is not None else r["rss_mib"]
            print(f"{precision:9} {r['row']:24} {r['s_per_it']:8.3f} {r['s_per_it'] / base:6.1f}× {peak:13.0f} "
                  f"{r['text_calls']:10d} {r['image_calls_per_it']:12.1f} {r['images_per_call']:9.0f}")
    if not args.no_cli:
        _cli(args)


def _cli(args) -> None:
    data = os.environ.get("GRADLEAK_CIFAR10_DIR") or os.path.join(HERE, "..", "..", "shared", "data",
                                                                   "cifar-10-batches-py")
    if not os.path.isfile(os.path.join(data, "batches.meta")):
        print("\nend-to-end run skipped: no CIFAR-10 folder (set GRADLEAK_CIFAR10_DIR)")
        return
    with tempfile.TemporaryDirectory(prefix="gradleak-clip-run-") as out:
        cmd = [sys.executable, "-m", "gradleak", "attack", "--dataset", "cifar10", "--data-dir", data,
               "--batch-size", "1", "--labeler", "clip", "--guide", "clip", "--guidance", "search",
               "--clip-model", args.folder, "--iterations", str(args.cli_iterations), "--device", args.device,
               "--out", out]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"end-to-end run failed:\n{done.stderr[-2000:]}")
        with open(os.path.join(out, "result.json")) as f:
            result = json.load(f)
    print(f"\nend to end: gradleak attack --labeler clip --guide clip --guidance search (10 candidates) "
          f"--iterations {args.cli_iterations}: {wall:.1f} s wall, device {result.get('device')}, precision "
          f"{result.get('precision_resolved')}, semantic labels {result.get('semantic_labels')}")


if __name__ == "__main__":
    main()
