"""CLIP on Hugging Face ``transformers``, with a differentiable image path.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision". Images are preprocessed by our own torch code (resize, centre crop,
CLIP's normalisation) rather than the HF image processor, so gradients reach the
pixels: CLIP guidance of a gradient-inversion attack (Malcewicz et al. 2025)
back-propagates the image–text cosine into the reconstruction.
"""

from __future__ import annotations

import inspect
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, GradleakError
from .prompts import (
    DEFAULT_TEMPLATE,
    GUIDANCE_TEMPLATE,
    check_class_names,
    check_templates,
    fill,
    resolve_templates,
)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# CLIP's pixel statistics (the openai/clip-* preprocessor_config.json values); used when a model
# folder carries no preprocessor config of its own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP's logit scale is clamped at 100 during training (Radford et al. 2021, §2.5).
MAX_LOGIT_SCALE = 100.0
_TEXT_CHUNK = 256


class ClipUnavailableError(GradleakError):
    """CLIP weights or the transformers package cannot be loaded."""


def _fetch_hint(name: str) -> str:
    repo = name if _looks_like_hub_id(name) else DEFAULT_CLIP_MODEL
    return f"fetch the weights once with `hf download {repo} --local-dir DIR`, then pass --clip-model DIR"


def _looks_like_hub_id(name: str) -> bool:
    # "owner/name" or "name": no leading ./ ~ or drive, at most one slash.
    return not name.startswith((".", "/", "~", "\\")) and name.count("/") <= 1 and ":" not in name


def _offline_from_env() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _features(out: Any) -> Tensor:
    """transformers ≥ 5 returns an output object with the projected features in ``pooler_output``."""
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out[0]


