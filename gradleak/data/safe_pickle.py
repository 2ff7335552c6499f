"""Unpickling that can rebuild a CIFAR-10 batch and nothing else.

A pickle can call any importable function while it loads, so a dataset file from an untrusted
place could run code (``os.system``, ``builtins.eval``) the moment it is opened. The official
CIFAR-10 python batches hold only dicts, lists, bytes, ints and one uint8 numpy array, so the
unpickler below allows exactly the few numpy callables that rebuild a plain numeric ndarray
and refuses every other import before anything runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError

try:  # numpy >= 2 moved the pickle helpers to numpy._core; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer


def _numeric_dtype(*args: Any) -> np.dtype:
    # An object dtype would let the array's state hold arbitrary pickled objects.
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dtype}")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of type {subtype!r}")
    return _np_reconstruct(subtype, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol-5 pickles (a re-saved batch) rebuild arrays from a raw buffer.
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing dtype {dtype!r}")
    return _np_frombuffer(buffer, dtype, shape, order)


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(str, "latin1"); allowing any
    # other codec would expose the whole codec registry to the file.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


# (module, name) -> the object handed to the unpickler instead of importing anything.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # official batches (Python 2, numpy 1)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # re-pickled with numpy >= 2
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose ``find_class`` only hands out :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: Any, *, source: str, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {self.source}: it imports {module}.{name}, "
                "which a CIFAR-10 batch never contains"
            ) from None


def load_restricted_pickle(path: str | Path) -> Any:
    """Load a CIFAR-10-style pickle (``encoding="bytes"``), refusing any import but numpy arrays.

    Raises DataError naming the file when it is unreadable, truncated, or imports anything else.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, source=str(path), encoding="bytes").load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # truncated/garbled pickles raise many different types
        raise DataError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
