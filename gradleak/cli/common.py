"""Shared CLI plumbing: YAML configs merged under explicitly given flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config_files import read_yaml_mapping
from ..models import DEFAULT_INIT, INITS


def init_option(f):
    """``--init``: the victim's initialisation by name (None: the architecture's own)."""
    usual = ", ".join(f"{init} for {model}" for model, init in DEFAULT_INIT.items())
    return click.option("--init", type=click.Choice(INITS.names()), default=None,
                        help=f"Victim initialisation (default: the architecture's own: {usual}).")(f)


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = read_yaml_mapping(path)
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def explicit_options(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (not click defaults), so they override a YAML file."""
    out = {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            out[name] = value
    return out
