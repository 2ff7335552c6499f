"""The options of a gradleak run: one typed, nested config that the CLI, YAML files, sweeps, the
label sweep, rounds and the Flower demo all read.

An :class:`AttackConfig` has one section per stage of the pipeline — data, victim, client update,
threat model, label recovery, inversion, semantics/guidance, run. Every option has a unique name
across sections, so a YAML file may be flat (``iterations: 50``) or nested
(``inversion: {iterations: 50}``), and sweep ids hash the flat view (ids of older stores stay valid).

Each option is declared once with :func:`option`: its default, help text, the values it admits
(a registry, looked up lazily, or a fixed tuple) and its range. :func:`validate` checks types,
ranges and names with one-line errors naming the key; the CLI's flags are generated from the same
declarations (``gradleak.cli.options``), so a new registry entry shows up in ``--help``.
"""

from __future__ import annotations

import importlib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterator

from .errors import ConfigError

# Registries that back an option's choices, imported only when needed (they pull in torch).
REGISTRIES = {
    "dataset": ("gradleak.data", "DATASETS"),
    "model": ("gradleak.models", "MODELS"),
    "init": ("gradleak.models", "INITS"),
    "labels": ("gradleak.attacks.labels", "LABEL_STRATEGIES"),
    "attack": ("gradleak.attacks.inversion", "PRESETS"),
    "labeler": ("gradleak.semantic.labellers", "LABELLERS"),
    "guidance": ("gradleak.attacks.inversion.search", "GUIDANCE_MODES"),
    "guide": ("gradleak.attacks.inversion.guidance", "GUIDES"),
    "search_space": ("gradleak.attacks.inversion.search", "SEARCH_SPACES"),
    "defense": ("gradleak.defenses", "DEFENSES"),
}


def option(default: Any = None, help: str = "", *, choices: str | tuple | None = None, extra: tuple = (),
           ge: float | None = None, gt: float | None = None, flag: str | None = None, short: str | None = None,
           cli: bool = True) -> Any:
    """Declare one option. ``choices``: a :data:`REGISTRIES` key or a tuple of values; ``extra``:
    values admitted beside the registry's names; ``ge``/``gt``: inclusive / exclusive lower bound;
    ``flag``: the CLI flag when it is not ``--field-name``."""
    meta = {"help": help, "choices": choices, "extra": extra, "ge": ge, "gt": gt, "flag": flag, "short": short,
            "cli": cli}
    return field(default=default, metadata=meta)


def choices_of(f) -> list[str] | None:
    """The values option ``f`` admits, registry names first (None: any value of its type)."""
    spec = f.metadata.get("choices")
    if spec is None:
        return None
    if isinstance(spec, tuple):
        names = list(spec)
    else:
        module, attr = REGISTRIES[spec]
        registry = getattr(importlib.import_module(module), attr)
        names = list(registry.names() if hasattr(registry, "names") else registry)
    return names + [e for e in f.metadata.get("extra", ()) if e not in names]


@dataclass
class DataConfig:
    dataset: str = option("digits", "Client data: a registered dataset (digits is embedded).", choices="dataset")
    data_dir: str | None = option(None, "Folder with cifar-10-batches-py (or its parent); default: "
                                        "$GRADLEAK_CIFAR10_DIR.")
    split: str = option("test", "Split the private batches are drawn from; the attacker's public data is the other.",
                        choices=("train", "test"))
    batch_size: int = option(4, "The client's private batch size.", ge=1, short="-b")


@dataclass
class VictimConfig:
    model: str = option("lenet", "Victim architecture.", choices="model")
    width: int | None = option(None, "Model width (default: the architecture's).", ge=1)
    init: str | None = option(None, "Victim initialisation (default: the architecture's own: dlg for lenet, "
                                    "he for convnet and resnet18).", choices="init")
    trained_steps: int = option(0, "Train the victim this many SGD steps on the public split first.", ge=0)


