"""One row of the published Fashion-MNIST density table (Exemplar-VAE / VampPrior), by its recipe.

Recipe (sajadn/Exemplar-VAE, ``density_estimation.py`` defaults): encoder and decoder of two
gated dense layers of 300, z = 40 (each layer for the HVAE), encoder log-variances clamped to
[-6, 2], Bernoulli decoder, dynamic binarization, 50,000 training / 10,000 validation images,
Adam lr 5e-4, batch 100, linear KL warm-up over 100 epochs, up to 2,000 epochs, early stopping
after 50 epochs without a better validation ELBO (the best epoch's parameters are kept), VampPrior
with 500 pseudo-inputs. Figures: the test ELBO and the IWAE-5000 estimate of -log p(x) on all
10,000 test images (binarized once with the seed), in nats.

    python benchmarks/density_table.py --model vampprior --run-dir runs/vampprior --hours 2.5
    python benchmarks/density_table.py --resume runs/vampprior --hours 2.5   # a later session

``--hours`` pauses the run (checkpoint written) after the epoch that passes it; the row is then
evaluated as a shortened run (``"finished": false``, its epoch count) unless ``--no-eval``.
``--resume`` refuses a run of another model or recipe. ``--fast`` is a smoke test (digits, a few
steps). Last line: ``{"model": .., "nll": .., "test_elbo": .., "epochs": .., "best_epoch": ..,
"seconds": .., "finished": ..}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.cli.runs import versions, write_json
from pyro_vi.data import load
from pyro_vi.models import HVAE, VAE

MODELS = ("vae", "vampprior", "hvae", "hvae-vampprior")
PUBLISHED = {"vae": 228.70, "vampprior": 227.35, "hvae": 227.37, "hvae-vampprior": 226.72}
RECIPE = dict(epochs=2000, batch_size=100, lr=5e-4, anneal_epochs=100, early_stopping=50,
              z_dim=40, hidden=300, log_var_clamp=[-6.0, 2.0], pseudo_inputs=500,
              valid_fraction=1 / 6, iwae_k=5000, test_size=10000,
              dataset="fashion-mnist")  # fmt: skip
FAST = dict(RECIPE, epochs=2, anneal_epochs=1, early_stopping=1, z_dim=4, hidden=16,
            pseudo_inputs=5, valid_fraction=0.1, iwae_k=8, test_size=50,
            dataset="digits")  # fmt: skip
KEYS = ("model", "loss", "particles", "guide_flow", "seed", "recipe")  # what --resume must match


class BenchError(ValueError):
    """Bad options or a run directory that does not fit them; the message names the fix."""


def build(model: str, r: dict, x_dim: int, guide_flow: str | None):
    """The pair of row ``model`` under recipe ``r``."""
    prior = "vampprior" if model.endswith("vampprior") else "gaussian"
    common = dict(z_dim=r["z_dim"], log_var_clamp=r["log_var_clamp"], prior=prior,
                  pseudo_inputs=r["pseudo_inputs"])  # fmt: skip
    if model.startswith("hvae"):
        if guide_flow:
            raise BenchError("--guide-flow is for the one-layer rows: drop it for the HVAE")
        return HVAE(x_dim, hidden=r["hidden"], **common)
    return VAE(x_dim, hidden=(r["hidden"],) * 2, gated=True, guide_flow=guide_flow, **common)


class Deadline:
    """A fit callback that prints each epoch and stops the run after the one that passes
    ``hours``."""

    def __init__(self, hours: float | None):
        self.end = None if hours is None else time.monotonic() + 3600 * hours
        self.fired = False

    def __call__(self, record: dict) -> bool:
        h = record
        print(f"epoch {h['epoch']:>4}  train {h['train_elbo']:9.3f}  valid "
              f"{h.get('valid_elbo', 0):9.3f}  beta {h['beta']:.3f}  {h['seconds']:6.1f} s",
              flush=True)  # fmt: skip
        self.fired = self.end is not None and time.monotonic() > self.end
        return self.fired


def settings(a) -> dict:
    """What the run directory records and ``--resume`` checks."""
    if a.resume:
        path = Path(a.resume) / "bench.json"
        if not path.exists():
            raise BenchError(f"{a.resume} holds no bench.json: not a density_table run directory")
        saved = json.loads(path.read_text())
        asked = {k: getattr(a, k) for k in KEYS[:-1] if getattr(a, k) is not None}
        for k, v in asked.items():
            if saved[k] != v:
                raise BenchError(f"--resume {a.resume}: that run has {k}={saved[k]!r}, not {v!r}")
        if saved["recipe"] != (FAST if a.fast else RECIPE):
            raise BenchError(f"--resume {a.resume}: that run used another recipe; start a new one")
        return saved
    if a.model is None:
        raise BenchError(f"--model is needed for a new run: one of {', '.join(MODELS)}")
    particles = 1 if a.particles is None else a.particles
    if particles < 1:
        raise BenchError(f"--particles {particles}: use 1 or more")
    return dict(model=a.model, loss=a.loss or "elbo", particles=particles,
                guide_flow=a.guide_flow, seed=a.seed if a.seed is not None else 0,
                recipe=FAST if a.fast else RECIPE, versions=versions())  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--loss", choices=["elbo", "iwae"], help="training objective (default elbo)")
    p.add_argument("--particles", type=int, help="particles per training step (K; default 1)")
    p.add_argument("--guide-flow", choices=["nice", "realnvp"])
    p.add_argument("--seed", type=int)
    p.add_argument("--run-dir", help="checkpoint folder of a new run")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--hours", type=float, help="pause after the epoch that passes this")
    p.add_argument("--no-eval", action="store_true", help="skip the test figures of a paused run")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action="store_true", help="smoke test: digits, a few steps")
    a = p.parse_args(argv)
    try:
        s = settings(a)
    except BenchError as e:
        p.exit(2, f"density_table.py: error: {e}\n")
    run_dir = Path(a.resume or a.run_dir or "runs/density-" + s["model"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(s, run_dir / "bench.json")
    r = s["recipe"]
    ds = load(
        r["dataset"],
        binarize="dynamic",
        seed=s["seed"],
        valid_fraction=r["valid_fraction"],
    )
    pyro.clear_param_store()
    torch.manual_seed(s["seed"])
    net = build(s["model"], r, ds.dim, s["guide_flow"])
    deadline = Deadline(a.hours)
    fit_options = dict(loss=s["loss"], num_particles=s["particles"])
    result = fit(net.model, net.guide, ds, epochs=r["epochs"], batch_size=r["batch_size"],
                 lr=r["lr"], anneal_epochs=r["anneal_epochs"], early_stopping=r["early_stopping"],
                 valid=ds.valid, device=a.device, seed=s["seed"], checkpoint_dir=run_dir,
                 checkpoint_every=5, resume=bool(a.resume), run_info=s, callback=deadline,
                 progress=False, **fit_options)  # fmt: skip
    history = result.history
    epochs = history[-1]["epoch"] if history else 0
    finished = not deadline.fired
    out = dict(model=s["model"], loss=s["loss"], particles=s["particles"],
               guide_flow=s["guide_flow"], epochs=epochs, best_epoch=result.best_epoch,
               seconds=round(sum(h["seconds"] for h in history), 1), step=result.step,
               finished=finished, published=PUBLISHED[s["model"]])  # fmt: skip
    if finished or not a.no_eval:
        t0 = time.perf_counter()
        x = ds.test.to(result.device).evaluation_x(s["seed"])[: r["test_size"]]
        torch.manual_seed(s["seed"])
        with torch.no_grad():
            out["test_elbo"] = round(elbo(net.model, net.guide, x).mean().item(), 3)
            lm = log_marginal(net.model, net.guide, x, num_samples=r["iwae_k"])
            out["nll"] = round(-lm.mean().item(), 3)
            out["nll_se"] = round(lm.std().item() / len(lm) ** 0.5, 3)
        out["eval_seconds"] = round(time.perf_counter() - t0, 1)
        out["n_test"] = len(x)
    write_json(out, run_dir / ("result.json" if finished else "paused.json"))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
