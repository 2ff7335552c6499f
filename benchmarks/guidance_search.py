"""Batched vs sequential label search by guidance: wall time and equality of the final losses.

    python benchmarks/guidance_search.py [--models lenet,convnet] [--candidates 10] [--iterations 5]
                                         [--threads 2] [--profile]

Each row: one CIFAR-size (3×32×32) observation of batch 1, ``--candidates`` guided candidates (one
per class, classifier guide with a random auxiliary CNN, TV 0.05), the same iterations for both
engines; the sequential loop is :func:`invert_sequential` (``invert``'s own optimisation loop per
candidate), the batched one :func:`invert_batched` (one vmapped computation). Engines run back to
back, batched first, so a shared machine's load affects both alike; ``--repeats`` alternates them
and keeps the fastest of each. ``--profile`` prints where the batched step spends its time.
"""

from __future__ import annotations

import argparse
import time

import torch


def _observation(model_name: str, seed: int = 0):
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client

    shape, mean, std = (3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    model = build_model(model_name, shape, 10, seed=seed).train()
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.rand((1, *shape), generator=gen), torch.tensor([3])
    update = simulate_client(model, x, y, mean=mean, std=std)
    return ThreatModel().observe(model, update, shape, 10, mean, std, batch_size=1,
                                 class_names=[str(c) for c in range(10)])


def _guidance(seed: int = 0):
    from gradleak.attacks.inversion.guidance import Guidance, build_guide
    from gradleak.semantic import SmallCNN

    torch.manual_seed(seed)
    aux = SmallCNN(3, 10, 32, width=16).eval()
    return Guidance(build_guide("classifier", aux_classifier=aux), 0.1)


def run(models: list[str], candidates: int, iterations: int, repeats: int, profile: bool) -> None:
    from gradleak.attacks.inversion import InversionConfig
    from gradleak.attacks.inversion.batched import invert_batched, invert_sequential

    cfg = InversionConfig(iterations=iterations, regularizers={"tv": 0.05})
    labels = (torch.arange(candidates) % 10).unsqueeze(1)
    rows = []
    for name in models:
        obs, guidance = _observation(name), _guidance()
        invert_batched(obs, labels[:2], InversionConfig(iterations=1), guidance)  # warm-up (allocator, mkldnn)
        best_b = best_s = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            b = invert_batched(obs, labels, cfg, guidance)
            best_b = min(best_b, time.perf_counter() - t)
            t = time.perf_counter()
            s = invert_sequential(obs, labels, cfg, guidance)
            best_s = min(best_s, time.perf_counter() - t)
        diff = max(abs(rb.matching_loss - rs.matching_loss) for rb, rs in zip(b.reconstructions, s.reconstructions))
        rows.append((name, candidates, iterations, best_s, best_b, best_s / best_b, diff))
        if profile:
            _profile(obs, labels, cfg, guidance)
    print(f"threads={torch.get_num_threads()}  (timings on a shared machine are inflated; ratios are back to back)")
    print(f"{'model':8} {'candidates':>10} {'iterations':>10} {'sequential s':>13} {'batched s':>10} {'ratio':>6} {'max |Δloss|':>12}")
    for name, k, it, ts, tb, ratio, diff in rows:
        print(f"{name:8} {k:>10} {it:>10} {ts:>13.2f} {tb:>10.2f} {ratio:>6.2f} {diff:>12.2e}")


def _profile(obs, labels, cfg, guidance) -> None:
    from torch.profiler import profile

    from gradleak.attacks.inversion.batched import BatchedMatcher

    matcher = BatchedMatcher(obs, cfg, labels, guidance, labels)
    x = torch.rand(labels.shape[0], 1, *obs.input_shape, requires_grad=True)
    with profile() as prof:
        _, total, _ = matcher.losses(x)
        torch.autograd.grad(total.sum(), [x])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet,convnet")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(args.models.split(","), args.candidates, args.iterations, args.repeats, args.profile)


if __name__ == "__main__":
    main()