@dataclass
class ClientConfig:
    client_mode: str = option("eval", "BN mode of the client's update: eval (running statistics) or train "
                                      "(batch statistics).", choices=("eval", "train"))
    update: str = option("fedsgd", "What the client sends: a gradient or a FedAvg weight delta.",
                         choices=("fedsgd", "fedavg"))
    local_steps: int = option(1, "FedAvg local SGD steps.", ge=1)
    local_lr: float = option(0.1, "FedAvg local step size.", gt=0)
    local_batch_size: int | None = option(None, "FedAvg local mini-batch (default: the whole batch).", ge=1)
    batches: int = option(1, "Updates the attacker observes from this client, each for a fresh private batch under "
                             "the same model; names are pooled across them through the label map.", ge=1)
    observed_update: str | None = option(None, "Attack this recorded update file (from --save-update or a "
                                               "Flower capture) instead of simulating the client.")
    defense: tuple[str, ...] = option((), "Defences the client applies, in order: NAME or NAME:key=value,… "
                                          "(e.g. clip:C=1, dp-sgd:C=1,sigma=0.5).", choices="defense")


@dataclass
class ThreatConfig:
    knows_labels: bool = option(False, "The threat model grants the true labels.")
    knows_bn_stats: bool = option(False, "The threat model grants the BN statistics of the client's batch.")
    knows_local_schedule: bool = option(True, "FedAvg: the attacker knows the client's lr and local steps.")
    knows_defense: bool = option(False, "The attacker knows the client's defences and their parameters (not the "
                                        "noise or the mask) and adapts the attack to them.")


@dataclass
class RecoveryConfig:
    labels: str = option("auto", "Label-recovery strategy when labels are not granted (auto: the default one).",
                         choices="labels", extra=("auto",))
    label_aux: str = option("none", "public: label recovery may use the public split's images instead of dummies.",
                            choices=("none", "public"))


@dataclass
class InversionOptions:
    attack: str = option("ig", "Inversion preset: ig (Inverting Gradients) or dlg (Deep Leakage).", choices="attack")
    iterations: int | None = option(None, "Optimisation steps (default: the preset's).", ge=1)
    restarts: int = option(1, "Independent restarts; the lowest matching loss is kept.", ge=1)
    tv: float | None = option(None, "Total-variation weight (default: the preset's).", ge=0)
    step_size: float | None = option(None, "Adam step in normalised-input units (default: the preset's).", gt=0)
    bn_prior: float = option(0.0, "BN-statistics prior weight.", ge=0)
    precision: str = option("fp32", "Autocast precision of the matching loss; auto: bf16 where the device "
                                    "computes bf16 natively (detected), else fp32.", choices=("auto", "fp32", "bf16"))
    fedavg_matching: str = option("gradient", "FedAvg updates: match the dummies' gradient to the delta read as "
                                              "−Δ/(Kη) (gradient), or simulate the client's K local steps on them "
                                              "and match the simulated delta (unrolled; -checkpoint: recompute "
                                              "each step, less memory). FedSGD ignores it.",
                                  choices=("gradient", "unrolled", "unrolled-checkpoint"))


