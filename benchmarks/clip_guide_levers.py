"""What the levers on a CLIP-guided iteration cost (issue #28), real ViT-B/32 size, interleaved.

    python benchmarks/clip_guide_levers.py [--folder DIR] [--rounds 6] [--steps 4] [--precision fp32]
                                           [--device cpu|cuda|auto]

The setting of ``benchmarks/clip_real_size.py`` (a random ViT-B/32-shaped CLIP from
:func:`gradleak.vision.clip.save_random_clip`, ConvNet-64 victim on 3×32×32, B = 1, one guided
reconstruction, 1 view, the batched engine). One :class:`BatchedRun` per variant is built first;
then, round after round, each variant in turn advances ``--steps`` iterations (a multiple of every
k, so each block holds the same share of guided steps; the order rotates each round) and the
block's seconds per iteration are recorded: wall clock, and the process's CPU time (with one
thread, far less disturbed by other jobs on a shared machine; on CUDA only wall clock means
anything). Only ratios inside one round mean something: the table gives the median over rounds of
each variant's s/it and of its ratio to the unguided run of the same round.

Variants: ``IG`` (no guidance); ``CLIP 224 k=1`` (today's guided step); ``k=2``, ``k=4``
(``--guide-every``: the guide on every k-th step, at k times the weight); ``input 160/128/96``
(``--clip-input-size``: 32 px upsampled to a smaller CLIP input, position embeddings interpolated:
25 / 16 / 9 patches instead of 49); and two combinations. 112 px is not a multiple of ViT-B/32's
32 px patch, so it is refused (the run prints the error) and 96 / 128 stand beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_real_size import CLASSES, convnet_observation  # noqa: E402

# name, guided, guide_every, clip input size (None: the model's own, 224)
VARIANTS = [("IG (unguided)", False, 1, None), ("CLIP 224 k=1", True, 1, None), ("CLIP 224 k=2", True, 2, None),
            ("CLIP 224 k=4", True, 4, None), ("CLIP 160 k=1", True, 1, 160), ("CLIP 128 k=1", True, 1, 128),
            ("CLIP 96 k=1", True, 1, 96), ("CLIP 160 k=2", True, 2, 160), ("CLIP 128 k=4", True, 4, 128)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="where the random ViT-B/32 CLIP is (or is written)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="iterations per variant per round (a multiple of every k)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    tmp = None
    if args.folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="gradleak-clip-b32-")
        args.folder = tmp.name
    try:
        run(args)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run(args) -> None:
    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.batched import BatchedRun
    from gradleak.attacks.inversion.guidance import Guidance, build_guide
    from gradleak.errors import ConfigError
    from gradleak.runtime import resolve_device
    from gradleak.vision import load_clip
    from gradleak.vision.clip import save_random_clip

    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        save_random_clip(args.folder)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model, obs = convnet_observation(device)
    clip = load_clip(args.folder, device=device, local_files_only=True)
    try:
        build_guide("clip", clip=clip, class_names=CLASSES, input_size=112)
    except ConfigError as err:
        print(f"--clip-input-size 112 → ConfigError: {err}")
    cfg = preset("ig", iterations=1000, precision=args.precision, regularizers={"tv": 0.05})
    labels = torch.tensor([[3]])
    runs = []
    for name, guided, every, size in VARIANTS:
        guidance = (Guidance(build_guide("clip", clip=clip, class_names=CLASSES, input_size=size), 0.1, every=every)
                    if guided else None)
        run = BatchedRun(obs, labels, cfg, guidance, labels if guided else None)
        run.advance(2)  # warm-up: allocator, primitives
        runs.append(run)
    per_it = {name: [] for name, *_ in VARIANTS}
    ratio = {name: [] for name, *_ in VARIANTS}
    cpu_it = {name: [] for name, *_ in VARIANTS}
    cpu_ratio = {name: [] for name, *_ in VARIANTS}
    for r in range(args.rounds):
        secs, cpu = {}, {}
        for i in range(len(VARIANTS)):  # the order rotates from round to round: no variant always runs first
            (name, *_), run = VARIANTS[(i + r) % len(VARIANTS)], runs[(i + r) % len(VARIANTS)]
            if cuda:
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            run.advance(run.it + args.steps)
            if cuda:
                torch.cuda.synchronize()
            secs[name] = (time.perf_counter() - start) / args.steps
            cpu[name] = (time.process_time() - start_cpu) / args.steps
        for name, sec in secs.items():
            per_it[name].append(sec)
            ratio[name].append(sec / secs[VARIANTS[0][0]])
            cpu_it[name].append(cpu[name])
            cpu_ratio[name].append(cpu[name] / cpu[VARIANTS[0][0]])
    for run in runs:
        run.close()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, precision "
          f"{args.precision} (matching term; CLIP in fp32); ConvNet-64, B=1, 3×32×32; {args.rounds} rounds × "
          f"{args.steps} iterations per variant, interleaved; medians over rounds")
    print(f"\n{'':16} {'wall clock':^34}   {'CPU time (process)':^34}")
    print(f"{'variant':16} {'s/iter':>8} {'÷ unguided':>11} {'min–max':>13}   {'s/iter':>8} {'÷ unguided':>11} "
          f"{'min–max':>13}")
    med = statistics.median
    for name, *_ in VARIANTS:
        r, c = ratio[name], cpu_ratio[name]
        print(f"{name:16} {med(per_it[name]):8.3f} {med(r):10.2f}× {min(r):6.2f}–{max(r):5.2f}   "
              f"{med(cpu_it[name]):8.3f} {med(c):10.2f}× {min(c):6.2f}–{max(c):5.2f}")


if __name__ == "__main__":
    main()
