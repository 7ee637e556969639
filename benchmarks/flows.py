"""Benchmark: NICE and Real-NVP (pyro_vi.flows) against zuko's, and Fashion-MNIST bits/dim.

2-D density estimation on two moons, eight Gaussians and the checkerboard: our flows trained by
``pyro_vi.fit`` (model with an observed site, empty guide) and zuko's NICE and RealNVP trained by a
plain PyTorch loop (zuko's own usage: ``-flow().log_prob(x).mean()``, one Adam over its
parameters), at equal depth, width, optimizer, learning rate, batch size, batches per epoch and
epochs. zuko's NICE is its additive coupling (``univariate=AdditiveTransform``) followed by a
learned diagonal scaling, NICE's architecture; zuko's RealNVP is its default affine coupling. The
epochs of the two run interleaved (one of ours, then one of zuko's, from ``fit``'s callback); the
time per epoch is each side's median. The test NLL (nats, mean over held-out points) is computed
once after training on the same test set. NICE on 2-D data varies by a few tenths of a nat from
seed to seed (for zuko's as for ours): ``--seeds N`` reports medians over N seeds (both sides get
the same seed for initialization and batch order).

Fashion-MNIST: bits/dim of the 8-bit test images (uniform dequantization, logit transform with
alpha = 0.05, Jacobians exact; see ``pyro_vi.models.flow_density``) after a short run.

Flow posterior: the anchor VAE recipe of ``benchmarks/fashion_nll.py`` (784-300-300-40, tanh,
dynamic binarization, Adam 1e-3, batch 100) with the diagonal Gaussian q(z|x) and with q(z|x) the
same Gaussian pushed through ``--vae-flow-layers`` conditional NICE or Real-NVP couplings, at equal
epochs and seed; IWAE-``--iwae-k`` test NLL on the first ``--vae-test`` test images.

zuko is a benchmark-only extra: ``pip install zuko``. Usage::

    python benchmarks/flows.py                 # the recorded configuration
    python benchmarks/flows.py --fast          # a smoke run in well under a minute
    python benchmarks/flows.py --epochs 50 --seed 1

The last line printed is one JSON object: ``nll_gap_vs_zuko`` (worst over flows and 2-D sets of
our test NLL minus zuko's, nats), ``time_ratio_vs_zuko`` (worst ratio of median epoch times,
ours / zuko) and ``flow_posterior_nll_gain`` (the smaller over NICE and Real-NVP posteriors of the
diagonal VAE's test NLL minus the flow VAE's, nats; null with ``--skip-vae``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import pyro
import torch

from pyro_vi import fit
from pyro_vi.data import load
from pyro_vi.flows import nice, realnvp
from pyro_vi.models.flow_density import TOY_2D, FlowDensity, toy_2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_nll import recipe_vae, train_and_score  # noqa: E402  (the VAE anchor recipe)

try:
    import zuko
    from zuko.lazy import UnconditionalTransform
    from zuko.transforms import AdditiveTransform, DependentTransform
except ImportError:  # pragma: no cover - the message is the remedy
    sys.exit("benchmarks/flows.py compares against zuko: `pip install zuko` and run again")


def zuko_flow(kind: str, layers: int, hidden: tuple[int, ...]) -> torch.nn.Module:
    """zuko's NICE (additive coupling + diagonal scaling) or RealNVP at our depth and width."""
    if kind == "realnvp":
        return zuko.flows.RealNVP(2, transforms=layers, hidden_features=hidden)
    flow = zuko.flows.NICE(
        2, transforms=layers, hidden_features=hidden, univariate=AdditiveTransform, shapes=[()]
    )
    scale = UnconditionalTransform(_diag_scale, torch.zeros(2))  # NICE's scaling layer
    return zuko.flows.Flow([*flow.transform.transforms, scale], flow.base)


def _diag_scale(log_scale: torch.Tensor) -> torch.distributions.Transform:
    affine = torch.distributions.AffineTransform(0.0, log_scale.exp())
    return DependentTransform(affine, 1)


def our_flow(kind: str, layers: int, hidden: tuple[int, ...]):
    return (nice if kind == "nice" else realnvp)(2, num_layers=layers, hidden_dims=hidden)


