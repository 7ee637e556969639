"""Fashion-MNIST test NLL of the published anchor recipe, trained by ``pyro_vi.fit``.

Recipe: VAE 784-300-300-40 (tanh), Bernoulli likelihood, dynamic binarization of all 60,000
training images, Adam lr 1e-3, batch 100, Trace_ELBO. The test set is binarized once with a fixed
seed; the figures are the test ELBO and the IWAE-K estimate of -log p(x) on the first N test images,
in nats per image. ``--loss iwae --particles K`` trains by the IWAE-K bound instead (Burda et al.
2016; compare with ``--loss elbo --particles K``, the same draws per step).

    python benchmarks/fashion_nll.py --epochs 10 --iwae-k 500 --test-size 1000 --seed 0

Last line: ``{"test_elbo": .., "nll": .., "epochs": .., "seconds": ..}``.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.data import load
from pyro_vi.models import VAE


def recipe_vae(**flow_options) -> VAE:
    """The anchor recipe's VAE; ``flow_options`` (guide_flow, flow_layers, ...) go to VAE."""
    return VAE(784, z_dim=40, hidden=(300, 300), activation="tanh", **flow_options)


def train_and_score(
    vae, ds, epochs, iwae_k, test_size, seed, device="auto", particles=10, **fit_options
) -> dict:
    """Fit ``vae`` on all of ``ds.train`` by the recipe; test ELBO and IWAE-``iwae_k`` NLL.
    ``fit_options`` (e.g. ``loss``, ``num_particles``) go to :func:`pyro_vi.fit`."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    result = fit(vae.model, vae.guide, ds.train, epochs=epochs, batch_size=100, lr=1e-3,
                 device=device, seed=seed, valid=None, **fit_options)  # fmt: skip
    seconds = time.perf_counter() - t0
    x = ds.test.to(result.device).evaluation_x(seed)[:test_size]
    torch.manual_seed(seed)
    with torch.no_grad():
        test_elbo = elbo(vae.model, vae.guide, x, num_particles=particles).mean().item()
        nll = -log_marginal(vae.model, vae.guide, x, num_samples=iwae_k).mean().item()
    for h in result.history:
        print(f"epoch {h['epoch']:>3}  train ELBO {h['train_elbo']:9.3f}  {h['seconds']:6.1f} s")
    print(f"test ELBO {test_elbo:.3f}  IWAE-{iwae_k} NLL {nll:.3f} on {len(x)} test images")
    return {"test_elbo": round(test_elbo, 3), "nll": round(nll, 3), "epochs": epochs,
            "seconds": round(seconds, 1), "n_test": len(x)}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iwae-k", type=int, default=500)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--elbo-particles", type=int, default=10, help="particles of the test ELBO")
    p.add_argument("--loss", default="elbo", choices=["elbo", "iwae"], help="training objective")
    p.add_argument("--particles", type=int, default=1, help="particles per training step (K)")
    a = p.parse_args(argv)

    ds = load("fashion-mnist", binarize="dynamic", valid_fraction=0.0, seed=a.seed)
    torch.manual_seed(a.seed)  # the initialization too (as benchmarks/flows.py does)
    out = train_and_score(recipe_vae(), ds, a.epochs, a.iwae_k, a.test_size, a.seed, a.device,
                          a.elbo_particles, loss=a.loss, num_particles=a.particles)  # fmt: skip
    out.pop("n_test")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
