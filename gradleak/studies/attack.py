"""One attack, end to end: config → client → observation → attacker → evaluation → files.

:func:`run_attack` is what ``gradleak attack`` calls and what sweeps reuse. The attacker
(:func:`attack_observation`, :func:`~gradleak.studies.naming.name_batches`) only ever sees the
:class:`~gradleak.threat.Observation` and its own side models; the true batch reaches
:mod:`~gradleak.studies.evaluate` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import AttackConfig
from ..errors import ConfigError
from ..runtime import resolve_device, resolve_precision
from ..threat import Observation
from .checks import check_inputs
from .client import Client, client_update_with_batch, observe, prepare_client
from .evaluate import evaluate_guidance, evaluate_naming, evaluate_outcome, no_truth_summary
from .naming import name_batches
from .side import AttackerSide

# Below this side length a total-variation prior only blurs: each pixel of an 8×8 digit is a stroke.
MIN_SIDE_FOR_TV = 16


@dataclass
class AttackOutcome:
    """What the attacker recovered from one observation (no ground truth involved)."""

    labels: torch.Tensor
    label_method: str
    reconstruction: Any  # gradleak.attacks.inversion.Reconstruction
    seconds: float
    guidance: Any = None  # gradleak.attacks.inversion.search.GuidanceOutcome when guided
    schedule: Any = None  # gradleak.attacks.inversion.fedavg.ScheduleEstimate when unrolled without the schedule


@dataclass
class AttackResult:
    """The outcome of one run: a JSON-able summary plus the tensors behind it."""

    summary: dict[str, Any]
    originals: torch.Tensor | None
    reconstruction: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    semantic: Any = None  # gradleak.studies.naming.Naming when a labeller ran


def inversion_config(cfg: AttackConfig, input_shape: tuple[int, ...] | None = None):
    """The preset of ``cfg.inversion.attack`` with the run's overrides; without an explicit ``tv``,
    images smaller than MIN_SIDE_FOR_TV get no TV prior."""
    from ..attacks.inversion import preset

    inv = cfg.inversion
    regs = dict(preset(inv.attack).regularizers)
    if inv.tv is not None:
        regs["tv"] = inv.tv
    elif input_shape is not None and min(input_shape[-2:]) < MIN_SIDE_FOR_TV:
        regs.pop("tv", None)
    if inv.bn_prior:
        regs["bn_stats"] = inv.bn_prior
    precision = resolve_precision(inv.precision, resolve_device(cfg.run.device))  # auto → fp32 or bf16, here
    return preset(inv.attack, iterations=inv.iterations, restarts=inv.restarts, precision=precision,
                  seed=cfg.run.seed, regularizers=regs, lr=inv.step_size, fedavg_matching=inv.fedavg_matching)


def _on_cpu(recon):
    """A reconstruction made on the device, moved (in place) to the CPU, where the evaluator and the
    files read it."""
    recon.images, recon.labels = recon.images.cpu(), recon.labels.cpu()
    recon.restart_images = [x.cpu() for x in recon.restart_images]
    return recon


def attack_observation(obs: Observation, cfg: AttackConfig, side: AttackerSide, progress: bool = True,
                       oracle_labels: torch.Tensor | None = None) -> AttackOutcome:
    """The attacker: labels (granted, or recovered from the gradient), then images (guided or not).

    ``oracle_labels`` is the evaluator's ground truth, used only by ``guidance="oracle"`` (an
    upper-bound experiment, not an attack).
    """
    from ..attacks.inversion import invert
    from ..attacks.inversion.search import run_guided
    from ..attacks.labels import DEFAULT_METHOD, recover_labels

    started = time.perf_counter()
    obs = obs.to(side.device)  # an observation from elsewhere (a capture, the CPU) joins the attacker's models
    estimate = None
    if obs.labels is not None:
        labels, label_method = obs.labels.cpu(), "granted"
    else:
        method = DEFAULT_METHOD if cfg.recovery.labels == "auto" else cfg.recovery.labels
        # Label recovery is analytic and small: it runs on the CPU whatever the device.
        estimate = recover_labels(obs.to("cpu"), method, side.label_aux())
        labels, label_method = estimate.labels, estimate.method
    inv = inversion_config(cfg, obs.input_shape)
    s = cfg.semantic
    if s.guidance == "none":
        from ..attacks.inversion.fedavg import with_schedule

        # Unrolled matching without a granted schedule: estimate (η, K) from the update first.
        obs, schedule = with_schedule(obs, labels, inv) if inv.fedavg_matching != "gradient" else (obs, None)
        recon = _on_cpu(invert(obs, labels, inv, progress=progress))
        return AttackOutcome(labels, label_method, recon, time.perf_counter() - started, schedule=schedule)
    if s.guidance == "oracle" and oracle_labels is None:
        raise ConfigError("oracle guidance needs the true labels, which only the evaluator has")
    guided = run_guided(obs, estimate if estimate is not None else labels, inv, mode=s.guidance, guide_name=s.guide,
                        weight=s.guidance_weight, true_labels_for_oracle=oracle_labels, class_names=obs.class_names,
                        progress=progress, search_space=s.search_space, views=s.guide_views,
                        guide_every=s.guide_every, clip_input_size=s.clip_input_size,
                        schedule=s.search_schedule, **side.guide_models())
    _on_cpu(guided.reconstruction)
    return AttackOutcome(guided.labels, label_method, guided.reconstruction, time.perf_counter() - started, guided)


def run_attack(cfg: AttackConfig, out_dir: str | Path | None = None, progress: bool = True,
               save_update_to: str | Path | None = None, save_truth: bool = False) -> AttackResult:
    """Simulate the client (or replay a recorded update), observe it under the threat model, attack
    it, and evaluate it against the private batch when there is one."""
    from ..threat.io import load_update, save_update
    from .outputs import write_outputs

    check_inputs(cfg)
    if cfg.client.observed_update and cfg.client.batches > 1:
        raise ConfigError("a recorded update is one batch: --batches needs a simulated client")
    recorded = load_update(cfg.client.observed_update) if cfg.client.observed_update else None
    torch.manual_seed(cfg.run.seed)
    client: Client = prepare_client(cfg, progress)
    data = client.data
    if recorded is not None:
        update, x, y = replay(recorded, client, cfg)
    else:
        update, x, y = client_update_with_batch(cfg, client)  # under secagg: the aggregate and all N·B images
    if save_update_to is not None:
        batch_facts = {"batch_size": int(x.shape[0])} if x is not None else {}
        save_update(save_update_to, update, client.model, facts={**facts(cfg, client), **batch_facts},
                    truth=(x, y) if save_truth and y is not None else None)
    batch_size = x.shape[0] if x is not None else int(recorded.facts.get("batch_size") or cfg.data.batch_size)
    obs = observe(cfg, client.model, data, update, batch_size, labels=y)
    side = AttackerSide(cfg, data).build()
    outcome = attack_observation(obs, cfg, side, progress, oracle_labels=y)
    summary = evaluate_outcome(outcome, x, y, data.num_classes) if y is not None else no_truth_summary(outcome)
    summary.update(class_names=data.class_names, config=cfg.to_dict(),
                   inversion=inversion_config(cfg, data.input_shape).to_dict())
    # What auto resolved to on this machine (config holds what was asked for).
    summary.update(device=str(obs.device), precision_resolved=summary["inversion"]["precision"])
    summary.update({"defenses": update.defenses} if update.defenses else {})  # what the client applied, ε included
    if update.defenses:  # naive vs defence-aware side by side: knows_defense is the axis
        from ..attacks.inversion.defense_aware import pieces

        summary.update(knows_defense=cfg.threat.knows_defense, defense_aware=pieces(
            obs, summary["inversion"]["objective"], cfg.semantic.guidance == "none", outcome.label_method != "granted"))
    summary.update({"schedule_estimate": outcome.schedule.to_dict()} if outcome.schedule is not None else {})
    if outcome.guidance is not None:
        summary.update(outcome.guidance.summary())
        if y is not None:
            summary.update(evaluate_guidance(outcome.guidance, y, data.num_classes))
            if cfg.semantic.compare_guidance:
                from ..metrics import evaluate_images

                plain = attack_observation(obs, cfg.with_options(guidance="none"), side, progress)
                summary["ssim_no_guidance"] = evaluate_images(plain.reconstruction.images, x).ssim
                summary["ssim_with_guidance"] = summary["ssim"]
    if side.uses_classifier:  # the stand-in's own accuracy, beside what it says of the reconstructions
        summary["classifier_card"] = side.classifier_card.to_dict()
    naming = None
    if cfg.semantic.labeler != "none":
        outcomes, truths = [outcome], [(x, y)]
        for r in range(1, cfg.client.batches):  # the client's further batches, under the same model
            update_r, xr, yr = client_update_with_batch(cfg, client, client.next_batch())
            obs_r = observe(cfg, client.model, data, update_r, batch_size, labels=yr)
            outcomes.append(attack_observation(obs_r, cfg.with_options(seed=cfg.run.seed + r), side, progress))
            truths.append((xr, yr))
        naming = name_batches(side, outcomes, data.num_classes)
        summary["semantic_labels"] = [naming.class_names[i] for i in naming.top1]
        if y is not None:
            summary.update(evaluate_naming(side.labeller, naming, truths, data.class_names, summary["assignment"]))
        summary["semantic_table"] = {"class_names": naming.class_names, "top1": naming.top1,
                                     "label_map": naming.label_map, "probabilities": [
                                         [round(float(p), 6) for p in row] for row in naming.tables[0]]}
    result = AttackResult(summary, x, outcome.reconstruction.images, data.class_names, naming)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def facts(cfg: AttackConfig, client: Client) -> dict[str, Any]:
    """The task facts a recorded update carries beside the fingerprint."""
    d = client.data
    return {"dataset": cfg.data.dataset, "model": cfg.victim.model, "input_shape": list(d.input_shape),
            "num_classes": d.num_classes, "batch_size": int(client.images.shape[0]), "client_mode": cfg.client.client_mode,
            "mean": list(d.mean) if d.mean is not None else None, "std": list(d.std) if d.std is not None else None}


def replay(recorded, client: Client, cfg: AttackConfig):
    """A recorded update against ``client``'s model: loads stored weights, checks the fingerprint,
    warns on a degenerate update, and returns (update, images, labels) — the ground truth only
    when the file stores it (a re-sampled batch would be meaningless to score against)."""
    import warnings

    from ..errors import UpdateError

    if recorded.weights is not None:
        try:
            client.model.load_state_dict(recorded.weights)
        except RuntimeError as exc:
            raise UpdateError(f"{cfg.client.observed_update}: its stored weights do not fit "
                              f"{cfg.victim.model}: {str(exc).splitlines()[0]}") from None
    recorded.check_model(client.model, cfg.client.observed_update)
    mode = recorded.facts.get("client_mode")
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in client.model.modules())
    if has_bn and mode and mode != cfg.client.client_mode:  # BatchNorm computes another function in the other mode
        raise UpdateError(f"{cfg.client.observed_update} was computed in {mode} mode; pass --client-mode {mode}")
    shape = recorded.facts.get("input_shape")
    if shape is not None and tuple(shape) != tuple(client.data.input_shape):
        raise UpdateError(f"{cfg.client.observed_update} was recorded on inputs {tuple(shape)}, "
                          f"{cfg.data.dataset} has {tuple(client.data.input_shape)}")
    why = recorded.degenerate()
    if why:
        warnings.warn(f"{cfg.client.observed_update}: {why}", stacklevel=2)
    if recorded.truth is None:
        return recorded.update, None, None
    return recorded.update, recorded.truth[0], recorded.truth[1]