@dataclass
class SemanticConfig:
    labeler: str = option("none", "Name the reconstructions: CLIP zero-shot, an auxiliary classifier trained on "
                                  "public data, or not.", choices="labeler")
    clip_model: str = option("openai/clip-vit-base-patch32", "CLIP weights: a local folder or a Hugging Face hub "
                                                             "id already in the local cache.")
    prompts: str | None = option(None, "Prompt templates: 'default', 'ensemble', or a file with one template per "
                                       "line containing {c}.")
    class_names: str | None = option(None, "File of class names, one per line (default: the dataset's).")
    classifier_steps: int = option(300, "Training steps of the attacker's auxiliary classifier.", ge=1)
    classifier_training: str = option("standard", "How the auxiliary classifier is trained: standard, or adversarial "
                                                  "(PGD on the public split, so its input gradients are perceptually "
                                                  "aligned).", choices=("standard", "adversarial"))
    classifier: str | None = option(None, "A trained auxiliary classifier (a .safetensors file with its card) to use "
                                          "instead of training one.")
    guidance: str = option("none", "Semantic guidance: none, oracle (true labels; an upper bound) or search over "
                                   "candidate labels.", choices="guidance")
    guide: str = option("classifier", "Guidance model: CLIP prompts or the auxiliary classifier.", choices="guide")
    guidance_weight: float = option(0.1, "Weight of the guidance term.", ge=0)
    guide_views: int = option(1, "Random differentiable views (shifts, flips, noise) of each reconstruction the "
                                 "guide scores per step; 1: the reconstruction itself.", ge=1)
    guide_every: int = option(1, "Run the guide on every k-th step only, at k times the weight (lazy regularisation; "
                                 "k = 1: every step). Cuts the guide's cost per step about k-fold.", ge=1)
    clip_input_size: int | None = option(None, "Side in pixels of the images the clip guide gives CLIP (default: the "
                                               "model's own, 224 for ViT-B/32); a smaller multiple of the patch size "
                                               "interpolates the position embeddings and costs less per step.", ge=1)
    search_space: str = option("labels", "search: candidates change the matched labels too, or the guidance only.",
                               choices="search_space")
    search_schedule: str = option("exhaustive", "Label search: every candidate runs the full schedule (exhaustive), "
                                                "or successive halving keeps the best third by matching loss at each "
                                                "rung and gives the last three the full schedule (halving).",
                                  choices=("exhaustive", "halving"))
    compare_guidance: bool = option(False, "Also reconstruct without guidance and report both SSIMs.")


@dataclass
class RunConfig:
    seed: int = option(0, "Seed of the victim's initialisation, the private batch and the attack.", ge=0)
    threads: int | None = option(None, "Intra-op CPU threads (default: 1 for small models, else torch's).", ge=1)
    device: str = option("auto", "Where the victim, the attacker's models and the attack run: auto (cuda when "
                                 "available, else cpu), cpu or cuda.", choices=("auto", "cpu", "cuda"))


SECTIONS = {"data": DataConfig, "victim": VictimConfig, "client": ClientConfig, "threat": ThreatConfig,
            "recovery": RecoveryConfig, "inversion": InversionOptions, "semantic": SemanticConfig, "run": RunConfig}


