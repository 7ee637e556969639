"""Where this machine keeps data sets without a network: Debian's data packages and the
download cache.

:func:`missing` says, in one line naming the remedy, why a set cannot be loaded here::

    if (why := missing("fashion-mnist")) is not None:
        print(why)   # fashion-mnist is not on this machine: `apt-get install ...`
"""

from __future__ import annotations

import os
from pathlib import Path

# where the machine's data come from: Debian's packages (under /usr/share) and the download cache
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist", "wordnet": "wordnet-base"}


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")  # fmt: skip


WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def system_data() -> Path:
    """Where Debian's data packages put their files: ``$PYRO_VI_SYSTEM_DATA`` or /usr/share."""
    return Path(os.environ.get("PYRO_VI_SYSTEM_DATA") or "/usr/share")


def debian_fashion() -> Path:
    """The folder of ``dataset-fashion-mnist``'s gzip'd idx files."""
    return system_data() / "datasets" / "fashion-mnist"


def wordnet_dir() -> Path:
    """The folder of ``wordnet-base``'s ``data.noun``, ``data.verb``, ... files."""
    return system_data() / "wordnet"


def missing(name: str, root: str | os.PathLike | None = None) -> str | None:
    """Why data set ``name`` cannot be loaded on this machine without a network, as one line
    naming the remedy, or None when its files are here (or it needs none: digits, the synthetic
    sets). Nothing is downloaded or read beyond the files' presence::

        if (why := missing("fashion-mnist")) is not None:
            print(why)   # fashion-mnist is not on this machine: `apt-get install ...`
    """
    if name == "fashion-mnist":
        raw = _cache_root(root) / "FashionMNIST" / "raw"
        if all((raw / f).exists() for f in FASHION_FILES):
            return None
        if all((debian_fashion() / (f + ".gz")).exists() for f in FASHION_FILES):
            return None
        return (
            f"fashion-mnist is not on this machine (neither {debian_fashion()} nor {raw}): "
            "`sudo apt-get install dataset-fashion-mnist` (Debian; `make data` in a checkout)"
        )
    if name == "wordnet":
        folder = Path(root) if root is not None else wordnet_dir()
        if all((folder / f).is_file() for f in WORDNET_FILES):
            return None
        return (
            f"WordNet is not on this machine (no data.noun, ... in {folder}): "
            "`sudo apt-get install wordnet-base` (Debian; `make data` in a checkout)"
        )
    if name == "mnist":
        raw = _cache_root(root) / "MNIST" / "raw"
        if (raw / "t10k-labels-idx1-ubyte").exists():
            return None
        return (
            f"mnist is not on this machine (nothing in {raw}): run once with a network "
            "(torchvision downloads it) or put torchvision's files there"
        )
    return None


def _cache_root(root) -> Path:
    if root is not None:
        return Path(root)
    base = os.environ.get("PYRO_VI_DATA") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pyro_vi"
    )
    return Path(base)
