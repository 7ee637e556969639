"""pyro_vi.elbo and pyro_vi.log_marginal against closed forms on a linear-Gaussian model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vi import elbo, log_marginal
from pyro_vi.data import data_plate
from pyro_vi.evaluate import EvaluationError

D, Z, SIGMA = 5, 2, 0.7


def _setup(n=40):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(D, Z, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(n, Z, generator=g, dtype=torch.float64)
    x = z @ w.T + b + SIGMA * torch.randn(n, D, generator=g, dtype=torch.float64)
    return w, b, x


def _exact(w, b, x):
    """log N(x; b, W W^T + s^2 I) and the exact posterior N(mu, S)."""
    cov = w @ w.T + SIGMA**2 * torch.eye(D, dtype=x.dtype)
    log_px = dist.MultivariateNormal(b, cov).log_prob(x)
    prec = torch.eye(Z, dtype=x.dtype) + w.T @ w / SIGMA**2
    s = torch.linalg.inv(prec)
    mu = (x - b) @ w @ s / SIGMA**2
    return log_px, mu, s


def _pair(w, b, loc_fn, scale_fn):
    def model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, SIGMA).to_event(1), obs=x)

    def guide(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(loc_fn(x), scale_fn(x)).to_event(1))

    return model, guide


def test_exact_guide_gives_exact_log_px_with_constant_weights():
    w, b, x = _setup()
    log_px, mu, s = _exact(w, b, x)
    # the exact posterior has full covariance; rotate into a model whose posterior is diagonal
    evals, evecs = torch.linalg.eigh(s)
    w2 = w @ evecs  # z' = evecs^T z has a diagonal posterior with variances evals
    _, mu2, s2 = _exact(w2, b, x)
    assert torch.allclose(s2, torch.diag(torch.diagonal(s2)), atol=1e-10)
    model, guide = _pair(w2, b, lambda x: mu2, lambda x: torch.diagonal(s2).sqrt().expand_as(mu2))
    e = elbo(model, guide, x, num_particles=3)
    lm = log_marginal(model, guide, x, num_samples=10)
    assert torch.allclose(e, log_px, atol=1e-8)
    assert torch.allclose(lm, log_px, atol=1e-8)


def test_log_marginal_matches_closed_form_at_k5000_and_sits_above_elbo():
    w, b, x = _setup()
    log_px, mu, s = _exact(w, b, x)
    # an imperfect guide: mean-field with inflated scales and a shifted mean
    scale = 1.3 * torch.diagonal(s).sqrt()
    model, guide = _pair(w, b, lambda x: mu + 0.1, lambda x: scale.expand_as(mu))
    lm = log_marginal(model, guide, x, num_samples=5000)
    e = elbo(model, guide, x, num_particles=2000)
    assert (lm - log_px).abs().max() < 0.05
    assert bool((e < lm).all())
    # the ELBO's gap is KL(q || p(z|x)) > 0 for every datapoint
    assert bool((log_px - e > 0).all())


def test_log_marginal_is_chunk_invariant_and_iwae_k_increases():
    w, b, x = _setup(10)
    _, mu, s = _exact(w, b, x)
    scale = 1.5 * torch.diagonal(s).sqrt()
    model, guide = _pair(w, b, lambda x: mu, lambda x: scale.expand_as(mu))
    torch.manual_seed(3)
    a = log_marginal(model, guide, x, num_samples=64, chunk_size=64)
    torch.manual_seed(3)
    c = log_marginal(model, guide, x, num_samples=64, chunk_size=7)
    assert a.shape == (10,) and c.shape == (10,)
    assert (a - c).abs().max() < 0.5  # same estimator, different draws per chunk
    means = [log_marginal(model, guide, x, num_samples=k).mean() for k in (1, 10, 1000)]
    assert means[0] < means[1] < means[2]


def test_global_latents_are_split_over_datapoints_and_refused_by_log_marginal():
    x = torch.randn(6, 1, dtype=torch.float64)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.zeros(1, dtype=x.dtype), 0.5).to_event(1))

    e = elbo(model, guide, x, num_particles=4000)
    # sum over datapoints = full ELBO; closed form for this conjugate pair. The estimate's
    # standard error is below 0.02 here (sd of one particle's sum is < 1.3), so 0.1 is > 5 se.
    full = (
        sum(-0.5 * math.log(2 * math.pi) - 0.5 * (xi.item() ** 2 + 0.25) for xi in x)
        - (0.5 * 0.25 - 0.5 + math.log(1 / 0.5))  # KL(N(0, .5^2) || N(0, 1))
    )
    assert abs(e.sum().item() - full) < 0.1
    with pytest.raises(EvaluationError, match="global latent"):
        log_marginal(model, guide, x, num_samples=10)


def test_model_without_data_plate_is_refused():
    def model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(EvaluationError, match="plate named 'data'"):
        elbo(model, lambda x: None, torch.zeros(3))


def _mixture(x, idx=None, size=None):
    """Two unit Gaussians at -1 and 2 with weights 0.3 / 0.7; z enumerated in the model."""
    locs = x.new_tensor([-1.0, 2.0])
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample(
            "z", dist.Categorical(x.new_tensor([0.3, 0.7])), infer={"enumerate": "parallel"}
        )
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def test_enumerated_model_sites_are_summed_out_exactly():
    x = torch.linspace(-3, 4, 9)
    exact = torch.logsumexp(
        torch.tensor([0.3, 0.7]).log()
        + dist.Normal(torch.tensor([-1.0, 2.0]), 1.0).log_prob(x[:, None]),
        -1,
    )
    empty_guide = lambda x: None  # noqa: E731
    torch.testing.assert_close(elbo(_mixture, empty_guide, x, num_particles=3), exact)
    torch.testing.assert_close(log_marginal(_mixture, empty_guide, x, num_samples=3), exact)
    # the same value as the loss TraceEnum_ELBO trains on
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(_mixture, empty_guide, x)
    assert elbo(_mixture, empty_guide, x).sum().item() == pytest.approx(-loss, rel=1e-6)


def test_enumerated_site_outside_the_data_plate_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]), pyro.plate("pixels", 2, dim=-2):
            pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(EvaluationError, match="enumerated site 'z' lives in plates"):
        elbo(model, lambda x: None, torch.zeros(3))