def run_2d(kind, x_train, x_test, args, seed: int) -> dict:
    """Train ours and zuko's on one set, epochs interleaved; test NLLs and median epoch times.

    ``seed`` sets both initializations (same torch seed) and both batch orders."""
    hidden = (args.hidden,) * 2
    torch.manual_seed(seed)
    ours = FlowDensity(our_flow(kind, args.layers, hidden), name=f"flow_{kind}")
    torch.manual_seed(seed)
    ref = zuko_flow(kind, args.layers, hidden)
    opt = torch.optim.Adam(ref.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    ref_times: list[float] = []

    def zuko_epoch(_record=None):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x_train), generator=gen).split(args.batch_size):
            loss = -ref().log_prob(x_train[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ref_times.append(time.perf_counter() - t0)

    pyro.clear_param_store()
    result = fit(
        ours.model,
        ours.guide,
        x_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        device="cpu",
        progress=False,
        callback=zuko_epoch,
    )
    ours.eval()
    with torch.no_grad():
        nll_ours = -float(ours.log_prob(x_test).mean())
        nll_ref = -float(ref().log_prob(x_test).mean())
    t_ours = statistics.median(h["seconds"] for h in result.history)
    t_ref = statistics.median(ref_times)
    return dict(nll_ours=nll_ours, nll_zuko=nll_ref, sec_ours=t_ours, sec_zuko=t_ref)


def run_fashion(kind: str, args) -> dict:
    """A short maximum-likelihood run on Fashion-MNIST; test bits/dim of the 8-bit images."""
    ds = load("fashion-mnist")
    x_train, x_test = ds.train.x, ds.test.x
    if args.fmnist_train:
        x_train = x_train[: args.fmnist_train]
    if args.fmnist_test:
        x_test = x_test[: args.fmnist_test]
    torch.manual_seed(args.seed)
    builder = nice if kind == "nice" else realnvp
    flow = builder(ds.dim, num_layers=args.fmnist_layers, hidden_dims=(args.fmnist_hidden,) * 2)
    base = "logistic" if kind == "nice" else "normal"  # NICE's prior; Real-NVP's
    model = FlowDensity(flow, base=base, images=True, alpha=0.05, name=f"fmnist_{kind}")
    pyro.clear_param_store()
    result = fit(
        model.model,
        model.guide,
        x_train,
        epochs=args.fmnist_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="cpu",
        progress=False,
    )
    model.eval()
    bpd = model.bits_per_dim(x_test, num_samples=1, seed=args.seed)
    train_bpd = -result.history[-1]["train_elbo"] / (ds.dim * math.log(2.0))
    return dict(
        bpd=float(bpd.mean()),
        bpd_se=float(bpd.std() / math.sqrt(len(bpd))),
        train_bpd=train_bpd,
        sec_epoch=statistics.median(h["seconds"] for h in result.history),
        n_train=len(x_train),
        n_test=len(x_test),
    )


def run_vae_posteriors(args) -> dict[str, float]:
    """Diagonal vs flow q(z|x) in the anchor VAE; prints a table, returns each flow's NLL gain."""
    ds = load("fashion-mnist", binarize="dynamic", valid_fraction=0.0, seed=args.seed)
    if args.fast:
        ds.train.x = ds.train.x[:2000]
    runs = {}
    for kind in (None, "nice", "realnvp"):
        options = {} if kind is None else dict(guide_flow=kind, flow_layers=args.vae_flow_layers)
        torch.manual_seed(args.seed)
        vae = recipe_vae(**options)
        runs[kind] = train_and_score(vae, ds, args.vae_epochs, args.iwae_k, args.vae_test,
                                     args.seed, device="cpu")  # fmt: skip
    print(f"\n| VAE q(z|x) ({args.vae_epochs} epochs) | test ELBO | IWAE-{args.iwae_k} NLL "
          "| gain (nats) | training s |\n|---|---|---|---|---|")  # fmt: skip
    for kind, r in runs.items():
        name = "diagonal Gaussian" if kind is None else f"{kind}, {args.vae_flow_layers} layers"
        gain = runs[None]["nll"] - r["nll"]
        print(f"| {name} | {r['test_elbo']:.3f} | {r['nll']:.3f} | {gain:+.3f} | "
              f"{r['seconds']:.0f} |", flush=True)  # fmt: skip
    return {k: runs[None]["nll"] - r["nll"] for k, r in runs.items() if k is not None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs on each 2-D set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", type=int, default=1, help="2-D: medians over seeds seed..seed+N-1 (init, order)"
    )
    p.add_argument("--fast", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--layers", type=int, default=8, help="coupling layers (2-D)")
    p.add_argument("--hidden", type=int, default=64, help="hidden width, two layers (2-D)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    p.add_argument("--n-train", type=int, default=8000, help="2-D training points")
    p.add_argument("--n-test", type=int, default=20000, help="2-D test points")
    p.add_argument("--sets", nargs="*", default=list(TOY_2D), choices=TOY_2D,
                   help="2-D sets (none: skip them)")  # fmt: skip
    p.add_argument("--flows", nargs="+", default=["nice", "realnvp"], choices=["nice", "realnvp"],
                   help="2-D: which flows")  # fmt: skip
    p.add_argument("--skip-fmnist", action="store_true", help="no Fashion-MNIST bits/dim")
    p.add_argument("--fmnist-epochs", type=int, default=3)
    p.add_argument("--fmnist-layers", type=int, default=6)
    p.add_argument("--fmnist-hidden", type=int, default=256)
    p.add_argument("--fmnist-train", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--fmnist-test", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--skip-vae", action="store_true", help="no flow-posterior VAE comparison")
    p.add_argument("--vae-epochs", type=int, default=10, help="epochs of each VAE")
    p.add_argument("--vae-flow-layers", type=int, default=4, help="couplings of the posterior")
    p.add_argument("--vae-test", type=int, default=1000, help="first N test images")
    p.add_argument("--iwae-k", type=int, default=5000, help="importance samples of the VAE NLL")
    args = p.parse_args(argv)
    if args.fast:
        args.epochs, args.n_train, args.n_test = min(args.epochs, 3), 1000, 1000
        args.fmnist_epochs, args.fmnist_train, args.fmnist_test = 1, 1000, 500
        args.fmnist_hidden, args.fmnist_layers = 64, 2
        args.vae_epochs, args.vae_test, args.iwae_k = 1, 100, 50

    torch.set_num_threads(args.threads)
    print(
        f"# pyro_vi flows benchmark, {date.today()}, {platform.machine()} "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"zuko {zuko.__version__}; {vars(args)}"
    )
    rows = []
    header = "| set | flow | test NLL ours | test NLL zuko | gap | s/epoch ours | s/epoch zuko "
    print(f"\n{header}| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for s, name in enumerate(TOY_2D):
        if name not in args.sets:
            continue
        x_train = toy_2d(name, args.n_train, seed=1000 * args.seed + 2 * s)
        x_test = toy_2d(name, args.n_test, seed=1000 * args.seed + 2 * s + 1)
        for kind in args.flows:
            runs = []
            for k in range(args.seeds):
                runs.append(run_2d(kind, x_train, x_test, args, args.seed + k))
                if args.seeds > 1:
                    g = runs[-1]["nll_ours"] - runs[-1]["nll_zuko"]
                    print(f"#   {name} {kind} seed {args.seed + k}: gap {g:+.4f}", flush=True)
            r = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            r.update(set=name, flow=kind)
            rows.append(r)
            if args.seeds > 1:  # the paired per-seed gaps: their mean and its standard error
                gaps = [run["nll_ours"] - run["nll_zuko"] for run in runs]
                se = statistics.stdev(gaps) / math.sqrt(len(gaps))
                print(f"#   {name} {kind}: mean paired gap {statistics.mean(gaps):+.4f} ± {se:.4f}")
            print(
                f"| {name} | {kind} | {r['nll_ours']:.4f} | {r['nll_zuko']:.4f} | "
                f"{r['nll_ours'] - r['nll_zuko']:+.4f} | {r['sec_ours']:.3f} | "
                f"{r['sec_zuko']:.3f} | {r['sec_ours'] / r['sec_zuko']:.2f} |",
                flush=True,
            )

    if not args.skip_fmnist:
        print(
            "\n| Fashion-MNIST | test bits/dim | ± s.e. | train bits/dim (last epoch) | s/epoch |"
        )
        print("|---|---|---|---|---|")
    for kind in () if args.skip_fmnist else ("nice", "realnvp"):
        f = run_fashion(kind, args)
        print(
            f"| {kind} ({f['n_train']} train, {f['n_test']} test) | {f['bpd']:.3f} | "
            f"{f['bpd_se']:.3f} | {f['train_bpd']:.3f} | {f['sec_epoch']:.1f} |",
            flush=True,
        )

    gain = None if args.skip_vae else min(run_vae_posteriors(args).values())
    summary = {
        "nll_gap_vs_zuko": round(max(r["nll_ours"] - r["nll_zuko"] for r in rows), 4)
        if rows
        else None,
        "time_ratio_vs_zuko": round(max(r["sec_ours"] / r["sec_zuko"] for r in rows), 3)
        if rows
        else None,
        "flow_posterior_nll_gain": None if gain is None else round(gain, 3),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
