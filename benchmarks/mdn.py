"""Held-out log-likelihood of the mixture density network against the unimodal Gaussian network.

Inverse-sine (Bishop 1994; ``load("inverse-sine", n=--n)``: y ~ U(0, 1), x = y + 0.3 sin(2 pi y) +
U(-0.1, 0.1), predict y from x; 400 test rows): the MDN with K = ``--components`` (z summed out:
TraceEnum_ELBO with the exact-posterior guide), the same MDN trained by hard EM (``mode="map"``,
Trace_ELBO) and its unimodal twin (K = 1, the same hidden layers), each by ``pyro_vi.fit`` with Adam
(lr ``--lr``, per-epoch decay ``--lr-decay``, batch ``--batch-size``) for ``--epochs`` epochs. Two
references computed from the generating process at the test inputs: the true conditional (uniform
on {y : |x - y - 0.3 sin 2 pi y| < 0.1}, an upper bound for any model in expectation) and the best
Gaussian p(y|x) there is (moment-matched, the ceiling of any unimodal network).

Iris (``load("iris-petal", seed=s)``, petal length given sepal width, 120 training flowers, 30 test
flowers): ``--iris-splits`` random splits (seeds 0, 1, ...), a small MDN (K = 2, 8 hidden units:
larger ones overfit 108 flowers) and its twin, full-batch Adam for ``--iris-epochs`` epochs.

    python benchmarks/mdn.py --epochs 200 --iris-epochs 100 --iris-splits 5 --seed 0

Last line: ``{"loglik_mdn": .., "loglik_unimodal": .., "gain": .., "loglik_map": ..,
"loglik_truth": .., "loglik_best_gaussian": .., "iris_loglik_mdn": .., "iris_loglik_unimodal":
.., "iris_gain": .., "iris_wins": ..}`` (nats per test row, mean over rows; higher is better).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pyro
import torch

from pyro_vi import fit
from pyro_vi.data import load
from pyro_vi.models import MDN


def references(x: np.ndarray, grid: int = 200_000) -> tuple[float, float]:
    """Mean over test inputs x of E log p(y|x) under the truth, and of the best Gaussian."""
    y = (np.arange(grid) + 0.5) / grid
    g = y + 0.3 * np.sin(2 * np.pi * y)
    truth, gauss = [], []
    for xi in x:
        inside = y[np.abs(xi - g) < 0.1]  # p(y|x) is uniform on this set
        truth.append(-math.log(len(inside) / grid))
        gauss.append(-0.5 * math.log(2 * math.pi * math.e * inside.var()))
    return float(np.mean(truth)), float(np.mean(gauss))


def train(m: MDN, data, loss: str, seed: int, **options) -> float:
    """Fit ``m`` and return its held-out log-likelihood per test row."""
    pyro.clear_param_store()  # MDNs of one name would share the store's parameters
    pyro.set_rng_seed(seed)
    fit(m.model, m.guide, data, loss=loss, device="cpu", seed=seed, progress=False, **options)
    with torch.no_grad():
        return m.log_likelihood(data.test.x).mean().item()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="inverse-sine training rows")
    p.add_argument("--components", type=int, default=5)
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--lr-decay", type=float, default=0.99)
    p.add_argument("--iris-epochs", type=int, default=100)
    p.add_argument("--iris-splits", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small networks)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    opts = dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lr_decay=a.lr_decay)

    data = load("inverse-sine", n=a.n, seed=a.seed)
    pyro.set_rng_seed(a.seed)
    mdn = MDN.from_data(data, components=a.components, hidden=a.hidden)
    hard = MDN(**{**mdn.config, "mode": "map", "name": "mdn-map"})
    out, rows = {}, []
    for key, m, loss in (("mdn", mdn, "enum"), ("map", hard, "elbo"),
                         ("unimodal", mdn.unimodal(), "enum")):  # fmt: skip
        t0 = time.perf_counter()
        out[f"loglik_{key}"] = round(train(m, data, loss, a.seed, **opts), 4)
        rows.append((key, m.components, loss, out[f"loglik_{key}"], time.perf_counter() - t0))
    out["gain"] = round(out["loglik_mdn"] - out["loglik_unimodal"], 4)
    truth, gauss = references(data.test.x[:, 0].double().numpy())
    out["loglik_truth"], out["loglik_best_gaussian"] = round(truth, 4), round(gauss, 4)

    iris = []
    for s in range(a.iris_splits):
        ds = load("iris-petal", seed=s)
        pyro.set_rng_seed(s)
        m = MDN.from_data(ds, components=2, hidden=(8,))
        iopts = dict(epochs=a.iris_epochs, batch_size=len(ds.train), lr=1e-2)
        iris.append([train(m, ds, "enum", s, **iopts), train(m.unimodal(), ds, "enum", s, **iopts)])
    iris = np.array(iris)
    if len(iris):
        out["iris_loglik_mdn"], out["iris_loglik_unimodal"] = iris.mean(0).round(4).tolist()
        out["iris_gain"] = round(float((iris[:, 0] - iris[:, 1]).mean()), 4)
        out["iris_wins"] = f"{int((iris[:, 0] > iris[:, 1]).sum())}/{len(iris)}"

    print(
        f"\ninverse-sine, {len(data.test)} test rows, log p(y|x) in nats per row (higher: better)"
    )
    print(f"{'model':>10} {'K':>3} {'loss':>5} {'loglik':>8} {'seconds':>8}")
    for key, k, loss, ll, sec in rows:
        print(f"{key:>10} {k:>3} {loss:>5} {ll:8.3f} {sec:8.0f}")
    print(f"{'truth':>10} {'':>3} {'':>5} {truth:8.3f}   (the generating p(y|x))")
    print(f"{'best gauss':>10} {'':>3} {'':>5} {gauss:8.3f}   (ceiling of any unimodal net)")
    for s, (mm, uu) in enumerate(iris):
        print(f"iris split {s}: MDN {mm:.3f}, unimodal {uu:.3f}, gain {mm - uu:+.3f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
