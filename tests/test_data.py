"""pyro_vi.data: splits, binarization, batches by index, Fashion-MNIST from Debian's package."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import needs

from pyro_vi.data import DataError, load


def test_digits_splits_and_ranges():
    ds = load("digits")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1350, 150, 297)
    assert ds.shape == (8, 8) and ds.dim == 64 and ds.num_classes == 10
    assert ds.likelihood == "normal"
    x = torch.cat([ds.train.x, ds.valid.x, ds.test.x])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_static_binarization_is_fixed_and_dynamic_redraws():
    s = load("digits", binarize="static", seed=3)
    s2 = load("digits", binarize="static", seed=3)
    assert torch.equal(s.train.x, s2.train.x)
    assert set(s.train.x.unique().tolist()) == {0.0, 1.0}
    d = load("digits", binarize="dynamic", seed=3)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(200)
    a, b = d.train.sample_x(idx, g), d.train.sample_x(idx, g)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    # the draws are Bernoulli(intensity): the mean over many draws approaches x
    m = torch.stack([d.train.sample_x(idx, g) for _ in range(400)]).mean(0)
    assert (m - d.train.x[idx]).abs().max() < 5 * 0.5 / 400**0.5
    # evaluation uses one fixed draw
    assert torch.equal(d.test.evaluation_x(1), d.test.evaluation_x(1))


def test_batches_carry_their_indices():
    ds = load("digits")
    g = torch.Generator().manual_seed(0)
    seen = []
    for b in ds.train.batches(100, generator=g):
        assert torch.equal(b.x, ds.train.x[b.idx]) and torch.equal(b.y, ds.train.y[b.idx])
        assert b.size == len(ds.train)
        seen.append(b.idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(ds.train)))


def test_synthetic_sets():
    g = load("gmm", n=500, seed=1)
    assert g.train.x.shape[1] == 2 and set(g.info) >= {"weights", "locs", "scales"}
    assert len(g.train) + len(g.valid) == 500
    two = load("gaussian2d", n=1000)
    assert two.shape == (2,) and two.likelihood == "normal"
    assert load("moons", n=300).train.x.shape[1] == 2


def test_bad_names_and_files(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load("nope")
    with pytest.raises(DataError, match="binarize needs values in"):
        load("gaussian2d", binarize="static")
    with pytest.raises(DataError, match="binarize="):
        load("digits", binarize="sometimes")
    with pytest.raises(DataError, match="no data file"):
        load(str(tmp_path / "missing.npy"))
    f = tmp_path / "x.csv"
    np.savetxt(f, np.random.default_rng(0).normal(size=(50, 3)), delimiter=",")
    ds = load(str(f))
    assert ds.dim == 3 and len(ds.train) + len(ds.valid) + len(ds.test) == 50


def test_mnist_offline_names_the_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VI_DATA", str(tmp_path))
    import torchvision

    def refuse(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    with pytest.raises(DataError, match="run once with a network"):
        load("mnist")


@needs("fashion-mnist")
def test_fashion_mnist_is_the_canonical_set(tmp_path):
    ds = load("fashion-mnist", root=tmp_path, valid_fraction=0.0)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert ds.shape == (28, 28) and len(ds.test) == 10000
    # first training labels of the canonical set, before our shuffle: read torchvision directly
    import torchvision

    tv = torchvision.datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    assert tv.targets[:5].tolist() == [9, 0, 0, 3, 0]
    assert float(tv.data.float().mean() / 255) == pytest.approx(0.286, abs=5e-4)
    assert Path(tmp_path).exists()


def test_trim_rows_keeps_columns_up_to_the_latest_first_end_and_split_batches_trim():
    from pyro_vi.data import Split, trim_rows

    x = torch.tensor([[5, 3, 0, 0, 0], [4, 6, 3, 0, 0], [7, 3, 3, 0, 0]])
    assert trim_rows(x, 3).tolist() == [[5, 3, 0], [4, 6, 3], [7, 3, 3]]
    assert trim_rows(torch.tensor([[1, 2, 0]]), 3).shape == (1, 3)  # no end: all columns
    split = Split(x, row_end=3)
    assert split.batch(torch.tensor([0, 2])).x.tolist() == [[5, 3], [7, 3]]
    assert split.to("cpu").row_end == 3 and Split(x).batch(torch.tensor([0])).x.shape == (1, 5)
