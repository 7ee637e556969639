"""Gradient estimators, the amortization gap and semi-amortized training on Fashion-MNIST.

Anchor VAE recipe: 784-300-300-40 (tanh), Bernoulli likelihood, dynamic binarization of the
60,000 training images, Adam lr 1e-3, batch 100. Test images are binarized once (fixed seed) and
the first ``--test-size`` of them are used.

1. Estimator study at the trained VAE's parameters: ``--repeats`` one-particle gradients of the
   ELBO of one batch of 100 test images w.r.t. the encoder's parameters, per estimator
   (reparameterization with Monte-Carlo or analytic KL; score function without baseline, with a
   decaying-average baseline, with a neural baseline); then the same for a discrete latent (a
   3-component mixture: score function variants versus exact enumeration).
2. Training curves at equal steps: a fresh VAE per estimator, ``--curve-steps`` steps of batch 100.
3. Amortization gap (Cremer et al. 2018) of the trained VAE on the test subset: amortized ELBO,
   locally optimized ELBO (per-datapoint q from the encoder, model frozen), IWAE-K log p(x).
4. Semi-amortized VAE (K refinement steps, stop-gradient variant) trained for the same epochs
   from the same initialization; its gap is local ELBO − ELBO of "encoder + K steps"; the figure
   is the fraction of the amortized VAE's gap that it closes.

    python benchmarks/estimators.py --epochs 5 --test-size 500 --seed 0

Last line: ``{"var_ratio_score_vs_reparam": .., "amortization_gap": ..,
"semi_amortized_gap_closed": .., ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import pyro
import torch

from pyro_vi import elbo, fit
from pyro_vi.data import Split, load
from pyro_vi.infer.guides import SemiAmortizedELBO
from pyro_vi.models import VAE
from pyro_vi.studies.estimators import (
    NeuralBaseline,
    TinyMixture,
    gradient_stats,
    score_function,
    variance_ratio,
)
from pyro_vi.studies.gaps import amortization_gaps

VAE_ESTIMATORS = ("reparam", "reparam_analytic_kl", "score", "score_avg_baseline",
                  "score_nn_baseline")  # fmt: skip


def anchor_vae(seed: int) -> VAE:
    torch.manual_seed(seed)
    return VAE(784, z_dim=40, hidden=(300, 300), activation="tanh")


def estimator_setup(name: str, model, guide, x: torch.Tensor):
    """(loss, guide, neural baseline or None) for an estimator name."""
    if name == "reparam":
        return "elbo", guide, None
    if name == "reparam_analytic_kl":
        return "meanfield", guide, None
    if name == "score":
        return "tracegraph", score_function(guide), None
    if name == "score_avg_baseline":
        return "tracegraph", score_function(guide, baseline="avg"), None
    if name == "score_nn_baseline":
        # started at the current mean per-datapoint ELBO (the cost it learns to predict)
        with torch.no_grad():
            offset = float(elbo(model, guide, x, num_particles=10).mean())
        nb = NeuralBaseline(x.shape[-1], offset=offset)
        return "tracegraph", score_function(guide, baseline=nb), nb
    if name == "enum":
        return "enum", guide, None
    raise ValueError(f"unknown estimator {name!r}")


def study(model, guide, x, params, names, repeats, warmup, enum_guide=None) -> dict:
    stats = {}
    for name in names:
        g = enum_guide if name == "enum" else guide
        loss, g, nb = estimator_setup(name, model, g, x)
        pyro.set_rng_seed(1)
        t0 = time.perf_counter()
        stats[name] = gradient_stats(
            model, g, x, params, loss=loss, repeats=repeats,
            warmup=warmup if name.startswith("score_") else 0, baseline=nb,
            baseline_lr=1e-2, name=name,
        )  # fmt: skip
        stats[name].seconds = time.perf_counter() - t0
    return stats


def print_table(title: str, stats: dict, ref: str) -> None:
    print(f"\n{title}")
    print(f"{'estimator':<22}{'median Var':>12}{'Var / ' + ref:>16}{'median SNR':>12}{'s':>7}")
    for name, st in stats.items():
        s = st.summary()
        ratio = variance_ratio(st, stats[ref]) if stats[ref].var.gt(0).any() else math.nan
        print(f"{name:<22}{s['median_var']:>12.3g}{ratio:>16.3g}{s['median_snr']:>12.3g}"
              f"{st.seconds:>7.1f}")  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="tiny sizes: a smoke run of every part")
    p.add_argument("--steps", type=int, default=10, help="K refinement steps (semi-amortized)")
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--curve-steps", type=int, default=300)
    p.add_argument("--local-steps", type=int, default=500)
    p.add_argument("--iwae-k", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="also write every figure to this JSON file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    train_size, warmup = None, 100
    if a.fast:
        a.epochs, a.test_size, a.repeats, a.curve_steps = 1, 50, 20, 20
        a.local_steps, a.iwae_k, train_size, warmup = 50, 100, 2000, 20
    t_start = time.perf_counter()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}"
    )
    ds = load("fashion-mnist", binarize="dynamic", valid_fraction=0.0, seed=a.seed)
    train = ds.train if train_size is None else Split(ds.train.x[:train_size], None, "dynamic")
    x_test = ds.test.evaluation_x(a.seed)[: a.test_size]
    fit_kw = dict(batch_size=100, lr=1e-3, device="cpu", seed=a.seed, progress=False)

    # 1. amortized VAE
    pyro.clear_param_store()
    vae = anchor_vae(a.seed)
    t0 = time.perf_counter()
    res = fit(vae.model, vae.guide, train, epochs=a.epochs, **fit_kw)
    t_vae = time.perf_counter() - t0
    print(f"amortized VAE: {a.epochs} epochs, train ELBO {res.history[-1]['train_elbo']:.2f}, "
          f"{t_vae:.0f} s")  # fmt: skip

    # 2. estimator study at this point
    xb = x_test[:100]
    params = list(vae.encoder.parameters())
    st = study(vae.model, vae.guide, xb, params, VAE_ESTIMATORS, a.repeats, warmup)
    print_table(f"VAE encoder gradients: {a.repeats} repeats, batch {len(xb)}", st, "reparam")
    ratio = variance_ratio(st["score"], st["reparam"])

    torch.manual_seed(a.seed)
    mix = TinyMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    xm = mix.sample(200, torch.Generator().manual_seed(a.seed))
    mst = study(mix.model, mix.guide, xm, list(mix.encoder.parameters()),
                ("enum", "score", "score_avg_baseline", "score_nn_baseline"), a.repeats, warmup,
                enum_guide=mix.enum_guide)  # fmt: skip
    mst_ref = {k: v for k, v in mst.items() if k != "enum"}
    print_table("Mixture encoder gradients (discrete z): enumeration is exact (Var 0)",
                mst_ref, "score")  # fmt: skip
    bias = {k: float((v.mean - mst["enum"].mean).norm() / mst["enum"].mean.norm())
            for k, v in mst_ref.items()}  # fmt: skip
    print(
        "relative distance of the score-function mean from the exact gradient: "
        + ", ".join(f"{k} {v:.3f}" for k, v in bias.items())
    )

    # 3. training curves at equal steps
    per_epoch = 10
    sub = Split(ds.train.x[: per_epoch * 100], None, "dynamic")
    curves = {}
    for name in VAE_ESTIMATORS:
        pyro.clear_param_store()
        v = anchor_vae(a.seed)
        loss, guide, _ = estimator_setup(name, v.model, v.guide, sub.x[:100].bernoulli())
        t0 = time.perf_counter()
        r = fit(v.model, guide, sub, epochs=max(1, a.curve_steps // per_epoch), loss=loss,
                **fit_kw)  # fmt: skip
        curves[name] = [h["train_elbo"] for h in r.history]
        print(f"curve {name:<22} ELBO after {r.steps} steps {curves[name][-1]:9.2f}  "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip

    # 4. amortization gap of the amortized VAE
    pyro.clear_param_store()
    t0 = time.perf_counter()
    gaps = amortization_gaps(vae.model, vae, x_test, num_samples=a.iwae_k,
                             local_steps=a.local_steps, seed=a.seed)  # fmt: skip
    m = gaps["mean"]
    print(f"\nGaps on {len(x_test)} test images ({time.perf_counter() - t0:.0f} s), nats:")
    print(f"{'':<18}{'amortized':>10}{'local':>10}{'log p(x)':>10}{'approx.':>9}{'amort.':>9}")
    print(f"{'VAE':<18}{m['amortized_elbo']:>10.2f}{m['local_elbo']:>10.2f}{m['log_px']:>10.2f}"
          f"{m['approximation_gap']:>9.2f}{m['amortization_gap']:>9.2f}")  # fmt: skip

    # 5. semi-amortized VAE, same epochs and initialization
    pyro.clear_param_store()
    sa_vae = anchor_vae(a.seed)
    sa = SemiAmortizedELBO(steps=a.steps, inner_lr=a.inner_lr)
    t0 = time.perf_counter()
    sres = fit(sa_vae.model, sa_vae.guide, train, epochs=a.epochs, loss=sa, **fit_kw)
    t_sa = time.perf_counter() - t0
    print(f"semi-amortized VAE (K={a.steps}, inner lr {a.inner_lr}): train ELBO "
          f"{sres.history[-1]['train_elbo']:.2f}, {t_sa:.0f} s")  # fmt: skip
    pyro.clear_param_store()
    sgaps = amortization_gaps(
        sa_vae.model, sa_vae, x_test, num_samples=a.iwae_k, local_steps=a.local_steps,
        semi_amortized=sa, seed=a.seed,
    )  # fmt: skip
    s = sgaps["mean"]
    print(
        f"{'SA-VAE encoder':<18}{s['amortized_elbo']:>10.2f}{s['local_elbo']:>10.2f}"
        f"{s['log_px']:>10.2f}{s['approximation_gap']:>9.2f}{s['amortization_gap']:>9.2f}"
    )
    print(
        f"{'SA-VAE enc.+K':<18}{s['refined_elbo']:>10.2f}{s['local_elbo']:>10.2f}"
        f"{s['log_px']:>10.2f}{s['approximation_gap']:>9.2f}{s['semi_amortized_gap']:>9.2f}"
    )
    closed = 1.0 - s["semi_amortized_gap"] / m["amortization_gap"]
    out = {
        "var_ratio_score_vs_reparam": round(ratio, 1),
        "amortization_gap": round(m["amortization_gap"], 3),
        "semi_amortized_gap_closed": round(closed, 3),
        "approximation_gap": round(m["approximation_gap"], 3),
        "semi_amortized_gap": round(s["semi_amortized_gap"], 3),
        "log_px_vae": round(m["log_px"], 2),
        "log_px_semi_amortized": round(s["log_px"], 2),
        "epochs": a.epochs, "test_size": len(x_test), "K": a.steps, "fast": a.fast,
        "seconds": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    if a.out:
        full = dict(out, vae_stats={k: v.summary() for k, v in st.items()},
                    mixture_stats={k: v.summary() for k, v in mst.items()}, curves=curves,
                    gaps=m, semi_amortized_gaps=s)  # fmt: skip
        with open(a.out, "w") as f:
            json.dump(full, f, indent=1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
