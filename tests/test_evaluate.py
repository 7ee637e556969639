"""pyro_vi.elbo, pyro_vi.log_marginal and the log-weight engine (pyro_vi.evaluate.weights) behind
them and the diagnostics, against closed forms on linear-Gaussian models."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vi import elbo, log_marginal
from pyro_vi.data import data_plate
from pyro_vi.evaluate.bounds import EvaluationError, log_weights

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


# --------------------------------------------------------------------------- the one engine
S2 = 0.5  # observation variance of the scalar conjugate model below


def _scalar_pair(loc_fn, scale_fn, left: bool = False):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, S2): p(x_i) = N(0, 1 + S2), p(z_i | x_i) = N(x_i / (1 +
    S2), S2 / (1 + S2)). ``left=True`` indexes z from the left (z[:, None]), which a leading
    particle dimension breaks."""

    def model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            if left:  # (N, 1) only without a particle dimension in front of z
                obs = dist.Normal(z[:, None], math.sqrt(S2)).expand([len(x), 1])
            else:
                obs = dist.Normal(z[..., None], math.sqrt(S2))
            pyro.sample("x", obs.to_event(1), obs=x[..., None])

    def guide(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(loc_fn(x), scale_fn(x)))

    return model, guide


def _scalar_exact(x):
    post_m, post_v = x / (1 + S2), S2 / (1 + S2)
    return dist.Normal(0.0, math.sqrt(1 + S2)).log_prob(x), post_m, post_v


def test_the_engine_against_closed_forms_on_every_path():
    """Exact guide: every log weight is log p(x_i), whichever path drew it (vectorized in one or
    several chunks, one draw at a time, the fallback of a model that indexes from the left), so
    elbo, log_marginal and the diagnostics' weights all equal it to float64 rounding."""
    from pyro_vi.diagnostics.importance import draw
    from pyro_vi.evaluate.weights import CHUNK_BUDGET, PARTICLES, chunk_sizes, score

    x = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64)
    log_px, m, v = _scalar_exact(x)
    model, guide = _scalar_pair(lambda x: m, lambda x: torch.full_like(m, math.sqrt(v)))
    for kw in ({}, {"chunk_size": 3}):
        torch.testing.assert_close(elbo(model, guide, x, num_particles=10, **kw), log_px)
        torch.testing.assert_close(log_marginal(model, guide, x, num_samples=10, **kw), log_px)
    for vectorize in (True, False):
        d = draw(model, guide, x, num_samples=12, vectorize=vectorize, chunk_size=5)
        torch.testing.assert_close(d.log_weight_local, log_px.expand(12, -1))
    left = _scalar_pair(lambda x: m, lambda x: torch.full_like(m, math.sqrt(v)), left=True)
    with pytest.warns(UserWarning, match=r"drawing one at a time.*z\[\.\.\., None\]"):
        torch.testing.assert_close(elbo(*left, x, num_particles=4), log_px)
    # one particle plate, one chunking rule
    sc = score(model, guide, (x,), {}, 6, nesting=1)
    frames = {f.name: f for f in sc.model_trace.nodes["x"]["cond_indep_stack"]}
    assert (frames[PARTICLES].size, frames[PARTICLES].dim) == (6, -2)
    assert sc.log_weight_local.shape == (6, 7) and sc.data_size == 7
    assert chunk_sizes(10, [torch.zeros(CHUNK_BUDGET // 4)]) == [4, 4, 2]
    assert chunk_sizes(10, [x], chunk_size=7) == [7, 3]


def test_the_engine_elbo_is_log_px_minus_the_analytic_kl():
    """A non-exact guide N(m + d, (c s)^2): ELBO_i = log p(x_i) - KL(q || p(z | x_i)), with the
    Monte-Carlo error in closed form too: log w = const - ((a - m + b e)^2 / v - e^2) / 2 for
    e ~ N(0, 1) has variance ((a - m) b / v)^2 + (b^2 / v - 1)^2 / 2."""
    x = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64)
    log_px, m, v = _scalar_exact(x)
    a, b = m + 0.3, 1.4 * math.sqrt(v)
    model, guide = _scalar_pair(lambda x: a, lambda x: torch.full_like(a, b))
    kl = math.log(math.sqrt(v) / b) + (b**2 + (a - m) ** 2) / (2 * v) - 0.5
    var = ((a - m) * b / v) ** 2 + 0.5 * (b**2 / v - 1) ** 2
    k = 4000
    pyro.set_rng_seed(5)
    e = elbo(model, guide, x, num_particles=k, chunk_size=1000)
    # 5 s.e. per datapoint: 7 normal errors exceed it with probability 7 * 5.7e-7 = 4e-6
    assert bool(((e - (log_px - kl)).abs() < 5 * (var / k).sqrt()).all())
    assert bool((kl > 10 * (var / k).sqrt()).all())  # the gap is resolved, not lost in noise


def test_elbo_log_marginal_and_psis_khat_see_the_same_draws():
    """One engine: at equal seeds psis_khat's raw weights, to_inference_data's log_weight_local,
    log_marginal and elbo come from the same draws, chunked alike, so log_marginal is exactly
    the log-mean-exp of psis_khat's weights and elbo their mean (also with global latents)."""
    from pyro_vi import psis_khat, to_inference_data

    x = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64)
    _, m, v = _scalar_exact(x)
    model, guide = _scalar_pair(lambda x: m - 0.2, lambda x: torch.full_like(m, 1.3 * v**0.5))
    s = 200
    for chunk in (None, 64):
        pyro.set_rng_seed(11)
        res = psis_khat(model, guide, x, num_samples=s, chunk_size=chunk)
        pyro.set_rng_seed(11)
        lm = log_marginal(model, guide, x, num_samples=s, chunk_size=chunk)
        pyro.set_rng_seed(11)
        e = elbo(model, guide, x, num_particles=s, chunk_size=chunk)
        pyro.set_rng_seed(11)
        idata = to_inference_data(model, guide, x, num_samples=s, chunk_size=chunk)
        assert res.pointwise and res.log_weights.shape == (s, 7)
        torch.testing.assert_close(lm, res.log_weights.logsumexp(0) - math.log(s))
        torch.testing.assert_close(e, res.log_weights.mean(0))
        stats = torch.as_tensor(idata.sample_stats["log_weight_local"].values).flatten(0, 1)
        torch.testing.assert_close(stats, res.log_weights)

    def global_model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), 0.8 / math.sqrt(len(x) + 1)))

    pyro.set_rng_seed(3)
    res = psis_khat(global_model, global_guide, x, num_samples=s)
    pyro.set_rng_seed(3)
    e = elbo(global_model, global_guide, x, num_particles=s)
    assert not res.pointwise and res.log_weights.shape == (s,)
    torch.testing.assert_close(e.sum(), res.log_weights.mean())