@dataclass
class AttackConfig:
    """Every option of one attack run, by pipeline stage."""

    data: DataConfig = field(default_factory=DataConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    inversion: InversionOptions = field(default_factory=InversionOptions)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The flat view: option → value (the form result.json, stores and sweep ids use); repeatable
        options as lists, as JSON and YAML give them back."""
        values = {f.name: getattr(getattr(self, s), f.name) for s, f in iter_options()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def nested(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], check: bool = True) -> "AttackConfig":
        """Build from flat options, nested sections, or both; unknown keys and bad values are errors."""
        flat = flatten(data)
        sections = {name: {} for name in SECTIONS}
        for key, value in flat.items():
            if is_repeatable(key) and isinstance(value, list):
                value = tuple(value)  # one form, so equal configs compare equal
            sections[SECTION_OF[key]][key] = value
        cfg = cls(**{name: SECTIONS[name](**values) for name, values in sections.items()})
        if check:
            validate(cfg)
        return cfg

    @classmethod
    def of(cls, **options: Any) -> "AttackConfig":
        """``AttackConfig.of(iterations=50, batch_size=8)``: flat options, validated."""
        return cls.from_dict(options)

    def with_options(self, **changes: Any) -> "AttackConfig":
        """A copy with some flat options changed (validated)."""
        return AttackConfig.from_dict({**self.to_dict(), **changes})


def iter_options() -> Iterator[tuple[str, Any]]:
    """(section name, dataclass field) for every option, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            yield section, f


OPTIONS = {f.name: f for _, f in iter_options()}
SECTION_OF = {f.name: s for s, f in iter_options()}
assert len(OPTIONS) == sum(len(fields(c)) for c in SECTIONS.values()), "option names must be unique"


def default(name: str) -> Any:
    """Option ``name``'s default, in the flat view's form (repeatable options as lists)."""
    f = OPTIONS[name]
    value = f.default if f.default is not MISSING else f.default_factory()
    return list(value) if isinstance(value, tuple) else value


def flatten(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Flat option → value from a mapping that may nest options under their section's name.
    Keys may use dashes (``batch-size``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of option: value")
    flat: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in SECTIONS and key not in OPTIONS:
            if isinstance(value, dict):
                inner = flatten(value, key)
                wrong = sorted(k for k in inner if SECTION_OF[k] != key)
                if wrong:
                    raise ConfigError(f"option(s) {', '.join(wrong)} belong to section "
                                      f"{', '.join(sorted({SECTION_OF[k] for k in wrong}))}, not {key}")
            elif is_dataclass(value):
                inner = asdict(value)
            else:
                raise ConfigError(f"section {key} must be a mapping of option: value")
            _merge(flat, inner)
        elif key in OPTIONS:
            _merge(flat, {key: value})
        else:
            raise ConfigError(f"unknown option {key!r}{_suggest(key)}")
    return flat


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    twice = sorted(set(into) & set(new))
    if twice:
        raise ConfigError(f"option(s) given twice: {', '.join(twice)}")
    into.update(new)


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(OPTIONS) + list(SECTIONS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if typing.get_origin(annotation) is tuple:  # a repeatable option: a sequence of strings
        return (tuple,)
    parts = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return tuple(type(None) if p is type(None) else p for p in parts)


def is_repeatable(name: str) -> bool:
    """Whether option ``name`` takes several values (a YAML list, a flag given several times)."""
    return option_types(name) == (tuple,)


_HINTS: dict[type, dict[str, Any]] = {}


def option_types(name: str) -> tuple[type, ...]:
    """The runtime types option ``name`` admits, e.g. ``(int, NoneType)``."""
    cls = SECTIONS[SECTION_OF[name]]
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _allowed_types(_HINTS[cls][name])


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: a YAML `yes` for a count is a mistake
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(t for t in allowed if t is not bool))


def check_value(name: str, value: Any) -> None:
    """Raise a one-line ConfigError unless ``value`` is valid for option ``name``."""
    f = OPTIONS[name]
    allowed = option_types(name)
    if allowed == (tuple,):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"option {name} must be a list of strings, got {value!r}")
        names = choices_of(f)
        for item in value:  # "NAME" or "NAME:key=value,…": the name must be registered
            if names is not None and item.split(":", 1)[0] not in names:
                raise ConfigError(f"unknown {name} {item.split(':', 1)[0]!r}; choose one of: {', '.join(names)}")
        return
    if not _type_ok(value, allowed):
        what = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer", "float": "a number",
                                                           "bool": "true/false"}[t.__name__] for t in allowed)
        raise ConfigError(f"option {name} must be {what}, got {value!r}")
    if value is None:
        return
    if f.metadata["ge"] is not None and value < f.metadata["ge"]:
        raise ConfigError(f"option {name} must be at least {f.metadata['ge']:g}, got {value!r}")
    if f.metadata["gt"] is not None and value <= f.metadata["gt"]:
        raise ConfigError(f"option {name} must be greater than {f.metadata['gt']:g}, got {value!r}")
    names = choices_of(f)
    if names is not None and value not in names:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(names)}")


def validate(cfg: AttackConfig) -> AttackConfig:
    """Check every option's type, range and admitted names; return ``cfg``."""
    for key, value in cfg.to_dict().items():
        check_value(key, value)
    return cfg


def canonical(cfg: AttackConfig) -> AttackConfig:
    """``cfg`` with whole numbers in float options as floats, so ``tv: 0`` and ``tv: 0.0`` are one run."""
    changes = {}
    for key, value in cfg.to_dict().items():
        allowed = option_types(key)
        if float in allowed and int not in allowed and isinstance(value, int) and not isinstance(value, bool):
            changes[key] = float(value)
    return cfg.with_options(**changes) if changes else cfg
