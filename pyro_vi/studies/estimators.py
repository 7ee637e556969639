r"""Gradient estimators of the ELBO, measured: variance and signal-to-noise per parameter.

For :math:`\mathcal L(\phi) = \mathbb E_{q_\phi(z \mid x)}[r(x, z)] + \mathcal H(q_\phi)`, with
:math:`r = \log p_\theta(x, z)`, the encoder gradient has two unbiased one-sample estimators:

* score function (REINFORCE, "policy gradient"):
  :math:`\nabla_\phi \log q_\phi(z \mid x)\,(r(x, z) - \log q_\phi(z \mid x) - b)`,
  :math:`z \sim q_\phi`, for any :math:`q` (discrete too); a baseline :math:`b` that does not
  depend on :math:`z` keeps it unbiased and can cut the variance (a decaying average of the
  cost, or a network :math:`b_\psi(x)` fitted to it by least squares);
* reparameterization: :math:`\nabla_\phi [r(x, g_\phi(\epsilon, x)) - \log q_\phi(g_\phi(\epsilon,
  x) \mid x)]`, :math:`z = g_\phi(\epsilon, x) = \mu_\phi(x) + \sigma_\phi(x)\,\epsilon`, for
  reparameterizable q only; the KL part may be Monte-Carlo or analytic (TraceMeanField_ELBO).

Pyro forms the score-function surrogate for a site whose distribution has ``has_rsample=False``;
:class:`TraceGraph_ELBO` multiplies each site's score by its downstream cost only (per datapoint
in a vectorized plate) and applies ``infer["baseline"]``. :func:`score_function` wraps a guide so
its sites are sampled without reparameterization (and with a baseline). For a discrete latent only
the score function and enumeration (exact sum: zero variance) apply.

:func:`gradient_stats` draws ``repeats`` independent gradient estimates at one point of parameter
space and returns per-parameter mean, variance and SNR = |mean| / std. Example::

    params = list(vae.encoder.parameters())
    reparam = gradient_stats(vae.model, vae.guide, x, params, loss="elbo", repeats=200)
    score = gradient_stats(vae.model, score_function(vae.guide), x, params, loss="tracegraph")
    print(variance_ratio(score, reparam))      # median over parameters of Var ratio
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

from pyro_vi.data import data_plate

__all__ = [
    "EstimatorError",
    "GradientStats",
    "NeuralBaseline",
    "TinyMixture",
    "ScoreFunction",
    "gradient_stats",
    "score_function",
    "variance_ratio",
    "ESTIMATORS",
]

#: The estimators of the study: (loss name, guide wrapping) per label.
ESTIMATORS = {
    "reparam": "reparameterization, Monte-Carlo KL (Trace_ELBO)",
    "reparam_analytic_kl": "reparameterization, analytic KL (TraceMeanField_ELBO)",
    "score": "score function, no baseline (TraceGraph_ELBO)",
    "score_avg_baseline": "score function, decaying-average baseline",
    "score_nn_baseline": "score function, neural baseline b(x)",
    "enum": "exact enumeration (discrete latents)",
}


class EstimatorError(ValueError):
    """An estimator cannot be measured as asked; the message names the problem and the fix."""


def _detach_sampling(fn: dist.Distribution) -> None:
    while isinstance(fn, (dist.Independent, torch.distributions.Independent)):
        fn = fn.base_dist
    fn.has_rsample_(False)


class ScoreFunction(Messenger):
    """Sample the guide's latent sites without reparameterization, with an optional baseline."""

    def __init__(self, baseline: dict | None = None, sites: list[str] | None = None):
        super().__init__()
        self.baseline, self.sites = baseline, sites

    def _pyro_sample(self, msg):
        if msg["is_observed"] or (self.sites is not None and msg["name"] not in self.sites):
            return
        _detach_sampling(msg["fn"])
        if self.baseline is not None:
            msg["infer"] = {**msg["infer"], "baseline": dict(self.baseline)}


