"""Per-step overhead of ``pyro_vi.fit`` against a hand-written pure-PyTorch SVI step.

Both sides train the same network with the same single-particle ELBO estimator
(log p(x|z) + log p(z) − log q(z), scaled by N/B), the same Adam, the same batch size and the same
device-resident data batched by index. The reference writes the log-densities in closed form (no
distribution objects, no tracing): the best honest version of "no framework". Runs interleave:
fit calls back after each of its epochs and the reference then runs one epoch of its own, so both
see the same machine state. The first epoch of each (warm-up, Pyro's validation step) is dropped;
the figures are medians of per-step times.

    python benchmarks/overhead.py --epochs 12

Cases: (i) the 784-400-50 VAE (Bernoulli, ReLU) at batch 128 on binary data of MNIST size
(Fashion-MNIST binarized when the Debian package is present, else Bernoulli(0.3) noise: timing
does not depend on the pixels); (ii) seed 003's 2-D toy (2-10-1, Gaussian decoder with learned
per-dimension scale) at batch 256. Last line: ``{"ratio_large": .., "ratio_small": ..}``.

    python benchmarks/overhead.py --vs-pyro-svi --epochs 12 --threads 1

instead times a user's own loop: Pyro's stock ``pyro.infer.SVI`` against ``pyro_vi.SVI`` swapped
into the same loop (same pairs built alike, same batches, Adam 1e-3, epochs interleaved) on the
toy, the VAE and the CVAE (the quadrant task on the large case's images: one visible quadrant,
the other three the target).
Last line: ``{"svi_ratio_small": .., "svi_ratio_large": .., "svi_ratio_cvae": .., ...}``.

    python benchmarks/overhead.py --vs-pyro --threads 1

times whole calls: ``pyro_vi.fit`` (default ``capture="auto"``, no validation) against Pyro's
stock loop (``pyro.infer.SVI`` with ``pyro.optim.Adam``, the same batches by index) over 300,
600, 2,400 and 10,000 steps of the toy and of the 784-400-50 VAE, each run in a fresh process
(imports, the first optimizer's and the first capture's costs included), from just before the
call to its end. Last line: ``{"ratio_vs_pyro_toy_300": .., ..., "ratio_vs_pyro_vae_10000": ..}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI as PyroSVI
from pyro.infer import Trace_ELBO

from pyro_vi import SVI, fit
from pyro_vi.data import Split, load, missing
from pyro_vi.infer.capture import script, trace
from pyro_vi.models import CVAE, VAE

LOG2PI = math.log(2 * math.pi)


def _normal_lp(x, loc, log_scale):
    return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG2PI


class Reference:
    """One epoch of hand-written SVI for a :class:`VAE`-shaped network (its own copy).

    ``captured=True`` runs the same step through the mechanism fit uses (make_fx of loss and
    gradients, replayed by TorchScript, one graph per batch shape): the best version of the
    hand-written step, so that the comparison does not credit fit with the mechanism alone."""

    def __init__(self, vae: VAE, x: torch.Tensor, batch_size: int, lr: float, seed: int,
                 captured: bool = False):  # fmt: skip
        self.net = VAE(**vae.config).to(x.device)
        self.x, self.batch_size = x, batch_size
        self.params = list(self.net.parameters())
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.gen = torch.Generator(device=x.device).manual_seed(seed)
        self.captured = captured
        self.graphs: dict = {}

    def loss(self, xb: torch.Tensor, n: int) -> torch.Tensor:
        net = self.net
        loc, log_var = net.encoder(xb).chunk(2, -1)
        log_scale = 0.5 * log_var
        eps = torch.randn_like(loc)
        z = loc + torch.exp(log_scale) * eps
        out = net.decoder(z)
        if net.likelihood == "bernoulli":
            log_lik = -F.binary_cross_entropy_with_logits(out, xb, reduction="none").sum(-1)
        else:
            log_lik = _normal_lp(xb, out, net.x_log_scale).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG2PI).sum(-1)
        log_q = (-0.5 * eps**2 - log_scale - 0.5 * LOG2PI).sum(-1)
        return -(log_lik + log_prior - log_q).sum() * (n / xb.shape[0])

    def _graph(self, xb: torch.Tensor, n: int):
        key = tuple(xb.shape)
        if key not in self.graphs:

            def loss_and_grads(*flat):
                loss = self.loss(flat[-1], n)
                return [loss.detach(), *torch.autograd.grad(loss, flat[:-1])]

            gm = trace(loss_and_grads, (*self.params, xb))
            scripted = script(gm, (*self.params, xb))
            self.graphs[key] = gm if scripted is None else scripted
        return self.graphs[key]

    def step(self, xb: torch.Tensor, n: int) -> float:
        if self.captured:
            with torch.no_grad():
                loss, *grads = self._graph(xb, n)(*self.params, xb)
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
        else:
            loss = self.loss(xb, n)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def epoch(self) -> tuple[float, int]:
        n = self.x.shape[0]
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=self.gen, device=self.x.device)
        steps = 0
        for start in range(0, n, self.batch_size):
            self.step(self.x[order[start : start + self.batch_size]], n)
            steps += 1
        return time.perf_counter() - t0, steps


def measure(vae: VAE, x: torch.Tensor, batch_size: int, epochs: int, seed: int) -> dict:
    """Interleaved per-step medians (seconds) of fit, of the hand-written step and of the
    hand-written step captured, and the ratios of fit to each."""
    pyro.clear_param_store()
    refs = {
        "ref": Reference(vae, x, batch_size, 1e-3, seed),
        "ref_captured": Reference(vae, x, batch_size, 1e-3, seed, captured=True),
    }
    times: dict[str, list[float]] = {k: [] for k in refs}

    def after_epoch(record):
        for name, ref in refs.items():
            seconds, steps = ref.epoch()
            times[name].append(seconds / steps)

    result = fit(vae.model, vae.guide, Split(x), epochs=epochs, batch_size=batch_size, lr=1e-3,
                 device=x.device, seed=seed, progress=False, callback=after_epoch,
                 capture=True)  # fmt: skip
    steps = math.ceil(x.shape[0] / batch_size)
    fit_med = statistics.median([h["seconds"] / steps for h in result.history][1:])
    out = {"fit_step": result.step, "fit_step_ms": 1e3 * fit_med}
    for name, t in times.items():
        med = statistics.median(t[1:])
        out[f"{name}_step_ms"] = 1e3 * med
        out[f"ratio_vs_{name}"] = fit_med / med
    return out


def measure_svi(make_pair, x: torch.Tensor, batch_size: int, epochs: int, seed: int) -> dict:
    """Pyro's stock ``pyro.infer.SVI`` loop against the same loop with ``pyro_vi.SVI``: two pairs
    built alike (their own ``pyro.module`` names), the same batches, Adam(1e-3), epochs
    interleaved; per-step medians without the first epoch (capture, warm-up), and the whole loops.
    ``make_pair(name)`` returns (model, guide). First the two loops from one seed and one
    initial state for 20 steps: the largest relative difference of their losses."""
    n = x.shape[0]

    def batches(epoch):
        g = torch.Generator(device=x.device).manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g, device=x.device)
        return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]

    def make(cls, name, state=None):
        model, guide = make_pair(name)
        if state is not None:
            model.__self__.load_state_dict(state)
        return model, cls(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    pyro.clear_param_store()
    gap = 0.0
    m0, _ = make(PyroSVI, "init")
    state = {k: v.clone() for k, v in m0.__self__.state_dict().items()}
    losses = {}
    for cls, name in ((PyroSVI, "check_pyro"), (SVI, "check_ours")):
        _, svi = make(cls, name, state)
        pyro.set_rng_seed(seed)
        losses[name] = [svi.step(x[i], idx=i, size=n) for i in batches(0)[:20]]
    for a, b in zip(losses["check_pyro"], losses["check_ours"], strict=True):
        gap = max(gap, abs(a - b) / abs(a))
    loops = {"pyro": make(PyroSVI, "pyro")[1], "ours": make(SVI, "ours")[1]}
    times: dict[str, list[float]] = {k: [] for k in loops}
    pyro.set_rng_seed(seed)
    for epoch in range(epochs):
        order = batches(epoch)
        for name, svi in loops.items():
            t0 = time.perf_counter()
            for i in order:
                svi.step(x[i], idx=i, size=n)
            times[name].append((time.perf_counter() - t0) / len(order))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    total = {k: sum(v) for k, v in times.items()}
    return {
        "pyro_step_ms": 1e3 * med["pyro"], "ours_step_ms": 1e3 * med["ours"],
        "ratio": med["ours"] / med["pyro"], "ratio_whole_loop": total["ours"] / total["pyro"],
        "mode": loops["ours"].mode, "max_rel_loss_gap": gap,
    }  # fmt: skip


def vs_pyro_svi(a, device, x_large, source) -> dict:
    """Rows of ``--vs-pyro-svi``: the 2-D toy, the 784-400-50 VAE and the CVAE."""
    x_small = load("gaussian2d", n=5120, seed=a.seed, device=device).train.x
    cases = {
        "2-10-1 toy, batch 256": (
            lambda name: _pair(VAE(2, 1, (10,), likelihood="normal", name=name)), x_small, 256, 4
        ),
        "784-400-50 VAE, batch 128": (lambda name: _pair(VAE(784, 50, (400,), name=name)),
                                      x_large, 128, 1),
        "CVAE 28x28 quadrant, batch 128": (
            lambda name: _pair(CVAE((28, 28), "quadrant", 1, z_dim=20, hidden=(400,), name=name)),
            x_large, 128, 1,
        ),
    }  # fmt: skip
    rows = {}
    for label, (make_pair, x, batch_size, scale) in cases.items():
        rows[label] = measure_svi(make_pair, x, batch_size, a.epochs * scale, a.seed)
    print(f"large data: {source}; torch {torch.__version__}, pyro {pyro.__version__}, {device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'case':<32}{'Pyro SVI ms':>12}{'pyro_vi.SVI ms':>15}{'ratio':>8}{'whole':>8}"
          f"{'loss gap':>10}  mode")  # fmt: skip
    for label, r in rows.items():
        print(f"{label:<32}{r['pyro_step_ms']:>12.3f}{r['ours_step_ms']:>15.3f}"
              f"{r['ratio']:>8.3f}{r['ratio_whole_loop']:>8.3f}{r['max_rel_loss_gap']:>10.1e}"
              f"  {r['mode']}")  # fmt: skip
    keys = ("small", "large", "cvae")
    out = {f"svi_ratio_{k}": round(r["ratio"], 3) for k, r in zip(keys, rows.values(), strict=True)}
    out |= {f"svi_ratio_{k}_whole_loop": round(r["ratio_whole_loop"], 3)
            for k, r in zip(keys, rows.values(), strict=True)}  # fmt: skip
    print(json.dumps(out))
    return out


WHOLE_CASES = {"toy": (5120, 256), "vae": (6400, 128)}  # rows, batch: whole batches only
WHOLE_STEPS = (300, 600, 2400, 10000)


def one_whole_run(kind: str, case: str, steps: int, seed: int, device, x_large) -> dict:
    """One whole call in this process: ``fit`` or Pyro's stock loop for ``steps`` steps."""
    n, batch = WHOLE_CASES[case]
    if case == "toy":
        x = load("gaussian2d", n=2 * n, seed=seed, device=device).train.x[:n]
        vae = VAE(2, 1, (10,), likelihood="normal")
    else:
        x, vae = x_large[:n], VAE(784, 50, (400,))
    epochs = steps // (n // batch)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    if kind == "fit":
        r = fit(vae.model, vae.guide, Split(x), epochs=epochs, batch_size=batch, valid=None,
                progress=False, device=device, seed=seed)  # fmt: skip
        mode, last = r.step, r.history[-1]["train_elbo"]
    else:
        svi = PyroSVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        gen = torch.Generator(device=device).manual_seed(seed)
        for _ in range(epochs):
            total = 0.0
            for i in torch.randperm(n, generator=gen, device=device).split(batch):
                total += svi.step(x[i], idx=i, size=n)
        mode, last = "pyro.infer.SVI", -total / (n // batch) / n
    return {"seconds": time.perf_counter() - t0, "mode": mode, "train_elbo": last}


def vs_pyro(a) -> dict:
    """Rows of ``--vs-pyro``: every case and length, fit and Pyro each in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads or 1))
    out, rows = {}, []
    for case in WHOLE_CASES:
        for steps in WHOLE_STEPS:
            got = {}
            for kind in ("pyro", "fit") if steps % 600 else ("fit", "pyro"):  # alternate order
                cmd = [sys.executable, __file__, "--one", kind, case, str(steps),
                       "--threads", str(a.threads or 1), "--seed", str(a.seed)]  # fmt: skip
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                got[kind] = json.loads(res.stdout.strip().splitlines()[-1])
            ratio = got["fit"]["seconds"] / got["pyro"]["seconds"]
            out[f"ratio_vs_pyro_{case}_{steps}"] = round(ratio, 3)
            rows.append((case, steps, got, ratio))
            print(f"{case:<5}{steps:>7} steps  fit {got['fit']['seconds']:8.2f} s  Pyro "
                  f"{got['pyro']['seconds']:8.2f} s  ratio {ratio:6.3f}  {got['fit']['mode']}",
                  flush=True)  # fmt: skip
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {a.threads or 1} thread(s)")
    print(json.dumps(out))
    return out


def _pair(module):
    return module.model, module.guide


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=12, help="interleaved epochs per case")
    p.add_argument("--large-n", type=int, default=6400, help="rows for the large case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--vs-pyro-svi", action="store_true",
                   help="Pyro's SVI loop against pyro_vi.SVI in the same loop instead")  # fmt: skip
    p.add_argument("--vs-pyro", action="store_true",
                   help="whole fit calls against Pyro's stock loop, fresh processes")  # fmt: skip
    p.add_argument("--one", nargs=3, metavar=("KIND", "CASE", "STEPS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.vs_pyro:
        return vs_pyro(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)

    if missing("fashion-mnist") is None:
        x_large = load("fashion-mnist", binarize="static", device=device).train.x[: a.large_n]
        source = "fashion-mnist (static binarization)"
    else:
        x_large = torch.bernoulli(torch.full((a.large_n, 784), 0.3, device=device))
        source = "Bernoulli(0.3) noise"
    if a.one:
        kind, case, steps = a.one
        r = one_whole_run(kind, case, int(steps), a.seed, device, x_large)
        print(json.dumps(r))
        return r
    if a.vs_pyro_svi:
        return vs_pyro_svi(a, device, x_large, source)
    pyro.set_rng_seed(a.seed)
    large = measure(VAE(784, 50, (400,)), x_large, 128, a.epochs, a.seed)
    x_small = load("gaussian2d", n=5120, seed=a.seed, device=device).train.x
    pyro.set_rng_seed(a.seed)
    small_vae = VAE(2, 1, (10,), likelihood="normal")
    small = measure(small_vae, x_small, 256, a.epochs * 4, a.seed)
    print(f"large data: {source}; torch {torch.__version__}, pyro {pyro.__version__}, {device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'case':<28}{'fit ms':>9}{'ref ms':>9}{'ratio':>8}{'ref-captured ms':>17}{'ratio':>8}")
    for name, r in (("784-400-50 VAE, batch 128", large), ("2-10-1 toy, batch 256", small)):
        print(f"{name:<28}{r['fit_step_ms']:>9.3f}{r['ref_step_ms']:>9.3f}"
              f"{r['ratio_vs_ref']:>8.3f}{r['ref_captured_step_ms']:>17.3f}"
              f"{r['ratio_vs_ref_captured']:>8.3f}")  # fmt: skip
    print(f"fit's step: {large['fit_step']} (large), {small['fit_step']} (small)")
    out = {
        "ratio_large": round(large["ratio_vs_ref"], 3),
        "ratio_small": round(small["ratio_vs_ref"], 3),
        "ratio_large_vs_captured_ref": round(large["ratio_vs_ref_captured"], 3),
        "ratio_small_vs_captured_ref": round(small["ratio_vs_ref_captured"], 3),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
