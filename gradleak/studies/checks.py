"""Inputs checked before any expensive step: a typo fails in a second, not after the inversion."""

from __future__ import annotations

from pathlib import Path

from ..config import AttackConfig, validate
from ..errors import ConfigError
from ..runtime import resolve_device
from .side import AttackerSide


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or Path(value).expanduser().exists() or value.count("/") > 1


def check_inputs(cfg: AttackConfig) -> AttackConfig:
    """Validate every option and every file the run will read; ConfigError on the first problem."""
    validate(cfg)
    resolve_device(cfg.run.device)  # --device cuda without CUDA: one line, before any work
    d, s, c = cfg.data, cfg.semantic, cfg.client
    if d.data_dir is not None and not Path(d.data_dir).expanduser().exists():
        raise ConfigError(f"data folder {d.data_dir} does not exist")
    if c.observed_update is not None and not Path(c.observed_update).expanduser().is_file():
        raise ConfigError(f"observed update file not found: {c.observed_update}")
    if c.defense:  # parameters and order, one-line errors; a recorded update was already sent as it is
        from ..defenses import build_defenses

        build_defenses(c.defense)
        if c.observed_update is not None:
            raise ConfigError("--defense applies to a simulated client; a recorded update is already what it sent")
    if c.batches > 1 and s.labeler == "none":
        raise ConfigError("--batches pools the names of several batches: choose --labeler classifier or clip")
    if s.classifier is not None and not Path(s.classifier).expanduser().is_file():
        raise ConfigError(f"classifier file not found: {s.classifier}")
    if s.class_names is not None:
        from ..vision import load_class_names

        load_class_names(s.class_names)  # missing, empty or duplicated names are one-line errors
    if AttackerSide(cfg, None).uses_clip:
        if _looks_like_path(s.clip_model) and not (Path(s.clip_model).expanduser() / "config.json").is_file():
            raise ConfigError(f"CLIP model folder {s.clip_model} not found (it needs a config.json: a folder "
                              "written by CLIPModel.save_pretrained)")
        if s.prompts is not None:
            from ..vision.prompts import resolve_templates

            resolve_templates(s.prompts)
    return cfg
