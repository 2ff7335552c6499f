"""Files written so that an interrupted run never leaves a half-written file over a good one.

Every output gradleak writes goes through :func:`atomic_write`: the bytes land in a hidden
temporary file in the same folder, which then replaces the target in one ``os.replace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an exception and is removed otherwise. The suffix is kept, so writers that infer the
    format from it (matplotlib, numpy) still do."""
    path = Path(path)
    # A unique name per writer: two processes filling the same cache entry never share a temporary.
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, payload: Any) -> Path:
    """Indented, strictly finite JSON (NaN or inf is an error, never an invalid file), atomically."""
    return atomic_write(path, json.dumps(payload, indent=2, allow_nan=False))


def atomic_save(path: str | Path, save: Callable[[Path], Any]) -> Path:
    """Call ``save(tmp)`` (e.g. ``fig.savefig``) and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        save(tmp)
    return Path(path)
