"""Prompt templates and class-name lists for zero-shot labelling.

A template is a sentence with a ``{c}`` slot for the class name. Prompt ensembles
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", §3.1.4) average the text embeddings of several templates per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..registry import Registry

SLOT = "{c}"
DEFAULT_TEMPLATE = "a photo of a {c}."
GUIDANCE_TEMPLATE = "image of a {c}"

# A subset of the CIFAR-10 templates shipped with CLIP's zero-shot notebook, chosen to
# describe degraded pictures (blurry, pixelated, low contrast) like reconstructions are.
CIFAR_ENSEMBLE = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a pixelated photo of a {c}.",
    "a photo of the small {c}.",
    "a bad photo of a {c}.",
    "a jpeg corrupted photo of a {c}.",
    "a photo of the {c}.",
)

TEMPLATE_SETS: Registry[tuple[str, ...]] = Registry("prompt set")
TEMPLATE_SETS.add("default", (DEFAULT_TEMPLATE,))
TEMPLATE_SETS.add("ensemble", CIFAR_ENSEMBLE)
TEMPLATE_SETS.add("guidance", (GUIDANCE_TEMPLATE,))


def fill(template: str, class_name: str) -> str:
    """The prompt for one class; plain replacement so other braces in a user's template are kept."""
    return template.replace(SLOT, class_name)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Validate templates (non-empty, each with a ``{c}`` slot) and return them as a tuple."""
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ConfigError("no prompt templates given; give at least one template containing {c}")
    for t in templates:
        if SLOT not in t:
            raise ConfigError(f"prompt template {t!r} has no {SLOT} slot for the class name")
    return templates


def _read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file {str(p)!r}: {exc.__class__.__name__}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ConfigError(f"{what} file {str(p)!r} is empty")
    return lines


def load_prompts(path: str | Path) -> tuple[str, ...]:
    """Templates from a text file: one per line, each containing ``{c}``; blank and ``#`` lines skipped."""
    lines = _read_lines(path, "prompt")
    for number, line in enumerate(lines, 1):
        if SLOT not in line:
            raise ConfigError(f"prompt file {str(path)!r}: template {number} ({line!r}) has no {SLOT} slot")
    return tuple(lines)


def load_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (any open vocabulary); blank and ``#`` lines skipped."""
    names = _read_lines(path, "class-name")
    return check_class_names(names)


def check_class_names(names: Sequence[str]) -> list[str]:
    """Reject empty lists and duplicates (a duplicate would make two columns mean one class)."""
    names = [str(n) for n in names]
    if not names:
        raise ConfigError("no class names given")
    seen: set[str] = set()
    for n in names:
        if not n.strip():
            raise ConfigError("a class name is empty")
        if n in seen:
            raise ConfigError(f"class name {n!r} appears twice")
        seen.add(n)
    return names


def resolve_templates(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from a set name ("default", "ensemble"), a file path, a single template or a list."""
    if spec is None:
        return (DEFAULT_TEMPLATE,)
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return TEMPLATE_SETS.get(spec)
        if SLOT in spec:
            return (spec,)
        if Path(spec).is_file():
            return load_prompts(spec)
        raise ConfigError(
            f"prompts {spec!r} is neither a prompt set ({', '.join(TEMPLATE_SETS)}), "
            f"a template with {SLOT}, nor an existing file"
        )
    return check_templates(spec)
