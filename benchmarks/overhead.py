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
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vi import fit
from pyro_vi.data import DEBIAN_FASHION, Split, load
from pyro_vi.models import VAE

LOG2PI = math.log(2 * math.pi)


def _normal_lp(x, loc, log_scale):
    return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG2PI


class Reference:
    """One epoch of hand-written SVI for a :class:`VAE`-shaped network (its own copy)."""

    def __init__(self, vae: VAE, x: torch.Tensor, batch_size: int, lr: float, seed: int):
        self.net = VAE(**vae.config).to(x.device)
        self.x, self.batch_size = x, batch_size
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.gen = torch.Generator(device=x.device).manual_seed(seed)

    def step(self, xb: torch.Tensor, n: int) -> float:
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
        loss = -(log_lik + log_prior - log_q).sum() * (n / xb.shape[0])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
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
    """Interleaved per-step medians (seconds) of fit and of the reference, and their ratio."""
    pyro.clear_param_store()
    ref = Reference(vae, x, batch_size, 1e-3, seed)
    ref_times: list[float] = []

    def after_epoch(record):
        seconds, steps = ref.epoch()
        ref_times.append(seconds / steps)

    result = fit(vae.model, vae.guide, Split(x), epochs=epochs, batch_size=batch_size, lr=1e-3,
                 device=x.device, seed=seed, progress=False, callback=after_epoch)  # fmt: skip
    steps = math.ceil(x.shape[0] / batch_size)
    fit_times = [h["seconds"] / steps for h in result.history][1:]
    ref_times = ref_times[1:]
    fit_med, ref_med = statistics.median(fit_times), statistics.median(ref_times)
    return {"fit_step_ms": 1e3 * fit_med, "ref_step_ms": 1e3 * ref_med, "ratio": fit_med / ref_med}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=12, help="interleaved epochs per case")
    p.add_argument("--large-n", type=int, default=6400, help="rows for the large case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)

    if DEBIAN_FASHION.is_dir():
        x_large = load("fashion-mnist", binarize="static", device=device).train.x[: a.large_n]
        source = "fashion-mnist (static binarization)"
    else:
        x_large = torch.bernoulli(torch.full((a.large_n, 784), 0.3, device=device))
        source = "Bernoulli(0.3) noise"
    pyro.set_rng_seed(a.seed)
    large = measure(VAE(784, 50, (400,)), x_large, 128, a.epochs, a.seed)
    x_small = load("gaussian2d", n=5120, seed=a.seed, device=device).train.x
    pyro.set_rng_seed(a.seed)
    small_vae = VAE(2, 1, (10,), likelihood="normal")
    small = measure(small_vae, x_small, 256, a.epochs * 4, a.seed)
    print(f"large data: {source}; torch {torch.__version__}, pyro {pyro.__version__}, {device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'case':<28}{'fit ms/step':>12}{'ref ms/step':>12}{'ratio':>8}")
    for name, r in (("784-400-50 VAE, batch 128", large), ("2-10-1 toy, batch 256", small)):
        print(f"{name:<28}{r['fit_step_ms']:>12.3f}{r['ref_step_ms']:>12.3f}{r['ratio']:>8.3f}")
    out = {"ratio_large": round(large["ratio"], 3), "ratio_small": round(small["ratio"], 3)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
