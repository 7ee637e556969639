"""Conditional log-likelihood of the CVAE against its baseline network: Fashion-MNIST quadrants.

For 1, 2 and 3 visible quadrants (bottom-left, then top-left, then bottom-right) the masked rest of
each image is the target. Per setting: the baseline MLP x -> y is trained alone for
``--baseline-epochs`` epochs, then the CVAE (its prior network fed the baseline's prediction) for
``--epochs`` epochs by ``pyro_vi.fit`` (Trace_ELBO, Adam lr 1e-3, batch 128). Training images are
binarized dynamically (a fresh Bernoulli draw per batch, all 60,000 images); the first
``--test-size`` test images are one static draw with ``--seed``. Figures in nats per image, on the
masked pixels only: the baseline's NLL -log p_NN(y|x), the CVAE's -ELBO and its importance-sampled
-log p(y|x) (``pyro_vi.log_marginal``, K = ``--iwae-k`` draws from q(z|x,y)).

    python benchmarks/cvae.py --epochs 3 --baseline-epochs 3 --iwae-k 1000 --test-size 1000 --seed 0

Last line: ``{"cll_cvae_q1": .., "cll_nn_q1": .., ..., "cll_gain_min": ..}`` (negative
conditional log-likelihoods, lower is better; gain = baseline - CVAE).
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.data import load
from pyro_vi.models.cvae import CVAE


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="CVAE epochs per setting")
    p.add_argument("--baseline-epochs", type=int, default=3, help="baseline epochs per setting")
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--elbo-particles", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small networks)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    ds = load("fashion-mnist", binarize="dynamic", valid_fraction=0.0, seed=a.seed, device=a.device)
    x = ds.test.evaluation_x(a.seed)[: a.test_size]
    out, rows = {}, []
    for q in (1, 2, 3):
        pyro.clear_param_store()  # every setting registers its networks under "cvae"
        pyro.set_rng_seed(a.seed)
        t0 = time.perf_counter()
        cvae = CVAE.from_data(ds, task="quadrant", quadrants=q, z_dim=a.z_dim, hidden=a.hidden,
                              baseline_epochs=a.baseline_epochs)  # fmt: skip
        t1 = time.perf_counter()
        fit(cvae.model, cvae.guide, ds.train, epochs=a.epochs, batch_size=128, lr=1e-3,
            device=a.device, seed=a.seed, progress=False)  # fmt: skip
        t2 = time.perf_counter()
        torch.manual_seed(a.seed)
        with torch.no_grad():
            neg_elbo = -elbo(cvae.model, cvae.guide, x, num_particles=a.elbo_particles).mean()
            cll = -log_marginal(cvae.model, cvae.guide, x, num_samples=a.iwae_k).mean()
            nn_nll = cvae.baseline_nll(x).mean()
        t3 = time.perf_counter()
        out[f"cll_cvae_q{q}"], out[f"cll_nn_q{q}"] = round(cll.item(), 3), round(nn_nll.item(), 3)
        rows.append((q, nn_nll.item(), neg_elbo.item(), cll.item()))
        print(f"q={q}: baseline {t1 - t0:.0f} s, CVAE fit {t2 - t1:.0f} s, evaluation "
              f"{t3 - t2:.0f} s", flush=True)  # fmt: skip
    print(f"\nFashion-MNIST, {len(x)} test images, nats per image on the masked quadrants")
    k = f"CVAE NLL (K={a.iwae_k})"
    print(f"{'visible':>8} {'baseline NLL':>13} {'CVAE -ELBO':>11} {k:>18} {'gain':>6}")
    for q, nn_nll, neg_elbo, cll in rows:
        print(f"{q:>8} {nn_nll:13.2f} {neg_elbo:11.2f} {cll:18.2f} {nn_nll - cll:6.2f}")
    out["cll_gain_min"] = round(min(nn - c for _, nn, _, c in rows), 3)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
