"""Shared CLI plumbing: YAML configs merged under explicitly given flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from ..errors import ConfigError


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def explicit_options(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (not click defaults), so they override a YAML file."""
    out = {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            out[name] = value
    return out
