"""Label search by guidance: speed (batched vs sequential) and quality (label accuracy, SSIM).

    python benchmarks/guidance_search.py speed [--models lenet,convnet] [--candidates 10] [--iterations 5]
                                               [--repeats 1] [--threads 2] [--profile]
    python benchmarks/guidance_search.py quality [--dataset digits] [--model lenet] [--batch 1] [--trials 20]
                                                 [--iterations 200] [--weights 0.1] [--max-candidates 24]
                                                 [--space guidance|guidance-nocounts|labels|labels-nocounts|oracle]

``speed``: each row: one CIFAR-size (3×32×32) observation of batch 1, ``--candidates`` guided candidates (one
per class, classifier guide with a random auxiliary CNN, TV 0.05), the same iterations for both
engines; the sequential loop is :func:`invert_sequential` (``invert``'s own optimisation loop per
candidate), the batched one :func:`invert_batched` (one vmapped computation). Engines run back to
back, batched first, so a shared machine's load affects both alike; ``--repeats`` alternates them
and keeps the fastest of each. ``--profile`` prints where the batched step spends its time.
Each row also gives the arithmetic of one iteration of all candidates (matrix products and
convolutions, ``torch.utils.flop_counter``), the rate each engine reached, and the rate of a plain
256-channel 3×3 convolution (1×256×32×32, the victim's largest) on this machine: when the sequential
loop already runs near that rate, batching cannot make it much faster.

``quality``: ``--trials`` private batches from the test split (untrained victim, seed = trial), the
classifier guide trained on the PUBLIC train split; ``--space guidance|labels`` reports the search's
order-free label accuracy against its exact random baseline and against a uniform pick among the
candidates searched (``-nocounts``: B > 1 candidates not constrained by the recovered counts),
``--space oracle`` the SSIM without guidance and with oracle guidance at each weight.
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
    from gradleak.vision import SmallCNN

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
        # Warm up both engines (allocator, oneDNN primitives): the first call of each costs ~1 s.
        invert_batched(obs, labels[:2], InversionConfig(iterations=1), guidance)
        invert_sequential(obs, labels[:2], InversionConfig(iterations=1), guidance)
        best_b = best_s = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            b = invert_batched(obs, labels, cfg, guidance)
            best_b = min(best_b, time.perf_counter() - t)
            t = time.perf_counter()
            s = invert_sequential(obs, labels, cfg, guidance)
            best_s = min(best_s, time.perf_counter() - t)
        diff = max(abs(rb.matching_loss - rs.matching_loss) for rb, rs in zip(b.reconstructions, s.reconstructions))
        flops_s, flops_b = _flops_per_iteration(obs, labels, cfg, guidance)
        rows.append((name, candidates, iterations, best_s, best_b, best_s / best_b, diff,
                     flops_s, flops_b))
        if profile:
            _profile(obs, labels, cfg, guidance)
    print(f"threads={torch.get_num_threads()}  (timings on a shared machine are inflated; ratios are back to back)")
    print(f"{'model':8} {'candidates':>10} {'iterations':>10} {'sequential s':>13} {'batched s':>10} {'ratio':>6} "
          f"{'max |Δloss|':>12} {'GFLOP/it seq':>13} {'GFLOP/it bat':>13} {'GFLOP/s seq':>12} {'GFLOP/s bat':>12}")
    for name, k, it, ts, tb, ratio, diff, fs, fb in rows:
        print(f"{name:8} {k:>10} {it:>10} {ts:>13.2f} {tb:>10.2f} {ratio:>6.2f} {diff:>12.2e} "
              f"{fs / 1e9:>13.1f} {fb / 1e9:>13.1f} {fs * it / ts / 1e9:>12.0f} {fb * it / tb / 1e9:>12.0f}")
    print(f"plain conv 1x256x32x32, 3x3, fp32: {_conv_rate() / 1e9:.0f} GFLOP/s on this machine")


def _flops_per_iteration(obs, labels, cfg, guidance) -> tuple[float, float]:
    """Matrix-product and convolution FLOPs of one iteration of all candidates, (sequential, batched)."""
    from torch.utils.flop_counter import FlopCounterMode

    from _flops import conv_backward_flops
    from gradleak.attacks.inversion.batched import BatchedMatcher, guided_matcher

    x = torch.rand(labels.shape[0], 1, *obs.input_shape, requires_grad=True)
    conv_backward = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=conv_backward) as batched:
        # x * 1: the counter's module hooks refuse a leaf as a module input under autograd.grad
        _, total, _ = BatchedMatcher(obs, cfg, labels, guidance, labels).losses(x * 1)
        torch.autograd.grad(total.sum(), [x])
    with FlopCounterMode(display=False, custom_mapping=conv_backward) as sequential:
        for c in range(labels.shape[0]):
            matcher, _ = guided_matcher(obs, cfg, labels[c], guidance, labels[c])
            xc = x[c].detach().requires_grad_(True)
            _, total_c = matcher.matching_loss(xc * 1)
            torch.autograd.grad(total_c, [xc])  # as the loop does: to the pixels only
    return float(sequential.get_total_flops()), float(batched.get_total_flops())


def _conv_rate() -> float:
    x, w = torch.randn(1, 256, 32, 32), torch.randn(256, 256, 3, 3)
    for _ in range(5):
        torch.nn.functional.conv2d(x, w, padding=1)
    t = time.perf_counter()
    for _ in range(20):
        torch.nn.functional.conv2d(x, w, padding=1)
    return 2 * 256 * 256 * 9 * 32 * 32 * 20 / (time.perf_counter() - t)


def _profile(obs, labels, cfg, guidance) -> None:
    from torch.profiler import profile

    from gradleak.attacks.inversion.batched import BatchedMatcher

    matcher = BatchedMatcher(obs, cfg, labels, guidance, labels)
    x = torch.rand(labels.shape[0], 1, *obs.input_shape, requires_grad=True)
    with profile() as prof:
        _, total, _ = matcher.losses(x)
        torch.autograd.grad(total.sum(), [x])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def quality(dataset: str, data_dir: str | None, model_name: str, batch: int, trials: int, iterations: int,
            weights: list[float], space: str, classifier_steps: int | None, max_candidates: int,
            tv: float = 0.05, step_size: float = 0.1) -> None:
    import statistics

    from gradleak.attacks.inversion import preset
    from gradleak.attacks.inversion.search import run_guided
    from gradleak.attacks.labels import recover_labels
    from gradleak.data import load_dataset
    from gradleak.metrics import evaluate_images
    from gradleak.models import build_model
    from gradleak.studies.evaluate import evaluate_guidance
    from gradleak.threat import ThreatModel, simulate_client
    from gradleak.vision import classifier_accuracy, train_aux_classifier

    test, public = load_dataset(dataset, "test", data_dir), load_dataset(dataset, "train", data_dir)
    steps = classifier_steps or (300 if dataset == "digits" else 600)
    aux = train_aux_classifier(public.images, public.labels, public.num_classes, steps=steps, seed=0)
    print(f"{dataset}, {model_name}, B={batch}, {iterations} iterations, auxiliary classifier ({steps} steps on the "
          f"public split) test accuracy {classifier_accuracy(aux, test.images, test.labels):.3f}")
    cfg = preset("ig", iterations=iterations, regularizers={"tv": tv}, lr=step_size)
    scores: dict[float, list[float]] = {w: [] for w in ([0.0] if space == "oracle" else []) + weights}
    baseline, candidate_baseline = [], []
    for trial in range(trials):
        x, y, _ = test.sample_batch(batch, torch.Generator().manual_seed(100 + trial))
        model = build_model(model_name, test.input_shape, test.num_classes, seed=trial).train()
        update = simulate_client(model, x, y, mean=test.mean, std=test.std)
        obs = ThreatModel().observe(model, update, test.input_shape, test.num_classes, test.mean, test.std,
                                    batch_size=batch, class_names=test.class_names)
        estimate = recover_labels(obs)
        row = []
        for w in scores:
            if space == "oracle":
                out = run_guided(obs, estimate, cfg, "oracle" if w else "none", "classifier", w,
                                 true_labels_for_oracle=y, aux_classifier=aux)
                value = evaluate_images(out.reconstruction.images, x).ssim
            else:
                out = run_guided(obs, estimate, cfg, "search", "classifier", w, aux_classifier=aux,
                                 search_space=space.split("-")[0], max_candidates=max_candidates,
                                 constrain_by_counts=not space.endswith("-nocounts"))
                ev = evaluate_guidance(out, y, test.num_classes)
                value = ev["search_accuracy"]
                baseline.append(ev["search_random_baseline"])
                candidate_baseline.append(ev["search_candidate_baseline"])
            scores[w].append(value)
            row.append(f"w={w}: {value:.3f}")
        print(f"trial {trial:2d} true {y.tolist()} recovered {estimate.labels.tolist()}  " + "  ".join(row), flush=True)
    what = "SSIM" if space == "oracle" else f"label accuracy (search over {space})"
    for w, values in scores.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"weight {w}: {what} {statistics.mean(values):.3f} ± {spread:.3f} over {len(values)} trials")
    if baseline:
        print(f"random baseline {statistics.mean(baseline):.3f}; uniform pick among the "
              f"{len(out.candidates)} candidates {statistics.mean(candidate_baseline):.3f}")
    if space == "oracle":
        for w in weights:
            gains = [a - b for a, b in zip(scores[w], scores[0.0])]
            print(f"oracle weight {w}: SSIM gain {statistics.mean(gains):+.3f}, better in {sum(g > 0 for g in gains)}"
                  f"/{len(gains)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("speed", help="batched vs sequential wall time")
    sp.add_argument("--models", default="lenet,convnet")
    sp.add_argument("--candidates", type=int, default=10)
    sp.add_argument("--iterations", type=int, default=5)
    sp.add_argument("--repeats", type=int, default=1)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--profile", action="store_true")
    q = sub.add_parser("quality", help="label accuracy of the search, SSIM with oracle guidance")
    q.add_argument("--dataset", default="digits")
    q.add_argument("--data-dir", default=None)
    q.add_argument("--model", default="lenet")
    q.add_argument("--batch", type=int, default=1)
    q.add_argument("--trials", type=int, default=20)
    q.add_argument("--iterations", type=int, default=200)
    q.add_argument("--weights", default="0.1")
    q.add_argument("--space", default="guidance",
                   choices=["guidance", "guidance-nocounts", "labels", "labels-nocounts", "oracle"])
    q.add_argument("--max-candidates", type=int, default=24)
    q.add_argument("--classifier-steps", type=int, default=None)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--tv", type=float, default=0.05,
                   help="TV weight (0.05: the setting of the tables in the docs, before the IG preset moved to 0.3)")
    q.add_argument("--step-size", type=float, default=0.1,
                   help="Adam step (0.1: the setting of the tables in the docs, before the IG preset moved to 0.5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gradleak.runtime import tune_allocator

    tune_allocator()  # as the CLI does
    if args.command == "speed":
        run(args.models.split(","), args.candidates, args.iterations, args.repeats, args.profile)
    else:
        quality(args.dataset, args.data_dir, args.model, args.batch, args.trials, args.iterations,
                [float(w) for w in args.weights.split(",")], args.space, args.classifier_steps, args.max_candidates,
                args.tv, args.step_size)


if __name__ == "__main__":
    main()
