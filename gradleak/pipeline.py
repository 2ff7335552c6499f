"""One attack, end to end: threat model → observed update → attack → metrics → report.

:func:`run_attack` is what ``gradleak attack`` calls and what sweeps and integrations reuse.
Each stage only sees what the previous stage hands it; the attack sees the
:class:`~gradleak.threat.Observation`, never the private batch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, UpdateError
from .threat import ClientUpdate, Observation, ThreatModel, UpdateConfig, simulate_client

if TYPE_CHECKING:  # the inversion package pulls in the attacks; import it only for type checkers
    from .attacks.inversion.invert import Reconstruction


@dataclass
class AttackConfig:
    """Every option of one attack run; the CLI and YAML files fill the same fields."""

    # client data and victim
    dataset: str = "digits"
    data_dir: str | None = None
    split: str = "test"
    model: str = "lenet"
    width: int | None = None
    init: str | None = None  # victim initialisation (models.INITS); None: the architecture's usual one
    trained_steps: int = 0
    batch_size: int = 4
    # client update
    client_mode: str = "eval"  # BN in "eval" (running statistics, as in IG's experiments) or "train" mode
    update: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch_size: int | None = None
    # threat model
    knows_labels: bool = False
    knows_bn_stats: bool = False
    knows_local_schedule: bool = True
    # attack
    labels: str = "auto"  # label-recovery strategy, or "auto" (the default strategy)
    label_aux: str = "none"  # "public": label recovery may use the public split's images; "none": dummies
    attack: str = "ig"
    iterations: int | None = None  # None: the preset's
    restarts: int = 1
    tv: float | None = None  # None: the preset's
    step_size: float | None = None  # Adam's step, normalised-input units; None: the preset's
    bn_prior: float = 0.0
    precision: str = "fp32"
    seed: int = 0
    # a recorded update (from --save-update or an FL integration) attacked instead of a simulated one
    observed_update: str | None = None
    # semantic labelling of the reconstructions
    labeler: str = "none"  # "clip" | "classifier" | "none"
    clip_model: str = "openai/clip-vit-base-patch32"
    prompts: str | None = None  # a prompt-set name ("default", "ensemble") or a file of templates
    class_names: str | None = None  # a file of class names (open vocabulary); default: the dataset's
    classifier_steps: int = 300  # training steps of the attacker's auxiliary classifier (public data)
    # semantic guidance of the reconstruction (CLIP or classifier), and label search by guidance
    guidance: str = "none"  # "none" | "oracle" (true labels, an upper bound) | "search"
    guide: str = "classifier"  # "clip" | "classifier"
    guidance_weight: float = 0.1
    search_space: str = "labels"
    compare_guidance: bool = False  # also run without guidance and report both SSIMs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttackConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown attack option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class AttackResult:
    """The outcome of one run: a JSON-able summary plus the tensors behind it."""

    summary: dict[str, Any]
    originals: torch.Tensor | None
    reconstruction: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    semantic: Any = None  # gradleak.semantic.SemanticLabels when a labeller ran


# Below this side length a total-variation prior only blurs: each pixel of an 8×8 digit is a stroke.
MIN_SIDE_FOR_TV = 16


def inversion_config(cfg: AttackConfig, input_shape: tuple[int, ...] | None = None):
    """The preset of ``cfg.attack`` with the run's overrides; without an explicit ``tv``, images
    smaller than MIN_SIDE_FOR_TV get no TV prior."""
    from .attacks.inversion import preset

    regs = dict(preset(cfg.attack).regularizers)
    if cfg.tv is not None:
        regs["tv"] = cfg.tv
    elif input_shape is not None and min(input_shape[-2:]) < MIN_SIDE_FOR_TV:
        regs.pop("tv", None)
    if cfg.bn_prior:
        regs["bn_stats"] = cfg.bn_prior
    return preset(
        cfg.attack,
        iterations=cfg.iterations,
        restarts=cfg.restarts,
        precision=cfg.precision,
        seed=cfg.seed,
        regularizers=regs,
        lr=cfg.step_size,
    )


def set_client_mode(model, mode: str) -> None:
    """The mode the client computes its update in; the server knows it (it ships the training code)."""
    if mode not in ("train", "eval"):
        raise ConfigError(f"unknown client mode {mode!r}; choose train or eval")
    model.train(mode == "train")


def prepare_client(cfg: AttackConfig, progress: bool = False):
    """Load data, build (and optionally train) the victim, and draw the private batch."""
    from .data import load_dataset
    from .models import build_model
    from .models.train import train_victim

    data = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.width, seed=cfg.seed, init=cfg.init)
    if cfg.trained_steps:
        public = load_dataset(cfg.dataset, "train", cfg.data_dir)
        train_victim(model, public.images, public.labels, cfg.trained_steps, data.mean, data.std,
                     seed=cfg.seed, progress=progress)
    set_client_mode(model, cfg.client_mode)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, idx = data.sample_batch(cfg.batch_size, gen)
    return data, model, x, y, idx


@dataclass
class AttackOutcome:
    """What the attacker recovered from one observation (no ground truth involved)."""

    labels: torch.Tensor
    label_method: str
    reconstruction: Reconstruction
    seconds: float
    guidance: Any = None  # gradleak.attacks.inversion.search.GuidanceOutcome when guided


def attack_observation(
    obs: Observation,
    cfg: AttackConfig,
    progress: bool = True,
    oracle_labels: torch.Tensor | None = None,
    public=None,
) -> AttackOutcome:
    """The attacker's side: labels (granted, or recovered from the gradient), then images.

    ``oracle_labels`` is the evaluator's ground truth, used only by ``guidance="oracle"`` (an
    upper-bound experiment); ``public`` is the attacker's public dataset for the classifier guide.
    """
    from .attacks.inversion import invert
    from .attacks.labels import DEFAULT_METHOD, recover_labels

    started = time.perf_counter()
    estimate = None
    if obs.labels is not None:
        labels, label_method = obs.labels, "granted"
    else:
        method = DEFAULT_METHOD if cfg.labels == "auto" else cfg.labels
        estimate = recover_labels(obs, method, label_aux_data(cfg.label_aux, public))
        labels, label_method = estimate.labels, estimate.method
    if cfg.guidance == "none":
        recon = invert(obs, labels, inversion_config(cfg, obs.input_shape), progress=progress)
        return AttackOutcome(labels, label_method, recon, time.perf_counter() - started)
    guided = run_guidance(obs, cfg, estimate if estimate is not None else labels, oracle_labels, public, progress)
    return AttackOutcome(guided.labels, label_method, guided.reconstruction, time.perf_counter() - started, guided)


def run_guidance(obs: Observation, cfg: AttackConfig, label_estimate, oracle_labels, public, progress: bool):
    """CLIP/classifier-guided reconstruction, or label search by guidance (Malcewicz et al. 2025)."""
    from .attacks.inversion.guidance import train_public_classifier
    from .attacks.inversion.search import run_guided

    if cfg.guidance == "oracle" and oracle_labels is None:
        raise ConfigError("oracle guidance needs the true labels, which only the evaluator has")
    clip_model = aux = None
    if cfg.guide == "clip":
        from .semantic import load_clip

        clip_model = load_clip(cfg.clip_model)
    elif cfg.guide == "classifier":
        if public is None:
            raise ConfigError("the classifier guide needs public data to train on")
        aux = train_public_classifier(public.images, public.labels, public.num_classes,
                                      steps=cfg.classifier_steps, seed=cfg.seed)
    return run_guided(obs, label_estimate, inversion_config(cfg, obs.input_shape), mode=cfg.guidance, guide_name=cfg.guide,
                      weight=cfg.guidance_weight, true_labels_for_oracle=oracle_labels,
                      class_names=obs.class_names, clip_model=clip_model, aux_classifier=aux,
                      progress=progress, search_space=cfg.search_space)


def evaluate_outcome(outcome: AttackOutcome, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Score an outcome against the private batch (only the evaluator ever sees it)."""
    from .metrics import evaluate_images, label_accuracy, random_baseline

    recon = outcome.reconstruction
    ev = evaluate_images(recon.images, x)
    return {
        "true_labels": y.tolist(),
        "recovered_labels": outcome.labels.tolist(),
        "label_method": outcome.label_method,
        "label_accuracy": label_accuracy(outcome.labels, y),
        "label_random_baseline": random_baseline(y, num_classes),
        "ssim": ev.ssim,
        "psnr": ev.psnr,
        "assignment": ev.assignment,
        "per_image_ssim": ev.per_image_ssim,
        "per_image_psnr": ev.per_image_psnr,
        "matching_loss": recon.matching_loss,
        "restart_losses": recon.restart_losses,
        "iterations": recon.iterations,
        "seconds": outcome.seconds,
        "seconds_per_iteration": recon.seconds / (recon.iterations * len(recon.restart_losses)),
    }


