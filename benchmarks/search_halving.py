"""Label search by guidance: exhaustive vs successive halving (wall time, agreement, accuracy).

    python benchmarks/search_halving.py [--dataset cifar10|digits] [--data-dir DIR] [--model lenet|convnet]
                                        [--images 8] [--iterations 200] [--spaces guidance,labels]
                                        [--eta 3] [--weight 0.1] [--classifier-steps N] [--threads 1]
                                        [--device cpu|cuda|auto]

B = 1, one candidate per class (10), classifier guide trained on the PUBLIC train split, untrained
victim (seed = image index). For each search space and image both schedules run back to back on the
same observation (exhaustive first), so a shared machine's load affects both alike; the ratio is
the sum of exhaustive times over the sum of halving times in this run. Reported per space: wall
times, the fraction of images where both chose the same class, each schedule's naming accuracy
(chosen class == true class) and the random baseline (1/10). ``--dataset cifar10`` reads
``--data-dir`` (default $GRADLEAK_CIFAR10_DIR, else ../shared/data/cifar-10-batches-py); ``--model convnet`` is ConvNet-64.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _shared_cifar() -> str | None:
    """The checkout's ../shared/data/cifar-10-batches-py when present (as the tests find it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar-10-batches-py")
    return path if os.path.isfile(os.path.join(path, "batches.meta")) else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    p.add_argument("--data-dir", default=os.environ.get("GRADLEAK_CIFAR10_DIR") or _shared_cifar())
    p.add_argument("--model", default="lenet", choices=("lenet", "convnet"))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--spaces", default="guidance,labels")
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--weight", type=float, default=0.1)
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from gradleak.errors import ConfigError
    from gradleak.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        p.error(str(err))

    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.schedules import halving_rungs
    from gradleak.attacks.inversion.search import run_guided
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
    rungs = halving_rungs(test.num_classes, args.iterations, args.eta)
    print(f"{args.dataset}, {args.model}, B=1, {test.num_classes} candidates, {args.iterations} iterations, "
          f"eta={args.eta}, rungs {[(r.iterations, r.keep) for r in rungs]}, guide accuracy "
          f"{classifier_accuracy(aux, test.images, test.labels):.3f} ({steps} steps on the public split), "
          f"threads={torch.get_num_threads()}, device {device}; timings on a shared machine (other processes running)")
    aux = aux.to(device)  # trained (and scored) on the CPU; guides on the attack's device
    spaces = args.spaces.split(",")
    stats = {s: {"exhaustive": [0.0, 0], "halving": [0.0, 0], "same": 0, "work": 0.0} for s in spaces}
    for i in range(args.images):
        x, y, _ = test.sample_batch(1, torch.Generator().manual_seed(100 + i))
        model = build_model(args.model, test.input_shape, test.num_classes, width=width, seed=i).train().to(device)
        update = simulate_client(model, x.to(device), y.to(device), mean=test.mean, std=test.std)
        obs = ThreatModel().observe(model, update, test.input_shape, test.num_classes, test.mean, test.std,
                                    batch_size=1, class_names=test.class_names)
        if i == 0:  # warm up (allocator, oneDNN primitives) outside the timings
            run_guided(obs, y, preset("ig", iterations=2), "search", "classifier", args.weight, aux_classifier=aux)
        row = []
        for space in spaces:
            picks = {}
            for schedule in ("exhaustive", "halving"):
                t = time.perf_counter()
                out = run_guided(obs, y, cfg, "search", "classifier", args.weight, aux_classifier=aux,
                                 search_space=space, schedule=schedule, eta=args.eta)
                stats[space][schedule][0] += time.perf_counter() - t
                picks[schedule] = out.search_labels.tolist()
                stats[space][schedule][1] += int(picks[schedule] == y.tolist())
                if schedule == "halving":
                    s = out.summary()
                    stats[space]["work"] += s.get("candidate_iterations", 0) / (test.num_classes * args.iterations)
            stats[space]["same"] += int(picks["exhaustive"] == picks["halving"])
            row.append(f"{space}: exh {picks['exhaustive']} halv {picks['halving']}")
        print(f"image {i:2d} true {y.tolist()}  " + "  ".join(row), flush=True)

    n = args.images
    print(f"\n{'space':9} {'exh s':>7} {'halv s':>7} {'ratio':>6} {'work':>5} {'same':>5} {'acc exh':>8} "
          f"{'acc halv':>9} {'random':>7}")
    for space, st in stats.items():
        (te, he), (th, hh) = st["exhaustive"], st["halving"]
        print(f"{space:9} {te:7.1f} {th:7.1f} {te / th:6.2f} {st['work'] / n:5.2f} {st['same'] / n:5.2f} "
              f"{he / n:8.2f} {hh / n:9.2f} {1 / test.num_classes:7.2f}")
    print(f"(N = {n} images; work = halving's candidate-iterations / exhaustive's)")


if __name__ == "__main__":
    main()
