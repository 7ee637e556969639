"""pyro_vi.elbo and pyro_vi.log_marginal against closed forms on a linear-Gaussian model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vi import elbo, log_marginal
from pyro_vi.data import data_plate
from pyro_vi.evaluate import EvaluationError, log_weights

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


def _kl(loc, scale, mu, s):
    """KL(N(loc, diag scale^2) || N(mu, s)) per row: the ELBO's gap log p(x) - ELBO."""
    prec = torch.linalg.inv(s)
    d = loc - mu
    trace = (torch.diagonal(prec) * scale**2).sum(-1)
    return 0.5 * (trace + ((d @ prec) * d).sum(-1) - Z + torch.logdet(s)) - scale.log().sum(-1)


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
    # Monte-Carlo errors from fresh log weights of the same guide (5000 per datapoint): the
    # ELBO's s.e. is sd(log w) / sqrt(2000); by the delta method IWAE-K's is sd(w / mean w) /
    # sqrt(K), and its bias is -var(w / mean w) / (2K). 5 s.e. per datapoint: with 40 datapoints
    # a normal error exceeds it with probability 40 * 5.7e-7 = 2e-5.
    lw = log_weights(model, guide, x, num_particles=5000, nesting=1)[0]
    se_e = lw.std(0) / math.sqrt(2000)
    rel_w = (lw - lw.logsumexp(0)).exp() * len(lw)  # w / mean(w), per datapoint
    se_lm, bias_lm = (rel_w.var(0) / 5000).sqrt(), rel_w.var(0) / (2 * 5000)
    # the ELBO's closed form: log p(x) - KL(q || p(z|x)) with both Gaussians known
    kl = _kl(mu + 0.1, scale.expand_as(mu), mu, s)
    assert bool(((e - (log_px - kl)).abs() < 5 * se_e).all())
    assert bool(((lm - (log_px - bias_lm)).abs() < 5 * se_lm).all())
    # KL = 0.25 nats per datapoint exceeds both tolerances together (about 0.10 + 0.04), so the two
    # checks above also place the IWAE-5000 value above the ELBO for every datapoint
    assert bool((kl > 5 * (se_e + se_lm)).all())


def test_log_marginal_is_chunk_invariant_and_iwae_k_increases():
    w, b, x = _setup(10)
    log_px, mu, s = _exact(w, b, x)
    scale = 1.5 * torch.diagonal(s).sqrt()
    model, guide = _pair(w, b, lambda x: mu, lambda x: scale.expand_as(mu))
    # IWAE-K in expectation, against closed forms. R independent estimates per datapoint from one
    # call each (x repeated R times); s.e. of the mean over the 10 datapoints from their spread.
    repeated = _pair(
        w, b, lambda xr: mu.repeat(len(xr) // 10, 1), lambda xr: scale.expand(len(xr), Z)
    )
    est, se = {}, {}
    for k, r in ((1, 2000), (10, 2000), (1000, 50)):
        v = log_marginal(*repeated, x.repeat(r, 1), num_samples=k).reshape(r, 10)
        est[k], se[k] = v.mean(), (v.var(0).sum() / r).sqrt() / 10
    # IWAE-1 is the ELBO: log p(x) - KL(q || p(z|x)) (KL = 0.46 nats here)
    kl = _kl(mu, scale.expand_as(mu), mu, s)
    assert abs(est[1] - (log_px - kl).mean()) < 4 * se[1]
    # IWAE-1000 is log p(x) less the delta-method bias var(w/p)/(2K), var(w/p) = chi^2(p(z|x) || q)
    # in closed form for two Gaussians with the same mean (0.46 here: a bias of 2e-4 nats)
    q_cov, prec = torch.diag(scale**2), torch.linalg.inv(s)
    chi2 = q_cov.det().sqrt() / s.det() / (2 * prec - torch.linalg.inv(q_cov)).det().sqrt() - 1
    assert abs(est[1000] - (log_px.mean() - chi2 / 2000)) < 4 * se[1000]
    # K = 10 sits strictly between: each step exceeds 4 s.e. of the difference (the steps are
    # about 0.44 and 0.02 nats, 45 and 11 s.e.)
    assert est[10] - est[1] > 4 * (se[1] ** 2 + se[10] ** 2).sqrt()
    assert est[1000] - est[10] > 4 * (se[10] ** 2 + se[1000] ** 2).sqrt()

    torch.manual_seed(3)
    a = log_marginal(model, guide, x, num_samples=64, chunk_size=64)
    torch.manual_seed(3)
    c = log_marginal(model, guide, x, num_samples=64, chunk_size=7)
    assert a.shape == (10,) and c.shape == (10,)
    # same estimator, different draws per chunk: two independent IWAE-64 values differ with
    # s.e. sqrt(2 var(w/p) / 64) = 0.12 (delta method); 5 s.e. per datapoint
    assert (a - c).abs().max() < 5 * (2 * chi2 / 64).sqrt()


def test_global_latents_are_split_over_datapoints_and_refused_by_log_marginal():
    x = torch.randn(6, 1, dtype=torch.float64)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.zeros(1, dtype=x.dtype), 0.5).to_event(1))

    e = elbo(model, guide, x, num_particles=4000)
    # sum over datapoints = full ELBO; closed form for this conjugate pair
    full = (
        sum(-0.5 * math.log(2 * math.pi) - 0.5 * (xi.item() ** 2 + 0.25) for xi in x)
        - (0.5 * 0.25 - 0.5 + math.log(1 / 0.5))  # KL(N(0, .5^2) || N(0, 1))
    )
    # one particle mu = eps / 2 has the log weight const + eps * sum(x) / 2 - 3 eps^2 / 8 (N = 6):
    # variance sum(x)^2 / 4 + (3/8)^2 var(eps^2) = sum(x)^2 / 4 + 0.28125. 5 s.e. of the mean
    sd = math.sqrt(0.25 * x.sum().item() ** 2 + 0.28125)
    assert abs(e.sum().item() - full) < 5 * sd / math.sqrt(4000)
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


def test_elbo_shares_global_terms_over_the_whole_data_set_under_subsampling():
    """A global mu with a point-mass guide: log p(mu) enters once in the full-data ELBO; rows of
    a subsample (idx, size) each carry log p(mu) / size, so all batches of an epoch sum to it."""

    def model(x, idx=None, size=None):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with data_plate(x, idx, size):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x, idx=None, size=None):
        pyro.sample("mu", dist.Delta(x.new_tensor(0.3)))

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    exact = float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.3)))
    exact += float(dist.Normal(0.3, 1.0).log_prob(x).sum())
    full = elbo(model, guide, x).sum()
    batches = sum(
        elbo(model, guide, x[i : i + 10], idx=torch.arange(i, i + 10), size=1000).sum()
        for i in range(0, 1000, 10)
    )
    assert float(full) == pytest.approx(exact, rel=1e-6)
    assert float(batches) == pytest.approx(exact, rel=1e-6)
