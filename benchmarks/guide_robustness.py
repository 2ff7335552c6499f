"""Does a robust stand-in for CLIP make classifier guidance help? Oracle guidance at B = 1, SSIM.

    python benchmarks/guide_robustness.py [--data-dir DIR] [--images 10] [--iterations 200] [--model lenet]
                                          [--weight 0.1] [--classifier-steps 300] [--views 4] [--train-only]

Digits (embedded) by default, the CIFAR-10 subset with ``--data-dir``. The attacker's stand-ins are
trained on the PUBLIC train split — one standard, one PGD-adversarial (L2 ε = 0.5, 5 steps; Madry et al.
2018) — through the classifier cache (``$GRADLEAK_CACHE``; a second run loads them); their clean and
PGD accuracy are measured on the test split. ``--images`` victims come from the test split: an
untrained victim per image (seed = trial), the client's gradient of one image, labels recovered from
it (iDLG, exact at B = 1), and the inversion the CLI would run (``gradleak attack``'s IG preset at
``--iterations``) four times: without guidance, and with oracle guidance (the true class; an upper
bound on what guidance adds) by the standard stand-in (1 view), the robust one (1 view) and the robust
one averaged over ``--views`` random views. The table gives mean SSIM and the paired gain over no
guidance (bootstrap 95 % interval, Wilcoxon p; ``gradleak.metrics.intervals.paired_difference``), the
final guidance loss (cross-entropy of the guiding stand-in; 1 view), and how often a JUDGE — a third,
standard classifier trained with another seed, which guided nothing — names the reconstruction's true
class: guidance that moves pixels toward what the class looks like should raise it; adversarial
patterns that only fool the guide should not. ``--train-only`` trains (or loads) the models and stops.
"""

from __future__ import annotations

import argparse
import time

import torch

from _guide_bench import held_out_order, single_image_attack_input


def stand_ins(public, test, steps: int, seed: int = 0):
    from gradleak.vision import cached_classifier

    out = {}
    for kind in ("standard", "adversarial", "judge"):
        t = time.perf_counter()
        out[kind] = cached_classifier(public.images, public.labels, public.num_classes, public.class_names,
                                      steps=steps, seed=seed + (kind == "judge"), adversarial=kind == "adversarial",
                                      eval_images=test.images, eval_labels=test.labels)
        card = out[kind].card
        print(f"{kind:11} stand-in: {steps} steps on {len(public)} public images, {time.perf_counter() - t:5.1f} s "
              f"(cached after the first run); on {card.evaluated_on}: clean {card.clean_accuracy:.3f}, "
              f"PGD L2 ε={card.epsilon:g} ({card.pgd_steps} steps) {card.adversarial_accuracy:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="a cifar-10-batches-py folder (default: digits)")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from gradleak.attacks.inversion.search import run_guided
    from gradleak.config import AttackConfig
    from gradleak.data import load_dataset
    from gradleak.metrics import evaluate_images
    from gradleak.metrics.intervals import paired_difference
    from gradleak.studies.attack import inversion_config

    dataset = "cifar10" if args.data_dir else "digits"
    public, test = load_dataset(dataset, "train", args.data_dir), load_dataset(dataset, "test", args.data_dir)
    aux = stand_ins(public, test, args.classifier_steps)
    if args.train_only:
        return
    inv = inversion_config(AttackConfig.of(dataset=dataset, iterations=args.iterations), test.input_shape)
    arms = {"no guidance": None, "standard, 1 view": ("standard", 1), "robust, 1 view": ("adversarial", 1),
            f"robust, {args.views} views": ("adversarial", args.views)}
    ssim: dict[str, list[float]] = {name: [] for name in arms}
    guide_loss: dict[str, list[float]] = {name: [] for name in arms}
    judged: dict[str, list[bool]] = {name: [] for name in arms}
    judge = aux["judge"].model
    started = time.perf_counter()
    for trial, index in enumerate(held_out_order(test, args.images)):
        x, y, obs, estimate = single_image_attack_input(test, index, trial, args.model)
        row = []
        for name, arm in arms.items():
            if arm is None:
                out = run_guided(obs, estimate, inv, "none")
            else:
                out = run_guided(obs, estimate, inv, "oracle", "classifier", args.weight, true_labels_for_oracle=y,
                                 aux_classifier=aux[arm[0]].model, views=arm[1])
            recon = out.reconstruction.images
            ssim[name].append(evaluate_images(recon, x).ssim)
            with torch.no_grad():
                judged[name].append(bool(judge(recon).argmax(dim=1) == y))
                if arm is not None:
                    guide_loss[name].append(float(torch.nn.functional.cross_entropy(aux[arm[0]].model(recon), y)))
            row.append(f"{ssim[name][-1]:.3f}")
        print(f"image {trial:2d} (test #{index}, {test.class_names[int(y)]}): " + "  ".join(row), flush=True)

    print(f"\n{dataset}, victim {args.model} (untrained), B = 1, {args.iterations} iterations "
          f"(IG preset, TV {inv.regularizers.get('tv', 0)}), guidance weight {args.weight}, {args.images} images, "
          f"{time.perf_counter() - started:.0f} s")
    print(f"{'arm':18} {'mean SSIM':>9} {'gain vs none':>13} {'95% CI':>18} {'p':>7} {'better':>7} "
          f"{'guide CE':>9} {'judge acc':>9}")
    base = ssim["no guidance"]
    for name, values in ssim.items():
        mean = sum(values) / len(values)
        judge_acc = sum(judged[name]) / len(judged[name])
        if name == "no guidance":
            print(f"{name:18} {mean:9.3f} {'':>13} {'':>18} {'':>7} {'':>7} {'':>9} {judge_acc:9.2f}")
            continue
        d = paired_difference(values, base)
        better = sum(a > b for a, b in zip(values, base))
        ce = sum(guide_loss[name]) / len(guide_loss[name])
        print(f"{name:18} {mean:9.3f} {d.mean:+13.3f} [{d.low:+.3f}, {d.high:+.3f}] {d.p_value:7.3f} "
              f"{better:>3}/{len(values)} {ce:9.3f} {judge_acc:9.2f}")


if __name__ == "__main__":
    main()
