"""The quality cost of ``--guide-every k`` (lazy guidance): oracle guidance at B = 1, SSIM / PSNR, paired.

    python benchmarks/guide_every_quality.py [--data-dir DIR] [--images 8] [--iterations 400] [--model lenet]
                                             [--weight 0.1] [--classifier-steps 300]

No real CLIP can be downloaded here, so the guidance path is exercised with the offline stand-in, the
``classifier`` guide (a standard classifier trained on the PUBLIC train split, cached in
``$GRADLEAK_CACHE``), in the oracle setting (the true class; an upper bound on what guidance adds).
Per test image: an untrained victim (seed = trial), its gradient of that one image, labels recovered
(iDLG, exact at B = 1), and ``gradleak attack``'s IG inversion at ``--iterations`` run with no guidance,
with guidance every step (k = 1), every 2nd and every 4th step (k = 2, 4: weight k·λ on those steps,
the default), and every 4th step at weight λ (``k=4 unscaled``: a quarter of the mean pull). The table
gives mean SSIM / PSNR and the paired difference to k = 1 (bootstrap 95 % interval, Wilcoxon p;
``gradleak.metrics.intervals.paired_difference``) and to no guidance, and the final guidance
cross-entropy. What a smaller CLIP input costs in quality cannot be judged with random CLIP weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from _guide_bench import held_out_order, single_image_attack_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="a cifar-10-batches-py folder (default: digits)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from gradleak.attacks.inversion.search import run_guided
    from gradleak.config import AttackConfig
    from gradleak.data import load_dataset
    from gradleak.metrics import evaluate_images
    from gradleak.metrics.intervals import paired_difference
    from gradleak.studies.attack import inversion_config
    from gradleak.vision import cached_classifier

    dataset = "cifar10" if args.data_dir else "digits"
    public, test = load_dataset(dataset, "train", args.data_dir), load_dataset(dataset, "test", args.data_dir)
    aux = cached_classifier(public.images, public.labels, public.num_classes, public.class_names,
                            steps=args.classifier_steps, seed=0, eval_images=test.images, eval_labels=test.labels)
    print(f"classifier guide: {args.classifier_steps} steps on {len(public)} public images; clean accuracy "
          f"{aux.card.clean_accuracy:.3f} on {aux.card.evaluated_on}", flush=True)
    guide_model = aux.model
    inv = inversion_config(AttackConfig.of(dataset=dataset, iterations=args.iterations), test.input_shape)
    arms = {"no guidance": None, "k=1": (1, args.weight), "k=2": (2, args.weight), "k=4": (4, args.weight),
            "k=4 unscaled": (4, args.weight / 4)}  # k=4 at weight λ on its steps: λ·4 / 4 after lazy_weight's ×k
    ssim = {name: [] for name in arms}
    psnr = {name: [] for name in arms}
    ce = {name: [] for name in arms}
    secs = {name: 0.0 for name in arms}
    started = time.perf_counter()
    for trial, index in enumerate(held_out_order(test, args.images)):
        x, y, obs, estimate = single_image_attack_input(test, index, trial, args.model)
        row = []
        for name, arm in arms.items():
            t = time.perf_counter()
            if arm is None:
                out = run_guided(obs, estimate, inv, "none")
            else:
                out = run_guided(obs, estimate, inv, "oracle", "classifier", arm[1], true_labels_for_oracle=y,
                                 aux_classifier=guide_model, guide_every=arm[0])
            secs[name] += time.perf_counter() - t
            recon = out.reconstruction.images
            quality = evaluate_images(recon, x)
            ssim[name].append(quality.ssim)
            psnr[name].append(quality.psnr)
            with torch.no_grad():
                ce[name].append(float(torch.nn.functional.cross_entropy(guide_model(recon), y)))
            row.append(f"{quality.ssim:.3f}/{quality.psnr:5.2f}")
        print(f"image {trial:2d} (test #{index}, {test.class_names[int(y)]:10}) SSIM/PSNR: " + "  ".join(row),
              flush=True)

    print(f"\n{dataset}, victim {args.model} (untrained), B = 1, {args.iterations} iterations (IG preset, TV "
          f"{inv.regularizers.get('tv', 0)}), oracle classifier guidance at weight {args.weight}, {args.images} "
          f"images, {time.perf_counter() - started:.0f} s")
    print(f"{'arm':13} {'SSIM':>6} {'PSNR':>6} {'ΔSSIM vs k=1':>13} {'95% CI':>17} {'p':>6} {'ΔPSNR vs k=1':>13} "
          f"{'ΔSSIM vs none':>14} {'guide CE':>8} {'s/run':>6}")
    for name in arms:
        mean_s, mean_p = sum(ssim[name]) / len(ssim[name]), sum(psnr[name]) / len(psnr[name])
        cells = ""
        if name != "k=1":
            d = paired_difference(ssim[name], ssim["k=1"])
            dp = paired_difference(psnr[name], psnr["k=1"])
            cells = f"{d.mean:+13.3f} [{d.low:+.3f}, {d.high:+.3f}] {d.p_value:6.3f} {dp.mean:+13.2f}"
        else:
            cells = f"{'':>13} {'':>17} {'':>6} {'':>13}"
        vs_none = "" if name == "no guidance" else f"{paired_difference(ssim[name], ssim['no guidance']).mean:+14.3f}"
        print(f"{name:13} {mean_s:6.3f} {mean_p:6.2f} {cells} {vs_none:>14} {sum(ce[name]) / len(ce[name]):8.3f} "
              f"{secs[name] / len(ssim[name]):6.1f}")


if __name__ == "__main__":
    main()
