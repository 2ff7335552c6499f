"""CLI flags generated from :mod:`gradleak.config`: one declaration per option, choices from the registries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import click

from ..config import OPTIONS, AttackConfig, choices_of, default, flatten, option_types
from ..config_files import read_yaml_mapping


def _flag(name: str) -> str:
    return OPTIONS[name].metadata.get("flag") or "--" + name.replace("_", "-")


def _click_option(name: str):
    f = OPTIONS[name]
    meta = f.metadata
    value = default(name)
    help_text = meta["help"] + ("" if value is None else f"  [default: {str(value).lower() if isinstance(value, bool) else value}]")
    types = option_types(name)
    decls = [_flag(name)] + ([meta["short"]] if meta.get("short") else [])
    if types == (tuple,):  # repeatable: --flag A --flag B
        return click.option(*decls, name, multiple=True, default=(), help=meta["help"] + "  (repeatable)")
    if bool in types:
        flag = _flag(name)
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    names = choices_of(f)
    if names is not None:
        kind: Any = click.Choice(names)
    elif int in types:
        kind = int
    elif float in types:
        kind = float
    else:
        kind = str
    return click.option(*decls, name, type=kind, default=None, help=help_text)


def config_options(include: Iterable[str] | None = None, exclude: Iterable[str] = ()):
    """A decorator adding one flag per config option (all of them, or ``include``), minus ``exclude``.
    Flags default to None, so only what the user typed overrides a YAML file or the config's default."""
    wanted = [n for n in (include if include is not None else OPTIONS) if n not in set(exclude)
              and OPTIONS[n].metadata.get("cli", True)]

    def decorate(fn):
        for name in reversed(wanted):
            fn = _click_option(name)(fn)
        return fn

    return decorate


def pop_options(params: dict[str, Any]) -> dict[str, Any]:
    """Remove the config options from click's ``params`` and return those the user gave."""
    given = {k: params.pop(k) for k in list(params) if k in OPTIONS}
    return {k: v for k, v in given.items() if v is not None and v != ()}


def build_config(params: dict[str, Any], config_file: str | Path | None = None,
                 defaults: dict[str, Any] | None = None, **fixed: Any) -> AttackConfig:
    """A command's ``defaults`` < YAML file (flat or nested) < flags the user typed < ``fixed``;
    validated (one-line errors). Only config options are taken out of ``params``."""
    merged = dict(defaults or {})
    merged.update(flatten(read_yaml_mapping(config_file), str(config_file)) if config_file else {})
    merged.update(pop_options(params))
    merged.update(fixed)
    return AttackConfig.from_dict(merged)


config_file_option = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                                  help="YAML file of options (flat, or nested by section); flags typed on the "
                                       "command line win.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace the output folder's earlier results instead of refusing.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars, only the summary.")
