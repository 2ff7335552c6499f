"""Reading the YAML files users hand to the CLI and the experiment runner."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ConfigError


def read_yaml_mapping(path: str | Path, what: str = "config file", expects: str = "a mapping of option: value",
                      empty_ok: bool = True) -> dict:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a one-line error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold {expects}")
    return data
