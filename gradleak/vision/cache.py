"""Trained auxiliary classifiers as files: safetensors weights plus a JSON card, cached by content.

A file is a safetensors file (Hugging Face's format: a JSON header and raw tensors, so loading runs
no code, unlike a pickled checkpoint) whose header metadata holds a card under :data:`CARD_KEY`: the
architecture and its constructor arguments, the input shape, the classes, a digest of the training
data, every training setting, and the clean and PGD accuracy on held-out images
(:class:`ClassifierCard`).

:func:`cached_classifier` trains once per (training data, settings): the file is kept at
``cache_root()/classifiers/<hash>.safetensors`` (``$GRADLEAK_CACHE``, default ``~/.cache/gradleak``)
and a later call with the same data and settings loads it — the same weights, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..io import atomic_write
from . import classifier as _clf

CARD_KEY = "gradleak.classifier_card"
CARD_FORMAT = 1
MAX_EVAL_IMAGES = 1000  # the card's accuracies: enough for ±3 % and a few seconds of PGD on a CPU


@dataclass
class ClassifierCard:
    """What a saved classifier is and how it was made (JSON-able)."""

    arch: str  # an AUX_ARCHS name
    arch_args: dict[str, Any]  # AUX_ARCHS.get(arch)(**arch_args) rebuilds it: input_shape, num_classes, width
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    data_digest: str  # sha256 of the training images and labels (see data_digest)
    steps: int
    training: str  # "standard" or "adversarial"
    epsilon: float  # L2 radius of the PGD attack (training, if adversarial, and the card's evaluation)
    pgd_steps: int
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # batch_size, lr, noise_std, flip
    clean_accuracy: float | None = None
    adversarial_accuracy: float | None = None  # under the same PGD attack (ε, steps)
    evaluated_on: str | None = None  # "held-out public (n)" or "other split (n)"
    format: int = CARD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "classifier card") -> "ClassifierCard":
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ConfigError(f"{where}: malformed card ({exc})") from None


class CardedClassifier(NamedTuple):
    """A classifier in eval mode and its card."""

    model: nn.Module
    card: ClassifierCard


def data_digest(images: Tensor, labels: Tensor) -> str:
    """sha256 over the shapes and float32/int64 bytes of ``images`` and ``labels``."""
    h = hashlib.sha256()
    for t, dtype in ((images, torch.float32), (labels, torch.int64)):
        t = torch.as_tensor(t).detach().to("cpu", dtype).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def classifiers_dir() -> Path:
    from ..data.cifar10 import cache_root

    return cache_root() / "classifiers"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        raise ConfigError("classifier files need the safetensors package: pip install safetensors") from None
    return st


def save_classifier(path: str | Path, model: nn.Module, card: ClassifierCard) -> Path:
    """Write ``model``'s state dict and ``card`` as one safetensors file, atomically."""
    st = _safetensors()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st.save(state, metadata={CARD_KEY: json.dumps(card.to_dict(), allow_nan=False)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, blob)


def load_classifier(path: str | Path) -> CardedClassifier:
    """Read a file written by :func:`save_classifier` (never unpickles). A missing file, a file that
    is not safetensors, one without a card, or one with an unknown architecture is a one-line
    ConfigError."""
    st = _safetensors()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"classifier file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = st.load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for malformed headers
        raise ConfigError(f"{path} is not a safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if CARD_KEY not in meta:
        raise ConfigError(f"{path} has no gradleak classifier card (write it with gradleak.vision.save_classifier)")
    try:
        card = ClassifierCard.from_dict(json.loads(meta[CARD_KEY]), str(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: its classifier card is not JSON ({exc})") from None
    if card.arch not in _clf.AUX_ARCHS:
        raise ConfigError(f"{path}: unknown classifier architecture {card.arch!r}; "
                          f"known: {', '.join(_clf.AUX_ARCHS.names())}")
    args = dict(card.arch_args)
    args["input_shape"] = tuple(args.get("input_shape", card.input_shape))
    with torch.random.fork_rng(devices=[]):  # the factories seed the global RNG
        try:
            model = _clf.AUX_ARCHS.get(card.arch)(seed=0, **args)
        except TypeError as exc:
            raise ConfigError(f"{path}: bad constructor arguments for {card.arch}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: its weights do not fit {card.arch} {args}: {str(exc).splitlines()[0]}") from None
    return CardedClassifier(model.eval(), card)


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    steps: int = 300,
    seed: int = 0,
    arch: str = "cnn",
    adversarial: bool = False,
    epsilon: float = _clf.DEFAULT_EPSILON,
    pgd_steps: int = _clf.DEFAULT_PGD_STEPS,
    width: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    noise_std: float = 0.2,
    flip: bool | None = None,
    eval_images: Tensor | None = None,
    eval_labels: Tensor | None = None,
    holdout: float = 0.1,
    cache: bool = True,
) -> CardedClassifier:
    """Train :func:`~gradleak.vision.classifier.train_aux_classifier` on the public ``images`` — or
    load the result of an earlier identical call from the cache — and card it.

    The card's accuracies are measured on ``eval_images`` (e.g. the other split: the evaluator's view,
    never used for training) when given; otherwise a seeded ``holdout`` fraction of ``images`` is kept
    out of training for them. The cache key hashes the training data, the evaluation data and every
    setting; ``cache=False`` trains without reading or writing files.
    """
    images, labels = images.float(), torch.as_tensor(labels, dtype=torch.long)
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names for {num_classes} classes")
    if eval_images is None:
        if not 0 < holdout < 1:
            raise ConfigError(f"holdout must lie in (0, 1); got {holdout}")
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        n_out = max(1, int(round(holdout * images.shape[0])))
        ev_x, ev_y = images[order[:n_out]], labels[order[:n_out]]
        images, labels = images[order[n_out:]], labels[order[n_out:]]
        evaluated_on, eval_key = f"held-out public ({n_out})", {"holdout": holdout}
    else:
        ev_x, ev_y = eval_images.float()[:MAX_EVAL_IMAGES], torch.as_tensor(eval_labels, dtype=torch.long)[:MAX_EVAL_IMAGES]
        evaluated_on, eval_key = f"other split ({ev_x.shape[0]})", {"eval": data_digest(ev_x, ev_y)}
    shape = [int(s) for s in images.shape[1:]]
    settings = {"batch_size": batch_size, "lr": lr, "noise_std": noise_std, "flip": flip}
    card = ClassifierCard(
        arch=arch, arch_args={"input_shape": shape, "num_classes": num_classes, "width": _clf.arch_width(arch, width)},
        input_shape=shape, num_classes=num_classes, class_names=names, data_digest=data_digest(images, labels),
        steps=steps, training="adversarial" if adversarial else "standard", epsilon=float(epsilon),
        pgd_steps=int(pgd_steps), seed=seed, settings=settings, evaluated_on=evaluated_on)
    path = None
    if cache:
        key = {k: v for k, v in card.to_dict().items() if k not in ("clean_accuracy", "adversarial_accuracy")}
        path = classifiers_dir() / f"{_key({**key, **eval_key})}.safetensors"
        if path.is_file():
            try:
                return load_classifier(path)
            except ConfigError as exc:  # a damaged cache entry is retrained and replaced
                warnings.warn(f"retraining the auxiliary classifier: {exc}", stacklevel=2)
    model = _clf.train_aux_classifier(images, labels, num_classes, steps=steps, seed=seed, arch=arch,
                                      batch_size=batch_size, lr=lr, noise_std=noise_std, flip=flip,
                                      adversarial=adversarial, epsilon=epsilon, pgd_steps=pgd_steps, width=width)
    card.clean_accuracy = _clf.classifier_accuracy(model, ev_x, ev_y)
    card.adversarial_accuracy = _clf.robust_accuracy(model, ev_x, ev_y, epsilon, pgd_steps, seed=seed)
    if path is not None:
        try:
            save_classifier(path, model, card)
        except (OSError, ConfigError) as exc:  # an unwritable cache costs a retraining next time, not the run
            warnings.warn(f"could not cache the auxiliary classifier at {path}: {exc}", stacklevel=2)
    return CardedClassifier(model, card)
