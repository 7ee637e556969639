"""Data sets as device-resident tensors, batched by index.

Every data set is a :class:`Dataset` of three :class:`Split` s (train, valid, test). A split holds
the whole set as one tensor ``x`` (rows are datapoints) on the chosen device, optional labels ``y``,
and a binarization mode. Batches are drawn by index, so a batch knows the dataset indices of its
rows; models put their local latents in ``pyro.plate("data", size, subsample=idx)`` (see
:func:`data_plate`) and the ELBO of a batch is then an unbiased estimate of the full-data ELBO::

    ds = load("digits", binarize="dynamic")
    for batch in ds.train.batches(128, generator=torch.Generator().manual_seed(0)):
        loss = elbo.differentiable_loss(model, guide, batch.x, idx=batch.idx, size=batch.size)

Binarization: ``"static"`` draws x ~ Bernoulli(pixel intensity) once with a fixed seed;
``"dynamic"`` draws afresh for every batch (the convention of the published likelihood tables);
``None`` keeps intensities in [0, 1]. Synthetic sets come with their generating truth in ``info``.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch

__all__ = ["Batch", "Dataset", "Split", "DataError", "load", "data_plate", "missing", "NAMES"]

NAMES = ("digits", "fashion-mnist", "mnist", "gmm", "gaussian2d", "moons", "wordnet",
         "inverse-sine", "iris-petal")  # fmt: skip
IMAGE_SETS = ("digits", "fashion-mnist", "mnist")
FILE_SUFFIXES = (".npy", ".csv", ".txt")
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


class DataError(ValueError):
    """A data set cannot be loaded or does not fit; the message names the problem and the fix."""


class Batch(NamedTuple):
    """One batch: rows ``x``, labels ``y`` (or None), their dataset indices ``idx``, set size."""

    x: torch.Tensor
    y: torch.Tensor | None
    idx: torch.Tensor
    size: int


@dataclass
class Split:
    """One split of a data set: the whole of it as one tensor on one device."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    binarize: str | None = None  # None | "static" (already applied) | "dynamic"

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> Split:
        y = None if self.y is None else self.y.to(device)
        return Split(self.x.to(device), y, self.binarize)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches by index; ``generator`` (on the CPU) drives the order and binarization."""
        n = len(self)
        if shuffle:
            order = torch.randperm(
                n, generator=generator, device=_gen_device(generator, self.x)
            ).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield Batch(self.sample_x(idx, generator), self._y(idx), idx, n)

    def sample_x(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows ``idx`` of x, with a fresh Bernoulli draw under dynamic binarization."""
        x = self.x[idx]
        if self.binarize == "dynamic":
            u = torch.rand(x.shape, generator=generator, device=_gen_device(generator, x))
            u = u.to(x.device)
            x = (u < x).to(x.dtype)
        return x

    def _y(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.y is None else self.y[idx]

    def evaluation_x(self, seed: int = 0) -> torch.Tensor:
        """The split for evaluation: dynamic binarization becomes a static draw with ``seed``."""
        if self.binarize != "dynamic":
            return self.x
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(self.x.shape, generator=g).to(self.x.device) < self.x).to(self.x.dtype)


@dataclass
class Dataset:
    """A named data set: train/valid/test splits, the shape of one item and its likelihood."""

    name: str
    train: Split
    valid: Split
    test: Split
    shape: tuple[int, ...]
    likelihood: str  # "bernoulli" for binary data, "normal" for continuous
    num_classes: int = 0
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            self.train.to(device),
            self.valid.to(device),
            self.test.to(device),
            self.shape,
            self.likelihood,
            self.num_classes,
            self.info,
        )