class ClipBackend:
    """A loaded CLIP model: differentiable image embeddings, cached text embeddings, guidance loss."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        device: str | torch.device = "cpu",
    ):
        self.name = name
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # Frozen: guidance gradients should flow to the pixels only, not be accumulated on CLIP.
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.max_text_length = int(model.config.text_config.max_position_embeddings)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, ...], Tensor] = {}

    # ---- images -------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        """τ = exp(model.logit_scale), clamped at 100 as in training."""
        return float(self.model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @cached_property
    def _interpolates(self) -> bool:
        """Whether this transformers' CLIP interpolates position embeddings (other input sizes)."""
        return "interpolate_pos_encoding" in inspect.signature(type(self.model).get_image_features).parameters

    def check_input_size(self, size: int | None) -> int | None:
        """``size`` if the image tower can take ``size``×``size`` inputs other than its own (a multiple
        of the patch size, with transformers' ``interpolate_pos_encoding``); None for the model's own
        size (or None); a one-line ConfigError otherwise."""
        if size is None or size == self.image_size:
            return None
        patch = int(self.model.config.vision_config.patch_size)
        if isinstance(size, bool) or not isinstance(size, int):
            raise ConfigError(f"clip_input_size must be an integer number of pixels; got {size!r}")
        if size < patch or size % patch:
            near = f"{size // patch * patch} or {(size // patch + 1) * patch}" if size > patch else f"{patch} or more"
            raise ConfigError(f"clip_input_size must be a multiple of the CLIP patch size {patch}; got {size}: use {near}")
        if not self._interpolates:
            raise ConfigError(f"clip_input_size {size} needs a transformers whose CLIP takes interpolate_pos_encoding "
                              f"(this one only takes {self.image_size} px); upgrade transformers or drop the option")
        return size

    def preprocess(self, images: Tensor, size: int | None = None) -> Tensor:
        """[0, 1] images (B, 1|3, H, W) → CLIP input: bicubic resize of the short side, centre crop, normalise.

        Mirrors CLIPImageProcessor (resize shortest edge, centre crop, normalise) in torch ops so that
        it is differentiable; grayscale is repeated to three channels. ``size``: the side of the
        input (default: the model's own).
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"CLIP expects images shaped (B, 1 or 3, H, W); got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        s = self.image_size if size is None else int(size)
        scale = s / min(h, w)
        new_h, new_w = max(s, round(h * scale)), max(s, round(w * scale))
        if (new_h, new_w) != (h, w):
            # antialias only matters when shrinking; it keeps large inputs from aliasing.
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - s) // 2, (new_w - s) // 2
        x = x[..., top : top + s, left : left + s]
        return (x - self._mean) / self._std

    def encode_images(self, images: Tensor, size: int | None = None) -> Tensor:
        """Unit-norm image embeddings (B, D); differentiable with respect to ``images``. ``size``: the
        input side when not the model's own (:meth:`check_input_size`; position embeddings interpolated)."""
        size = self.check_input_size(size)
        if size is None:
            out = self.model.get_image_features(pixel_values=self.preprocess(images))
        else:
            out = self.model.get_image_features(pixel_values=self.preprocess(images, size), interpolate_pos_encoding=True)
        return F.normalize(_features(out), dim=-1)

    # ---- texts --------------------------------------------------------------------------------
    def encode_texts(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings (N, D), no grad, cached per prompt list."""
        key = tuple(str(p) for p in prompts)
        if not key:
            raise ConfigError("no prompts to encode")
        cached = self._text_cache.get(key)
        if cached is not None:
            return cached
        chunks = []
        with torch.no_grad():
            for start in range(0, len(key), _TEXT_CHUNK):
                tokens = self.tokenizer(
                    list(key[start : start + _TEXT_CHUNK]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors="pt",
                )
                out = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                chunks.append(F.normalize(_features(out).float(), dim=-1))
        emb = torch.cat(chunks)
        self._text_cache[key] = emb
        return emb

    def class_text_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATE
    ) -> Tensor:
        """One unit-norm embedding per class (C, D): the renormalised mean over the filled templates
        (``templates``: a template, a list, a prompt-set name or a prompt file).

        Prompt ensembling as in Radford et al. 2021 (§3.1.4): average the normalised text embeddings
        of every template for a class, then renormalise.
        """
        names = check_class_names(class_names)
        temps = resolve_templates(templates)
        prompts = [fill(t, c) for c in names for t in temps]
        emb = self.encode_texts(prompts).view(len(names), len(temps), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    # ---- scores -------------------------------------------------------------------------------
    def logits(
        self, images: Tensor, class_names: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATE
    ) -> Tensor:
        """Zero-shot logits τ · cos(E_img(x), E_txt(prompt(c))), shape (B, C)."""
        text = self.class_text_embeddings(class_names, templates)
        return self.logit_scale * self.encode_images(images) @ text.T

    def guidance_loss(
        self,
        images: Tensor,
        guidance: Sequence[int] | Sequence[str] | Tensor,
        class_names: Sequence[str] | None = None,
        template: str = GUIDANCE_TEMPLATE,
        reduction: str = "mean",
        size: int | None = None,
    ) -> Tensor:
        """CLIP guidance L_CLIP = mean_i (1 − cos(E_img(x_i), E_txt(guidance_i))) (Malcewicz et al. 2025).

        ``guidance`` per image is a class index into ``class_names``, a class name (filled into
        ``template``; pass ``template="{c}"`` for raw prompts), or a float tensor (N, D) of text
        embeddings computed beforehand. ``reduction="none"`` returns the per-image terms. ``size``:
        the image tower's input side (default: the model's own; :meth:`encode_images`).
        """
        text = self._guidance_embeddings(guidance, class_names, template)
        if text.shape[0] != images.shape[0]:
            raise ConfigError(f"{text.shape[0]} guidance targets for {images.shape[0]} images")
        per_image = 1.0 - (self.encode_images(images, size) * text.to(self.device)).sum(dim=-1)
        if reduction == "none":
            return per_image
        if reduction == "mean":
            return per_image.mean()
        raise ConfigError(f"unknown reduction {reduction!r}; choose mean or none")

    def _guidance_embeddings(self, guidance: Any, class_names: Sequence[str] | None, template: str) -> Tensor:
        if isinstance(guidance, Tensor) and guidance.is_floating_point():
            if guidance.dim() != 2 or guidance.shape[1] != self.embed_dim:
                raise ConfigError(f"guidance embeddings must be (N, {self.embed_dim}); got {tuple(guidance.shape)}")
            return F.normalize(guidance, dim=-1)
        items = guidance.tolist() if isinstance(guidance, Tensor) else list(guidance)
        if not items:
            raise ConfigError("no guidance targets given")
        if all(isinstance(g, str) for g in items):
            names = items
        else:
            if class_names is None:
                raise ConfigError("guidance by class index needs the class names")
            try:
                names = [class_names[int(g)] for g in items]
            except (IndexError, TypeError, ValueError):
                raise ConfigError(f"guidance indices {items} do not index {len(class_names)} class names") from None
        (template,) = check_templates((template,))
        unique = sorted(set(names))
        emb = self.encode_texts([fill(template, n) for n in unique])
        rows = [unique.index(n) for n in names]
        return emb[rows]


def _read_normalisation(name: str, offline: bool, cache_dir: str | None) -> tuple[Sequence[float], Sequence[float]]:
    """CLIP mean/std from the model's preprocessor_config.json when it has one, else CLIP's constants."""
    try:
        from transformers.utils import cached_file

        path = cached_file(
            name,
            "preprocessor_config.json",
            cache_dir=cache_dir,
            local_files_only=offline,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        if path:
            cfg = json.loads(Path(path).read_text())
            mean, std = cfg.get("image_mean"), cfg.get("image_std")
            if mean and std and len(mean) == 3 and len(std) == 3:
                return tuple(mean), tuple(std)
    except Exception:  # the constants are the right values for every OpenAI CLIP checkpoint
        pass
    return CLIP_MEAN, CLIP_STD


def load_clip(
    name_or_path: str = DEFAULT_CLIP_MODEL,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> ClipBackend:
    """Load a CLIP model and tokenizer from a Hub id or a local folder (``save_pretrained`` layout).

    Offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or ``local_files_only=True``) only the
    local cache is consulted. Missing weights raise :class:`ClipUnavailableError` with one line
    saying how to fetch them.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ClipUnavailableError(f"CLIP model folder {name!r} has no config.json; {_fetch_hint(name)}")
        name = str(local)
    elif not _looks_like_hub_id(name):
        raise ClipUnavailableError(f"CLIP model folder {name!r} does not exist; {_fetch_hint(name)}")
    try:
        import transformers
        from transformers import AutoTokenizer, CLIPModel
    except ImportError:
        raise ClipUnavailableError("CLIP needs the transformers package: pip install 'gradleak[clip]'") from None
    offline = _offline_from_env() if local_files_only is None else bool(local_files_only)

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(name, cache_dir=cache_dir, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=cache_dir, local_files_only=offline)
    except Exception as exc:  # OSError, HF hub/HTTP errors, bad configs: all end in the same advice
        if offline and not local.exists():
            problem = "is not in the local Hugging Face cache and offline mode is on"
        else:
            cause = (str(exc).strip().splitlines() or [""])[0][:160]
            problem = f"could not be loaded ({exc.__class__.__name__}: {cause})"
        raise ClipUnavailableError(f"CLIP model {name!r} {problem}; {_fetch_hint(name)}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    mean, std = _read_normalisation(name, offline, cache_dir)
    return ClipBackend(model, tokenizer, name=name, mean=mean, std=std, device=device)


def save_random_clip(folder: str | Path, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                     **config: Any) -> Path:
    """Write a randomly initialised CLIP and a tokenizer to ``folder`` in ``save_pretrained`` layout
    (loadable offline by :func:`load_clip`): ViT-B/32 sizes (transformers' ``CLIPConfig()``
    defaults, those of openai/clip-vit-base-patch32) unless ``text``/``vision``/``config`` override
    them. Benchmarks and tests time the real model's shape without its weights.

    The tokenizer is byte-level without merges (one token per byte symbol): every ASCII prompt
    tokenises, and the text config's EOS id is set to the tokenizer's, where CLIP reads the text
    embedding (the real BPE vocabulary would need a download).
    """
    import transformers
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    cfg = transformers.CLIPConfig(text_config={**ids, **(text or {})}, vision_config=dict(vision or {}), **config)
    if cfg.text_config.vocab_size < len(vocab):
        raise ConfigError(f"text vocab_size {cfg.text_config.vocab_size} is smaller than the tokenizer's {len(vocab)}")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.CLIPModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
