"""The named data sets and data files, read into device-resident splits.

:func:`load` is the one entry point; sentences go to :mod:`pyro_vi.data.corpus`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .corpus import load_corpus
from .machine import FASHION_FILES, _cache_root, debian_fashion
from .split import DataError, Dataset, Split

NAMES = ("digits", "fashion-mnist", "mnist", "gmm", "gaussian2d", "moons", "wordnet",
         "inverse-sine", "iris-petal")  # fmt: skip
IMAGE_SETS = ("digits", "fashion-mnist", "mnist")
FILE_SUFFIXES = (".npy", ".csv", ".txt")


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
    (:mod:`pyro_vi.data.corpus`; ``root`` is WordNet's folder).
    """
    if binarize not in (None, "static", "dynamic"):
        raise DataError(f"binarize={binarize!r} is not known: use None, 'static' or 'dynamic'")
    if name == "wordnet" or text:
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


def _fashion_mnist(rng, root=None):
    root = _cache_root(root)
    raw = root / "FashionMNIST" / "raw"
    files, debian = FASHION_FILES, debian_fashion()
    if not all((raw / f).exists() for f in files):
        if all((debian / (f + ".gz")).exists() for f in files):
            raw.mkdir(parents=True, exist_ok=True)
            for f in files:  # the Debian copy, decompressed into torchvision's layout
                # a temporary name of this process's own: two processes may unpack at once
                fd, tmp = tempfile.mkstemp(dir=raw, prefix=f + ".", suffix=".tmp")
                with gzip.open(debian / (f + ".gz"), "rb") as src, os.fdopen(fd, "wb") as dst:
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