def data_plate(x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
    """``pyro.plate("data", ...)`` over the rows of ``x``.

    With ``idx`` (dataset indices of the rows) and ``size`` (rows in the full set) the plate
    subsamples, so log-densities inside it are scaled by ``size / len(idx)``; without them the
    rows are the whole set. The plate lives on ``x.device``.
    """
    if idx is None:
        return pyro.plate("data", x.shape[0], device=x.device)
    return pyro.plate(
        "data", size if size is not None else x.shape[0], subsample=idx, device=x.device
    )


def load(
    name: str,
    *,
    binarize: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    valid_fraction: float = 0.1,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    dtype: torch.dtype = torch.float32,
    text: bool = False,
    vocab_size: int = 10000,
    max_len: int = 20,
) -> Dataset:
    """Load data set ``name`` (one of :data:`NAMES`) as device-resident splits.

    Images scale to [0, 1] and flatten to rows. ``binarize`` is None, ``"static"`` or
    ``"dynamic"``; the static draw, the validation split and synthetic draws use ``seed``.
    ``n`` sets the number of points of synthetic sets. ``root`` is torchvision's data folder.
    Sentences (``"wordnet"``, or a file with one sentence per line and ``text=True``) become
    padded token ids with a vocabulary of ``vocab_size`` and at most ``max_len`` words
    (:mod:`pyro_vi.corpus`; ``root`` is WordNet's folder).
    """
    if binarize not in (None, "static", "dynamic"):
        raise DataError(f"binarize={binarize!r} is not known: use None, 'static' or 'dynamic'")
    if name == "wordnet" or text:
        from .corpus import load_corpus  # token ids, not float rows

        if binarize is not None:
            raise DataError(f"{name}: sentences cannot be binarized; drop binarize")
        return load_corpus(name, vocab_size=vocab_size, max_len=max_len, seed=seed,
                           valid_fraction=valid_fraction, root=root, device=device)  # fmt: skip
    loaders = {
        "digits": _digits,
        "fashion-mnist": _fashion_mnist,
        "mnist": _mnist,
        "gmm": _gmm,
        "gaussian2d": _gaussian2d,
        "moons": _moons,
        "inverse-sine": _inverse_sine,
        "iris-petal": _iris_petal,
    }
    rng = np.random.default_rng(seed)
    if name.endswith(FILE_SUFFIXES):
        (xtr, ytr), (xte, yte), shape, info = _file(name, rng)
    elif name in loaders:
        synthetic = ("gmm", "gaussian2d", "moons", "inverse-sine")
        kw = {"n": n} if name in synthetic else {"root": root}
        (xtr, ytr), (xte, yte), shape, info = loaders[name](rng=rng, **kw)
    else:
        raise DataError(
            f"unknown data set {name!r}: choose one of {', '.join(NAMES)} or a file "
            f"({', '.join(FILE_SUFFIXES)}) with one datapoint per row"
        )
    if binarize is not None and not (np.nanmin(xtr) >= 0 and np.nanmax(xtr) <= 1):
        raise DataError(f"{name}: binarize needs values in [0, 1]; drop binarize for these data")
    nclass = int(ytr.max()) + 1 if ytr is not None else 0
    # Validation split: a fixed-seed permutation of the training rows.
    perm = rng.permutation(len(xtr))
    nval = int(round(valid_fraction * len(xtr)))
    vi, ti = perm[:nval], perm[nval:]
    splits = []
    for i, (x, y) in enumerate(((xtr[ti], _take(ytr, ti)), (xtr[vi], _take(ytr, vi)), (xte, yte))):
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dtype)
        yt = None if y is None else torch.as_tensor(np.asarray(y)).long()
        mode = binarize
        if binarize == "static":
            g = torch.Generator().manual_seed(seed * 3 + i)
            xt = (torch.rand(xt.shape, generator=g) < xt).to(dtype)
        splits.append(Split(xt.to(device), None if yt is None else yt.to(device), mode))
    likelihood = "bernoulli" if binarize is not None else "normal"
    return Dataset(name, *splits, shape=shape, likelihood=likelihood, num_classes=nclass, info=info)


def _file(path: str, rng):
    """Rows of a .npy, .csv or .txt file; the last fifth (after a fixed shuffle) is the test set."""
    if not os.path.isfile(path):
        raise DataError(f"no data file at {path}: check the path")
    try:
        x = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as e:
        raise DataError(f"{path} is not a numeric table ({e}): one datapoint per row") from None
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x[rng.permutation(len(x))]
    ntest = len(x) // 5
    return (x[ntest:], None), (x[:ntest], None), (x.shape[1],), {"path": path}


def _take(y, i):
    return None if y is None else y[i]


def _digits(rng, root=None):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32) / 16.0
    perm = rng.permutation(len(x))
    x, y = x[perm], d.target[perm]
    ntest = 297  # 1500 train (incl. validation) / 297 test
    return (x[ntest:], y[ntest:]), (x[:ntest], y[:ntest]), (8, 8), {}


def _torchvision(cls_name: str, root: Path):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    tr = cls(str(root), train=True, download=False)
    te = cls(str(root), train=False, download=False)
    f = lambda d: (d.data.numpy().reshape(len(d.data), -1) / 255.0, d.targets.numpy())  # noqa: E731
    return f(tr), f(te), (28, 28), {}


