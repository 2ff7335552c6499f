"""Label search by guidance: exhaustive vs successive halving (wall time, agreement, accuracy).

    python benchmarks/search_halving.py [--dataset cifar10|digits] [--data-dir DIR] [--model lenet|convnet]
                                        [--images 8] [--batch-size 1] [--iterations 200]
                                        [--spaces guidance,labels] [--eta 3] [--weight 0.1]
                                        [--classifier-steps N] [--threads 1] [--device cpu|cuda|auto]
                                        [--replay --live N]

One candidate per class at B = 1 (10); at B > 1 the count-constrained multisets of the recovered
labels. Classifier guide trained on the PUBLIC train split, untrained victim (seed = image index).
For each search space and image both schedules run back to back on the same observation
(exhaustive first), so a shared machine's load affects both alike; the ratio is the sum of
exhaustive times over the sum of halving times in this run. Each image's line gives both picks,
both times where timed, and the exhaustive run's gap: how much higher the runner-up's final score is
than the winner's (a small gap is a close call, which the race can decide otherwise). Reported per space: wall times, the
fraction of images where both chose the same candidate, each schedule's accuracy (order-free share
of the batch's classes the chosen candidate names right) and the random baseline, with 95% Wilson
intervals (scipy) for the proportions.

``--replay`` makes many images affordable where one exhaustive search costs many minutes (ConvNet-64):
the exhaustive run is scored at the halving rungs without dropping anyone, and halving's pick is
replayed on those scores (:func:`~gradleak.attacks.inversion.schedules.replay_halving`: survivors
continue exactly, so this is the live race up to float rounding of a smaller batch). Live halving
then runs, and is timed, on the first ``--live`` images only; the table says where each figure comes
from, and how often the replayed pick equalled the live one. ``--dataset cifar10`` reads
``--data-dir`` (default $GRADLEAK_CIFAR10_DIR, else ../shared/data/cifar-10-batches-py); ``--model
convnet`` is ConvNet-64.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch


def _shared_cifar() -> str | None:
    """The checkout's ../shared/data/cifar-10-batches-py when present (as the tests find it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar-10-batches-py")
    return path if os.path.isfile(os.path.join(path, "batches.meta")) else None


def _overlap(picked: list[int], true: list[int]) -> float:
    """Order-free accuracy: the share of the batch's classes the pick names (multiset overlap / B)."""
    return sum((Counter(picked) & Counter(true)).values()) / len(true)