class NeuralBaseline(nn.Module):
    """:math:`b_\\psi(x)`: a small MLP from a datapoint to a scalar (its expected cost)."""

    def __init__(self, x_dim: int, hidden: int = 100, offset: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():  # start at a typical cost (e.g. the current mean ELBO) to learn less
            self.net[-1].bias.fill_(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def score_function(
    guide: Callable,
    baseline: str | NeuralBaseline | None = None,
    beta: float = 0.9,
    sites: list[str] | None = None,
) -> Callable:
    """``guide`` with its latent sites sampled for the score-function estimator.

    ``baseline``: None, ``"avg"`` (Pyro's decaying average of the downstream cost, rate
    ``beta``; needs batches of one size) or a :class:`NeuralBaseline` (registered in the param
    store as ``"score_baseline"``, trained by TraceGraph_ELBO's least-squares baseline loss).
    Use with ``loss="tracegraph"``.
    """
    if baseline not in (None, "avg") and not isinstance(baseline, nn.Module):
        raise EstimatorError(f"baseline={baseline!r}: use None, 'avg' or a NeuralBaseline")

    def wrapped(x, *args, **kwargs):
        opts = None
        if baseline == "avg":
            opts = {"use_decaying_avg_baseline": True, "baseline_beta": beta}
        elif baseline is not None:
            pyro.module("score_baseline", baseline)
            opts = {"nn_baseline": baseline, "nn_baseline_input": x}
        with ScoreFunction(opts, sites):
            return guide(x, *args, **kwargs)

    return wrapped


@dataclass
class GradientStats:
    """Per-parameter statistics of ``repeats`` gradient estimates, flattened over parameters."""

    name: str
    mean: torch.Tensor
    var: torch.Tensor
    repeats: int

    @property
    def snr(self) -> torch.Tensor:
        """|mean| / std per parameter (0 where both are 0)."""
        std = self.var.sqrt()
        return torch.where(std > 0, self.mean.abs() / std.clamp_min(1e-300), torch.zeros_like(std))

    def summary(self) -> dict:
        """Medians over parameters (those with non-zero variance) and the mean gradient norm."""
        live = self.var > 0
        return {
            "estimator": self.name,
            "median_var": float(self.var[live].median()) if live.any() else 0.0,
            "mean_var": float(self.var.mean()),
            "median_snr": float(self.snr[live].median()) if live.any() else math.inf,
            "grad_norm": float(self.mean.norm()),
            "repeats": self.repeats,
        }


#: The losses :func:`gradient_stats` measures, with their options for
#: :func:`pyro_vi.infer.training.make_loss` (one particle: one gradient estimate per draw).
_LOSS_OPTIONS = {
    "elbo": {},
    "meanfield": {},
    "tracegraph": {},
    "enum": {"max_plate_nesting": 1},
}


def _make_loss(loss: str | pyro.infer.ELBO) -> pyro.infer.ELBO:
    if isinstance(loss, pyro.infer.ELBO):
        return loss
    if loss not in _LOSS_OPTIONS:
        raise EstimatorError(
            f"unknown loss {loss!r}: use {', '.join(_LOSS_OPTIONS)} (or a pyro.infer.ELBO)"
        )
    from pyro_vi.infer.training import make_loss  # on first use: fit's module is heavy to import

    return make_loss(loss, **_LOSS_OPTIONS[loss])


def _surrogate(loss: pyro.infer.ELBO, model, guide, args, kwargs) -> torch.Tensor:
    if isinstance(loss, pyro.infer.TraceGraph_ELBO):
        return loss._loss_and_surrogate_loss(model, guide, args, kwargs)[1]
    return loss.differentiable_loss(model, guide, *args, **kwargs)


def gradient_stats(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    params: list[torch.Tensor],
    *,
    loss: str | pyro.infer.ELBO = "elbo",
    repeats: int = 100,
    warmup: int = 0,
    baseline: nn.Module | None = None,
    baseline_lr: float = 1e-3,
    name: str = "",
    **kwargs,
) -> GradientStats:
    r"""Per-parameter mean and variance of ``repeats`` one-particle gradients of -ELBO.

    The model and guide parameters stay where they are (one point of parameter space): only
    ``baseline``'s parameters (a neural baseline) are stepped, by Adam during ``warmup`` extra
    draws before measuring; a decaying-average baseline warms up over the same draws.
    Gradients are w.r.t. ``params`` (e.g. the encoder's) and accumulated in float64.
    """
    if repeats < 2:
        raise EstimatorError(f"repeats={repeats}: use at least 2 to estimate a variance")
    elbo = _make_loss(loss)
    params = list(params)
    base_params = list(baseline.parameters()) if baseline is not None else []
    opt = torch.optim.Adam(base_params, lr=baseline_lr) if base_params else None
    total = sum(p.numel() for p in params)
    ref = params[0]
    s1 = torch.zeros(total, dtype=torch.float64, device=ref.device)
    s2 = torch.zeros_like(s1)
    for k in range(warmup + repeats):
        surrogate = _surrogate(elbo, model, guide, (x,), kwargs)
        grads = torch.autograd.grad(surrogate, params + base_params, allow_unused=True)
        if opt is not None and k < warmup:
            for p, g in zip(base_params, grads[len(params) :], strict=True):
                p.grad = g
            opt.step()
        if k < warmup:
            continue
        flat = torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for p, g in zip(params, grads[: len(params)], strict=True)
        ]).double()  # fmt: skip
        s1 += flat
        s2 += flat * flat
    mean = s1 / repeats
    var = ((s2 - repeats * mean * mean) / (repeats - 1)).clamp_min(0.0)
    return GradientStats(name, mean, var, repeats)