def run_attack(
    cfg: AttackConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    save_update_to: str | Path | None = None,
) -> AttackResult:
    """Simulate the client, observe its update under the threat model, attack it, evaluate it."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data, model, x, y, _ = prepare_client(cfg, progress)

    # The client: computes its update from the private batch (or a recorded update is replayed).
    if cfg.observed_update:
        update = load_update(cfg.observed_update)
    else:
        update = simulate_client(
            model, x, y,
            UpdateConfig(cfg.update, cfg.local_steps, cfg.local_lr, cfg.local_batch_size),
            data.mean, data.std,
        )
    if save_update_to is not None:
        save_update(update, save_update_to)
    # The server: sees only what the threat model grants.
    obs = threat_model(cfg).observe(model, update, data.input_shape, data.num_classes, data.mean, data.std,
                                    batch_size=x.shape[0], labels=y, class_names=data.class_names)
    public = None
    if (cfg.guidance != "none" and cfg.guide == "classifier") or cfg.label_aux == "public":
        from .data import load_dataset

        public = load_dataset(cfg.dataset, public_split(cfg.split), cfg.data_dir)
    outcome = attack_observation(obs, cfg, progress, oracle_labels=y, public=public)
    summary = evaluate_outcome(outcome, x, y, data.num_classes)
    summary.update(class_names=data.class_names, config=cfg.to_dict(), inversion=inversion_config(cfg, data.input_shape).to_dict())
    if outcome.guidance is not None:
        from .attacks.inversion.search import evaluate_guidance
        from .metrics import evaluate_images

        summary.update(outcome.guidance.summary())
        summary.update(evaluate_guidance(outcome.guidance, y, data.num_classes))
        if cfg.compare_guidance:
            plain = attack_observation(obs, replace(cfg, guidance="none"), progress)
            summary["ssim_no_guidance"] = evaluate_images(plain.reconstruction.images, x).ssim
            summary["ssim_with_guidance"] = summary["ssim"]
    semantic = None
    if cfg.labeler != "none":
        labeller, names = build_semantic_labeller(cfg, data)
        semantic = label_reconstructions(labeller, outcome, names, data.num_classes)
        summary.update(evaluate_semantics(labeller, semantic, x, y, data.class_names, summary["assignment"]))
        summary["semantic_table"] = semantic.to_dict()
    result = AttackResult(summary, x, outcome.reconstruction.images, data.class_names, semantic)
    if out is not None:
        write_outputs(result, out)
    return result


def threat_model(cfg: AttackConfig) -> ThreatModel:
    return ThreatModel(knows_labels=cfg.knows_labels, knows_bn_stats=cfg.knows_bn_stats,
                       knows_local_schedule=cfg.knows_local_schedule)


def save_update(update: ClientUpdate, path: str | Path) -> None:
    """Save an update as a plain tensor file (loadable with ``torch.load(weights_only=True)``)."""
    payload = {"kind": update.kind, "names": update.names, "tensors": update.tensors,
               "local_steps": update.local_steps, "lr": update.lr, "local_batch_size": update.local_batch_size}
    torch.save(payload, path)


def load_update(path: str | Path) -> ClientUpdate:
    """Load an update saved by :func:`save_update`; tensors only, no code is unpickled."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise UpdateError(f"observed update file not found: {path}") from None
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise UpdateError(f"cannot read observed update {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("tensors"), (list, tuple)):
        raise UpdateError(f"{path} is not a gradleak update file (expected a dict with a 'tensors' list)")
    tensors = list(payload["tensors"])
    names = list(payload.get("names") or [f"param{i}" for i in range(len(tensors))])
    kind = payload.get("kind", "fedsgd")
    if kind not in ("fedsgd", "fedavg"):
        raise UpdateError(f"{path}: unknown update kind {kind!r}")
    return ClientUpdate(kind, names, tensors, int(payload.get("local_steps") or 1), payload.get("lr"),
                        payload.get("local_batch_size"))


def label_aux_data(label_aux: str, public=None):
    """What label recovery may use under ``label_aux``: nothing ("none", dummy inputs) or the
    attacker's ``public`` dataset ("public")."""
    if label_aux == "none":
        return None
    if label_aux != "public":
        raise ConfigError(f"unknown label_aux {label_aux!r}; choose none or public")
    if public is None:
        raise ConfigError("label_aux=public needs the attacker's public data")
    from .attacks.labels import AuxData

    return AuxData(public.images, public.labels)


def public_split(split: str) -> str:
    """The split the attacker may use as public data: the one the private batch is not drawn from."""
    return "train" if split == "test" else "test"


def build_semantic_labeller(cfg: AttackConfig, data):
    """The labeller the attacker uses, and the class-name vocabulary it labels with."""
    from .data import load_dataset
    from .semantic import build_labeller, load_class_names

    names = load_class_names(cfg.class_names) if cfg.class_names else list(data.class_names)
    if cfg.labeler == "clip":
        return build_labeller("clip", model=cfg.clip_model, templates=cfg.prompts), names
    if cfg.labeler == "classifier":
        public = load_dataset(cfg.dataset, public_split(cfg.split), cfg.data_dir)
        labeller = build_labeller("classifier", images=public.images, labels=public.labels,
                                  class_names=public.class_names, steps=cfg.classifier_steps, seed=cfg.seed)
        return labeller, names
    return build_labeller(cfg.labeler), names


def label_reconstructions(labeller, outcome: AttackOutcome, names: list[str], num_outputs: int):
    """The attacker names its reconstructions; when the recovered output indices coincide with
    the vocabulary (same size), their counts constrain the assignment."""
    from .semantic import label_images

    counts = None
    if len(names) == num_outputs:
        counts = torch.bincount(outcome.labels.long(), minlength=num_outputs).tolist()
    semantic = label_images(labeller, outcome.reconstruction.images, names, counts)
    restarts = outcome.reconstruction.restart_images
    if len(restarts) > 1:
        from .semantic import aggregate_probabilities, align_rounds, constrained_assignment

        tables = [labeller.probabilities(img, names) for img in restarts]
        # Align every restart to the kept one (row order of `semantic`).
        best = next((i for i, r in enumerate(restarts) if r is outcome.reconstruction.images), 0)
        order = [best] + [i for i in range(len(restarts)) if i != best]
        aligned = align_rounds([restarts[i] for i in order], [tables[i] for i in order])
        agg = aggregate_probabilities(aligned)
        semantic.aggregated = (
            constrained_assignment(agg.clamp_min(1e-12).log(), counts) if counts is not None
            else agg.argmax(dim=1).tolist()
        )
    return semantic


def _name_ids(names: list[str], vocabulary: dict[str, int]) -> list[int]:
    # Names outside the dataset's classes get fresh ids, so they never count as correct.
    return [vocabulary.setdefault(n, len(vocabulary)) for n in names]


def evaluate_semantics(labeller, semantic, x: torch.Tensor, y: torch.Tensor, true_names: list[str],
                       assignment: list[int]) -> dict[str, Any]:
    """Semantic accuracy by class *name*, order-free and under the image matching; the labeller
    on the originals is the upper bound."""
    from .metrics import label_accuracy, matched_label_accuracy, random_baseline

    vocab = {n: i for i, n in enumerate(true_names)}
    truth = [int(t) for t in y]
    pred = _name_ids(semantic.names(), vocab)
    top1 = _name_ids([semantic.class_names[i] for i in semantic.top1], vocab)
    original = labeller.probabilities(x, semantic.class_names).argmax(dim=1).tolist()
    original_ids = _name_ids([semantic.class_names[i] for i in original], vocab)
    out = {
        "semantic_labels": semantic.names(),
        "semantic_accuracy": label_accuracy(pred, truth),
        "semantic_accuracy_top1": label_accuracy(top1, truth),
        "semantic_matched_accuracy": matched_label_accuracy(pred, truth, assignment),
        "semantic_random_baseline": random_baseline(truth, len(semantic.class_names)),
        "original_semantic_accuracy": label_accuracy(original_ids, truth),
        "original_semantic_labels": [semantic.class_names[i] for i in original],
    }
    aggregated = getattr(semantic, "aggregated", None)
    if aggregated is not None:
        agg_ids = _name_ids([semantic.class_names[i] for i in aggregated], vocab)
        out["semantic_accuracy_aggregated"] = label_accuracy(agg_ids, truth)
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file over a good one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_outputs(result: AttackResult, out: Path) -> None:
    from .viz import save_grid

    s = result.summary
    names = result.class_names
    perm = s["assignment"]
    top = [f"{names[t]}" for t in s["true_labels"]]
    # Reconstruction i was matched to original perm[i]; show it under that original.
    recon = torch.empty_like(result.reconstruction)
    bottom = [""] * len(perm)
    for i, j in enumerate(perm):
        recon[j] = result.reconstruction[i]
        bottom[j] = f"{names[s['recovered_labels'][i]]} {s['per_image_ssim'][i]:.2f}"
    save_grid(out / "grid.png", [result.originals, recon], [top, bottom],
              row_titles=["original", "reconstruction"])
    if result.semantic is not None:
        from .viz import save_probability_table

        save_probability_table(out / "probabilities.png", result.semantic.probabilities, result.semantic.class_names)
    write_json(out / "result.json", s)