def _wilson(successes: float, n: int) -> str:
    from scipy.stats import binomtest

    ci = binomtest(round(successes), n).proportion_ci(method="wilson")
    return f"[{ci.low:.2f}, {ci.high:.2f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    p.add_argument("--data-dir", default=os.environ.get("GRADLEAK_CIFAR10_DIR") or _shared_cifar())
    p.add_argument("--model", default="lenet", choices=("lenet", "convnet"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--spaces", default="guidance,labels")
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--weight", type=float, default=0.1)
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--replay", action="store_true", help="halving's pick replayed on the exhaustive run")
    p.add_argument("--live", type=int, default=2, help="with --replay: images on which live halving runs (timed)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from gradleak.errors import ConfigError
    from gradleak.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        p.error(str(err))
    if args.replay and not 1 <= args.live <= args.images:
        p.error("--live must be between 1 and --images")

    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.schedules import Rung, halving_rungs, replay_halving
    from gradleak.attacks.inversion.search import run_guided
    from gradleak.attacks.labels import recover_labels
    from gradleak.data import load_dataset
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client
    from gradleak.vision import classifier_accuracy, train_aux_classifier

    data_dir = args.data_dir if args.dataset == "cifar10" else None
    test, public = load_dataset(args.dataset, "test", data_dir), load_dataset(args.dataset, "train", data_dir)
    steps = args.classifier_steps or (300 if args.dataset == "digits" else 600)
    aux = train_aux_classifier(public.images, public.labels, public.num_classes, steps=steps, seed=0)
    cfg = preset("ig", iterations=args.iterations, regularizers={"tv": 0.05}, lr=0.1)
    width = 64 if args.model == "convnet" else None
    B = args.batch_size
    print(f"{args.dataset}, {args.model}, B={B}, {args.iterations} iterations, eta={args.eta}, guide accuracy "
          f"{classifier_accuracy(aux, test.images, test.labels):.3f} ({steps} steps on the public split), "
          f"threads={torch.get_num_threads()}, device {device}"
          + (f", halving replayed on the exhaustive runs, live on the first {args.live}" if args.replay else ""),
          flush=True)
    aux = aux.to(device)  # trained (and scored) on the CPU; guides on the attack's device
    spaces = args.spaces.split(",")
    stats = {s: {"exh_s": 0.0, "halv_s": 0.0, "timed": 0, "acc_exh": 0.0, "acc_halv": 0.0, "same": 0, "work": 0.0,
                 "replay_live": [0, 0], "candidates": set()} for s in spaces}
    chance = 0.0  # expected order-free accuracy of B classes drawn uniformly (Monte Carlo per image)
    for i in range(args.images):
        x, y, _ = test.sample_batch(B, torch.Generator().manual_seed(100 + i))
        model = build_model(args.model, test.input_shape, test.num_classes, width=width, seed=i).train().to(device)
        update = simulate_client(model, x.to(device), y.to(device), mean=test.mean, std=test.std)
        obs = ThreatModel().observe(model, update, test.input_shape, test.num_classes, test.mean, test.std,
                                    batch_size=B, class_names=test.class_names)
        labels = y if B == 1 else recover_labels(obs)
        if i == 0:  # warm up (allocator, oneDNN primitives) outside the timings
            run_guided(obs, labels, preset("ig", iterations=2), "search", "classifier", args.weight, aux_classifier=aux)
        row, true = [], y.tolist()
        draws = torch.randint(test.num_classes, (2000, B), generator=torch.Generator().manual_seed(i)).tolist()
        chance += sum(_overlap(d, true) for d in draws) / len(draws)
        for space in spaces:
            st = stats[space]

            def search(schedule):
                t = time.perf_counter()
                out = run_guided(obs, labels, cfg, "search", "classifier", args.weight, aux_classifier=aux,
                                 search_space=space, schedule=schedule, eta=args.eta)
                return out, time.perf_counter() - t

            k = None
            if args.replay:  # rungs depend on the candidate count, known once the plan is built
                probe = run_guided(obs, labels, preset("ig", iterations=1), "search", "classifier", args.weight,
                                   aux_classifier=aux, search_space=space)
                k = len(probe.candidates)
                rungs = halving_rungs(k, args.iterations, args.eta)
                ex, te = search([Rung(r.iterations, k) for r in rungs])
                chosen, _ = replay_halving([r.scores for r in ex.rungs], [c.score for c in ex.candidates], rungs)
                halv_pick = ex.candidates[chosen].guidance
                if i < args.live:
                    hv, th = search("halving")
                    st["exh_s"], st["halv_s"], st["timed"] = st["exh_s"] + te, st["halv_s"] + th, st["timed"] + 1
                    st["replay_live"][0] += int(hv.chosen == chosen)
                    st["replay_live"][1] += 1
                st["work"] += _work(rungs, k, args.iterations) / (k * args.iterations)
            else:
                ex, te = search("exhaustive")
                hv, th = search("halving")
                k = len(ex.candidates)
                halv_pick = hv.search_labels.tolist()
                st["exh_s"], st["halv_s"], st["timed"] = st["exh_s"] + te, st["halv_s"] + th, st["timed"] + 1
                st["work"] += hv.summary().get("candidate_iterations", k * args.iterations) / (k * args.iterations)
            exh_pick = ex.search_labels.tolist()
            st["candidates"].add(k)  # at B > 1 it varies with the recovered labels
            st["acc_exh"] += _overlap(exh_pick, true)
            st["acc_halv"] += _overlap(halv_pick, true)
            st["same"] += int(exh_pick == halv_pick)
            finals = sorted(c.score for c in ex.candidates)
            gap = (finals[1] - finals[0]) / abs(finals[0]) if len(finals) > 1 and finals[0] else float("nan")
            timed = f" ({te:.1f} s / {th:.1f} s)" if not args.replay or i < args.live else ""
            row.append(f"{space}: exh {exh_pick} halv {halv_pick}{timed} gap {gap:.1%}")
        print(f"image {i:2d} true {true}  " + "  ".join(row), flush=True)

    n = args.images
    print(f"\n{'space':9} {'K':>5} {'exh s':>7} {'halv s':>7} {'timed':>5} {'ratio':>6} {'work':>5} "
          f"{'same [95% CI]':>18} {'acc exh [CI]':>19} {'acc halv [CI]':>19} {'random':>6}")
    for space, st in stats.items():
        ratio = st["exh_s"] / st["halv_s"] if st["halv_s"] else float("nan")
        ks = sorted(st["candidates"])
        k_text = f"{ks[0]}-{ks[-1]}" if len(ks) > 1 else str(ks[0])
        print(f"{space:9} {k_text:>5} {st['exh_s']:7.1f} {st['halv_s']:7.1f} {st['timed']:5d} {ratio:6.2f} "
              f"{st['work'] / n:5.2f} {st['same'] / n:5.2f} {_wilson(st['same'], n):>12} "
              f"{st['acc_exh'] / n:5.2f} {_wilson(st['acc_exh'], n):>13} "
              f"{st['acc_halv'] / n:5.2f} {_wilson(st['acc_halv'], n):>13} {chance / n:6.2f}")
        if args.replay:
            rl = st["replay_live"]
            print(f"  {space}: replayed pick == live halving's pick on {rl[0]} of {rl[1]} timed images")
    print(f"(N = {n} images; times and ratio over the 'timed' images; work = halving's candidate-iterations / "
          f"exhaustive's; accuracy order-free, its interval over images (B > 1: rounded successes))")


def _work(rungs, k: int, iterations: int) -> float:
    """Candidate-iterations of the race: all to the first rung, each rung's survivors to the next, the last to T."""
    total, alive, at = 0, k, 0
    for rung in rungs:
        total += alive * (rung.iterations - at)
        alive, at = rung.keep, rung.iterations
    return total + alive * (iterations - at)


if __name__ == "__main__":
    main()
