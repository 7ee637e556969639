"""Score-function versus reparameterized ELBO gradients, baselines, enumeration."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vi import elbo
from pyro_vi.data import data_plate
from pyro_vi.studies.estimators import (
    EstimatorError,
    GradientStats,
    NeuralBaseline,
    TinyMixture,
    gradient_stats,
    score_function,
    variance_ratio,
)

D, S, M = 2, 0.7, 200  # latent dim, likelihood scale, repetitions


pytestmark = pytest.mark.usefixtures("one_thread")


class LinearGaussian:
    """z ~ N(0, I), x | z ~ N(z, S^2 I); amortized guide q(z | x) = N(w x + b, exp(2c))."""

    def __init__(self):
        self.w = torch.full((D,), 0.3, requires_grad=True)
        self.b = torch.tensor([0.5, -0.4], requires_grad=True)
        self.c = torch.full((D,), -0.2, requires_grad=True)
        self.params = [self.w, self.b, self.c]

    def model(self, x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, S).to_event(1), obs=x)

    def guide(self, x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(self.w * x + self.b, self.c.exp()).to_event(1))

    def exact_gradient(self, x) -> torch.Tensor:
        """Gradient of -ELBO in closed form (Gaussian expectations and entropy)."""
        m, v = self.w * x + self.b, (2 * self.c).exp()
        lik = -0.5 * math.log(2 * math.pi * S**2) - ((x - m) ** 2 + v) / (2 * S**2)
        prior = -0.5 * math.log(2 * math.pi) - (m**2 + v) / 2
        ent = 0.5 * torch.log(2 * math.pi * math.e * v)
        loss = -(lik + prior + ent).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)])


def _z(a: GradientStats, b: GradientStats | torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(b):
        return (a.mean - b.double()).abs() / (a.var / a.repeats).sqrt()
    return (a.mean - b.mean).abs() / (a.var / a.repeats + b.var / b.repeats).sqrt()


def test_score_function_and_reparameterization_agree_in_mean_on_a_conjugate_model():
    lg = LinearGaussian()
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(0)) * 1.3
    reparam = gradient_stats(lg.model, lg.guide, x, lg.params, loss="elbo", repeats=M)
    score = gradient_stats(lg.model, score_function(lg.guide), x, lg.params, loss="tracegraph",
                           repeats=M)  # fmt: skip
    exact = lg.exact_gradient(x)
    # 6 parameters, each a mean of M draws: 4.5 standard errors bound a false alarm by ~1e-4
    assert float(_z(score, reparam).max()) < 4.5
    assert float(_z(reparam, exact).max()) < 4.5
    assert float(_z(score, exact).max()) < 4.5
    # and the means are informative: the exact gradient is many standard errors from 0
    assert float((exact.double().abs() / (reparam.var / M).sqrt()).min()) > 5
    assert variance_ratio(score, reparam) > 3


def test_analytic_kl_is_unbiased_and_lowers_the_variance_here():
    lg = LinearGaussian()
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(0)) * 1.3
    mc = gradient_stats(lg.model, lg.guide, x, lg.params, loss="elbo", repeats=M)
    analytic = gradient_stats(lg.model, lg.guide, x, lg.params, loss="meanfield", repeats=M)
    assert float(_z(analytic, lg.exact_gradient(x)).max()) < 4.5
    assert variance_ratio(analytic, mc) < 1


def test_discrete_latent_score_function_matches_enumeration_and_baselines_help():
    torch.manual_seed(0)
    mix = TinyMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    x = mix.sample(60, torch.Generator().manual_seed(1))
    params = list(mix.encoder.parameters())
    exact = gradient_stats(mix.model, mix.enum_guide, x, params, loss="enum", repeats=3)
    assert float(exact.var.max()) < 1e-8  # enumeration: an exact sum, no noise
    score = gradient_stats(mix.model, score_function(mix.guide), x, params, loss="tracegraph",
                           repeats=M)  # fmt: skip
    assert float(_z(score, exact.mean.float()).max()) < 4.5
    avg = gradient_stats(mix.model, score_function(mix.guide, baseline="avg"), x, params,
                         loss="tracegraph", repeats=M // 2, warmup=30)  # fmt: skip
    assert float(_z(avg, exact.mean.float()).max()) < 4.5
    assert variance_ratio(avg, score) < 0.5
    with torch.no_grad():  # the baseline starts at the mean cost, then learns b(x)
        nb = NeuralBaseline(2, hidden=16, offset=float(elbo(mix.model, mix.guide, x).mean()))
    neural = gradient_stats(mix.model, score_function(mix.guide, baseline=nb), x, params,
                            loss="tracegraph", repeats=M // 2, warmup=60, baseline=nb,
                            baseline_lr=3e-2)  # fmt: skip
    assert variance_ratio(neural, score) < 0.5


def test_score_function_wrapper_marks_sites_and_rejects_bad_options():
    lg = LinearGaussian()
    x = torch.randn(4, D)
    tr = poutine.trace(score_function(lg.guide, baseline="avg")).get_trace(x)
    site = tr.nodes["z"]
    assert not site["fn"].has_rsample and not site["value"].requires_grad
    assert site["infer"]["baseline"]["use_decaying_avg_baseline"]
    assert poutine.trace(lg.guide).get_trace(x).nodes["z"]["value"].requires_grad
    with pytest.raises(EstimatorError, match="baseline="):
        score_function(lg.guide, baseline="mean")
    with pytest.raises(EstimatorError, match="repeats=1"):
        gradient_stats(lg.model, lg.guide, x, lg.params, repeats=1)
    with pytest.raises(EstimatorError, match="unknown loss"):
        gradient_stats(lg.model, lg.guide, x, lg.params, loss="iwae")
    # the study leaves the parameters where they were
    before = [p.detach().clone() for p in lg.params]
    gradient_stats(lg.model, score_function(lg.guide), x, lg.params, loss="tracegraph", repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, lg.params, strict=True))
