"""Files written whole or not at all: into a temporary file beside the target, flushed to disk,
then renamed over it (``os.replace`` is atomic on one file system).

A process killed mid-write (``kill -9``) leaves the previous file intact and at most one
``.NAME.XXXXXXXX.partial`` beside it; :func:`remove_partial` clears those (``fit --resume`` and
``--overwrite`` do, before they write)::

    with atomic_open("runs/demo/metrics.json", "w") as f:
        json.dump(metrics, f)
    remove_partial("runs/demo")   # leftovers of a killed writer
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "remove_partial", "PARTIAL"]

PARTIAL = ".partial"
# temporaries of earlier versions, 8 random characters and no suffix: .checkpoint.pt.8vsm7eyg
_LEGACY = re.compile(r"^\.(checkpoint\.pt|[\w.-]+\.json)\.[A-Za-z0-9_]{8}$")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only when the ``with`` block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partial(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        stale = p.name.startswith(".") and (p.name.endswith(PARTIAL) or _LEGACY.match(p.name))
        if stale and p.is_file():
            p.unlink()
            removed.append(p)
    return removed