def variance_ratio(a: GradientStats, b: GradientStats) -> float:
    """Median over parameters of Var_a / Var_b (parameters where Var_b > 0)."""
    live = b.var > 0
    if not live.any():
        raise EstimatorError("the reference estimator has zero variance everywhere: swap a and b")
    return float((a.var[live] / b.var[live]).median())


class TinyMixture(nn.Module):
    r"""A K-component Gaussian mixture with a discrete local latent and an amortized guide.

    Model: :math:`c_i \sim \mathrm{Cat}(\pi)`, :math:`x_i \mid c_i \sim \mathcal N(\mu_{c_i},
    \sigma^2 I)` (fixed :math:`\pi, \mu, \sigma`); guide:
    :math:`q_\phi(c_i \mid x_i) = \mathrm{Cat}(\mathrm{softmax}(W x_i + b))`. The guide's site
    can be enumerated (``enumerate=True``: exact expectation, TraceEnum_ELBO) or sampled (score
    function, TraceGraph_ELBO).
    """

    def __init__(self, locs: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("locs", locs)
        self.scale = scale
        self.k, self.dim = locs.shape
        self.encoder = nn.Linear(self.dim, self.k)

    def model(self, x, idx=None, size=None):
        with data_plate(x, idx, size):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(len(x), self.k)))
            pyro.sample("x", dist.Normal(self.locs[c], self.scale).to_event(1), obs=x)

    def guide(self, x, idx=None, size=None, enumerate: bool = False):
        pyro.module("mixture", self)
        infer = {"enumerate": "parallel"} if enumerate else {}
        with data_plate(x, idx, size):
            pyro.sample("c", dist.Categorical(logits=self.encoder(x)), infer=infer)

    def enum_guide(self, x, idx=None, size=None):
        """The guide with its site enumerated (for TraceEnum_ELBO)."""
        return self.guide(x, idx, size, enumerate=True)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the model."""
        c = torch.randint(self.k, (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return (self.locs.cpu()[c] + self.scale * noise).to(self.locs.device)