def _cache_root(root) -> Path:
    if root is not None:
        return Path(root)
    base = os.environ.get("PYRO_VI_DATA") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pyro_vi"
    )
    return Path(base)


def _fashion_mnist(rng, root=None):
    root = _cache_root(root)
    raw = root / "FashionMNIST" / "raw"
    files, debian = FASHION_FILES, debian_fashion()
    if not all((raw / f).exists() for f in files):
        if all((debian / (f + ".gz")).exists() for f in files):
            raw.mkdir(parents=True, exist_ok=True)
            for f in files:  # the Debian copy, decompressed into torchvision's layout
                tmp = raw / (f + ".tmp")
                with gzip.open(debian / (f + ".gz"), "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, raw / f)
        else:
            _download_or_fail("FashionMNIST", root, "fashion-mnist", debian="dataset-fashion-mnist")
    return _torchvision("FashionMNIST", root)


def _mnist(rng, root=None):
    root = _cache_root(root)
    raw = root / "MNIST" / "raw"
    if not (raw / "t10k-labels-idx1-ubyte").exists():
        _download_or_fail("MNIST", root, "mnist", debian=None)
    return _torchvision("MNIST", root)


def _download_or_fail(cls_name: str, root: Path, name: str, debian: str | None):
    import torchvision

    try:
        for train in (True, False):
            getattr(torchvision.datasets, cls_name)(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure becomes one actionable line
        remedy = f"`sudo apt-get install {debian}` or " if debian else ""
        raise DataError(
            f"{name} is not on this machine and could not be downloaded ({type(e).__name__}): "
            f"{remedy}run once with a network, or put torchvision's files under {root}"
        ) from None


def _gmm(rng, n=None, k=3, d=2):
    """Draws from a K-component Gaussian mixture with known truth (weights, locs, scales)."""
    n = n or 3000
    weights = rng.dirichlet(np.full(k, 5.0))
    locs = rng.normal(0.0, 4.0, size=(k, d))
    scales = rng.uniform(0.5, 1.2, size=(k, d))
    z = rng.choice(k, size=n + n // 5, p=weights)
    x = locs[z] + scales[z] * rng.standard_normal((len(z), d))
    info = {"k": k, "weights": weights, "locs": locs, "scales": scales}
    return (x[:n], z[:n]), (x[n:], z[n:]), (d,), info


def _gaussian2d(rng, n=None):
    """Seed 003's data: two isotropic 2-D Gaussians at (-2, -2) and (2, 2), unit covariance."""
    n = n or 5000
    locs = np.array([[-2.0, -2.0], [2.0, 2.0]])
    z = rng.integers(0, 2, size=n + n // 5)
    x = locs[z] + rng.standard_normal((len(z), 2))
    return (x[:n], z[:n]), (x[n:], z[n:]), (2,), {"locs": locs}


def _moons(rng, n=None):
    from sklearn.datasets import make_moons

    n = n or 4000
    x, y = make_moons(n + n // 5, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x[:n], y[:n]), (x[n:], y[n:]), (2,), {}


def _inverse_sine(rng, n=None):
    """Bishop (1994)'s inverse problem: y ~ U(0, 1), x = y + 0.3 sin(2 pi y) + U(-0.1, 0.1).

    Rows are [x, y] and the task is p(y | x): three-valued for x in about (0.41, 0.59)."""
    n = n or 2000
    y = rng.uniform(0.0, 1.0, n + n // 5)
    x = y + 0.3 * np.sin(2 * np.pi * y) + rng.uniform(-0.1, 0.1, len(y))
    rows = np.stack([x, y], 1)
    info = {"x_dim": 1, "y_dim": 1, "noise": "uniform(-0.1, 0.1)"}
    return (rows[:n], None), (rows[n:], None), (2,), info


def _iris_petal(rng, root=None):
    """scikit-learn's iris, rows [sepal width, petal length] (cm) and the species as labels:
    p(petal length | sepal width) is bimodal (setosa about 1.5, the others 3-7); 30 test rows."""
    from sklearn.datasets import load_iris

    d = load_iris()
    perm = rng.permutation(len(d.data))
    rows, species = d.data[perm][:, [1, 2]], d.target[perm]
    info = {"x_dim": 1, "y_dim": 1, "columns": ["sepal width (cm)", "petal length (cm)"]}
    return (rows[30:], species[30:]), (rows[:30], species[:30]), (2,), info


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    """Draw on the generator's device (the data's device when there is no generator)."""
    return x.device if generator is None else generator.device
