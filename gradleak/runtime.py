"""Process-level settings that make the attack loop faster on CPU.

An inversion iteration allocates and frees hundreds of activation-sized buffers (0.1–10 MB). With
glibc's defaults each of them is a fresh ``mmap`` (or a heap trimmed back to the OS on free), so
every iteration pays the kernel to zero the same pages again. Keeping them in the heap made
centring a 1×256×32×32 activation map 842 → 56 µs and a ConvNet-64 bf16 iteration (B = 1) 7–10 %
faster, timed back to back on the 2-core machine (``benchmarks/attack_speed.py --allocator
default`` vs ``tuned`` compares them; the machine's drift can hide the difference). The cost is
that the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_tuned = False


def tune_allocator() -> bool:
    """Serve large tensors from the heap and keep freed memory for reuse (glibc only; elsewhere a no-op).

    Returns whether the settings were applied. Idempotent.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    _tuned = ok
    return ok


# Below this many parameters an attack step is a few small kernels: a second thread only adds
# synchronisation, and on a busy 2-core machine oversubscription made the default digits attack
# 100× slower (304 ms per iteration instead of 2.7 ms).
SMALL_MODEL_PARAMETERS = 1_000_000
_TORCH_DEFAULT_THREADS = None


def set_threads(threads: int | None, model=None) -> int:
    """Set torch's intra-op threads: ``threads`` when given, else 1 for a model under
    SMALL_MODEL_PARAMETERS and torch's own default otherwise. Returns the count in force."""
    import torch

    global _TORCH_DEFAULT_THREADS
    if _TORCH_DEFAULT_THREADS is None:
        _TORCH_DEFAULT_THREADS = torch.get_num_threads()
    if threads is None:
        small = model is not None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
        threads = 1 if small else _TORCH_DEFAULT_THREADS
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto"):
    """``auto`` → ``cuda`` when a CUDA device is available, else ``cpu``; ``cuda`` without one is a
    one-line ConfigError. Returns a ``torch.device``."""
    import torch

    from .errors import ConfigError

    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ConfigError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / aarch64
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device=None) -> bool:
    """Whether ``device`` computes bf16 matrix products natively (detected, not guessed).

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). CPU: AMX-BF16 tiles, AVX512-BF16
    (``vdpbf16ps``: oneDNN's bf16 convolutions and GEMMs run on it without an fp32 detour; a
    ConvNet-64 iteration measured ~1.7× faster than fp32 on such a 2-core AMD EPYC), or Arm's BF16
    extension. Without these, bf16 on CPU is emulated through fp32 and is slower than fp32.
    """
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = _cpu_flags()
    if flags & {"amx_bf16", "avx512_bf16", "bf16"}:
        return True
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # where /proc/cpuinfo is missing
    return bool(probe and probe())


def resolve_precision(precision: str = "auto", device=None) -> str:
    """``auto`` → ``bf16`` where :func:`native_bf16` detects native support on ``device``, else
    ``fp32``; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
