"""Posterior diagnostics: k-hat, InferenceData, VI-corrected LOO, SBC/VSBC and bad inputs.

The reference is a conjugate model, theta ~ N(0, TAU^2 I_2), x_i | theta ~ N(theta, SIGMA^2 I_2),
whose exact posterior N(m, s^2 I) the guides below compute in closed form; a guide at c times the
exact scale has importance weights with Pareto tail k = 1 - c^2 (exact: constant weights).
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vi import sbc
from pyro_vi.data import data_plate
from pyro_vi.diagnostics.figures import khat_plot, posterior_vs_prior, ppc_plot, rank_histogram
from pyro_vi.diagnostics.importance import DiagnosticsError, draw, loo, psis_khat, to_inference_data
from pyro_vi.models import VAE

TAU, SIGMA, N = 2.0, 1.0, 20


def model(x, idx=None, size=None):
    theta = pyro.sample("theta", dist.Normal(x.new_zeros(2), TAU).to_event(1))
    with data_plate(x, idx, size):
        pyro.sample("x", dist.Normal(theta, SIGMA).to_event(1), obs=x)


def posterior(x):
    prec = 1 / TAU**2 + x.shape[0] / SIGMA**2
    return x.sum(0) / SIGMA**2 / prec, prec**-0.5


def make_guide(scale: float = 1.0, shift: float = 0.0):
    """q = N(m + shift * s, (scale * s)^2): exact for scale=1, shift=0."""

    def guide(x, idx=None, size=None):
        m, s = posterior(x)
        pyro.sample("theta", dist.Normal(m + shift * s, scale * s).to_event(1))

    return guide


@pytest.fixture
def x():
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(1)) + 1.0


def exact_log_evidence(x) -> float:
    """log p(x): per coordinate, x_{.,d} ~ N(0, SIGMA^2 I + TAU^2 11')."""
    cov = SIGMA**2 * torch.eye(len(x)) + TAU**2 * torch.ones(len(x), len(x))
    return float(dist.MultivariateNormal(torch.zeros(len(x)), cov).log_prob(x.T).sum())


def test_khat_exact_guide_is_good_and_never_inf(x):
    res = psis_khat(model, make_guide(), x, num_samples=1000)
    assert not res.pointwise and res.khat.shape == ()
    # the exact posterior: every weight is p(x) (to float32 rounding), no tail: k-hat = -inf
    torch.testing.assert_close(
        res.log_weights.double(), torch.full((1000,), exact_log_evidence(x)).double(),
        rtol=1e-5, atol=0.0,
    )  # fmt: skip
    assert float(res.khat) == -math.inf
    # a nearly exact guide (k = 1 - 0.95^2 ~ 0.10) gets a finite k-hat well below 0.5
    near = psis_khat(model, make_guide(0.95), x, num_samples=2000)
    assert math.isfinite(float(near.khat)) and float(near.khat) < 0.5


def test_a_global_khat_is_a_number_and_a_pointwise_one_says_what_to_use(x):
    res = psis_khat(model, make_guide(0.8), x, num_samples=500)
    k = float(res)  # true k = 1 - 0.8^2 = 0.36
    assert k == float(res.khat) and -0.2 < k < 0.7
    assert repr(res) == (
        f"PSISResult(global k-hat={k:.3f}, S=500, threshold={res.threshold:.3f}: ok)"
    )
    vae = VAE(x_dim=16, z_dim=2, hidden=(8,))
    xb = (torch.rand(12, 16, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    pointwise = psis_khat(vae.model, vae.guide, xb, num_samples=100)
    with pytest.raises(DiagnosticsError, match=r"pointwise \(12 values.*use \.khat.*\.bad\(\)"):
        float(pointwise)
    assert repr(pointwise).startswith("PSISResult(12 datapoints, S=100, max k-hat=")


def test_khat_fifth_scale_guide_is_bad(x):
    # true k = 1 - 0.2^2 = 0.96; the tail holds M = 3 sqrt(S) = 849 draws, sd(k-hat) ~
    # (1 + k) / sqrt(M) = 0.067, so 0.7 lies 3.9 sd below the truth.
    res = psis_khat(model, make_guide(0.2), x, num_samples=80000)
    assert float(res.khat) > 0.7
    assert res.summary()["share_above_0.7"] == 1.0


def test_psis_expectation_corrects_a_shifted_guide(x):
    m, s = posterior(x)
    res = psis_khat(model, make_guide(1.5, shift=0.5), x, num_samples=4000)
    raw = res.draws["theta"].mean(0)
    corrected = res.expectation("theta")
    # raw q mean is off by 0.5 s; with k < 0.5 the PSIS error is ~ 1.5 s / sqrt(ESS), ESS > 1000
    assert torch.all((raw - m).abs() > 0.4 * s)
    assert torch.all((corrected - m).abs() < 5 * 1.5 * s / math.sqrt(1000))


def test_draws_score_the_vae_exactly():
    """log w_i = log p(x_i | z_i) + log p(z_i) - log q(z_i | x_i), recomputed by hand."""
    vae = VAE(x_dim=16, z_dim=2, hidden=(8,))
    xb = (torch.rand(12, 16, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    d = draw(vae.model, vae.guide, xb, num_samples=30)
    z = d.values["z"]  # (S, N, 2)
    with torch.no_grad():
        loc, log_var = vae.encoder(xb).chunk(2, -1)
        log_q = dist.Normal(loc, (0.5 * log_var).exp()).log_prob(z).sum(-1)
        log_p = vae.likelihood_dist(z).log_prob(xb) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(d.log_weight_local, log_p - log_q, atol=1e-4)
    assert torch.allclose(d.log_lik["x"], vae.likelihood_dist(z).log_prob(xb), atol=1e-4)
    assert torch.equal(d.log_weight_global, torch.zeros(30))


def test_vae_pointwise_khat_and_inference_data():
    vae = VAE(x_dim=16, z_dim=2, hidden=(8,))
    xb = (torch.rand(12, 16, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    res = psis_khat(vae.model, vae.guide, xb, num_samples=200, idx=torch.arange(12) + 50, size=99)
    assert res.pointwise and res.khat.shape == (12,)
    assert torch.isfinite(res.khat).all()
    assert set(res.summary()["worst"]) <= set(range(50, 62))
    idata = to_inference_data(vae.model, vae.guide, xb, num_samples=50)
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim_0")
    assert idata.posterior["z"].shape == (2, 25, 12, 2)  # 50 draws as 2 pseudo-chains
    assert idata.log_likelihood["x"].shape == (2, 25, 12)
    assert idata.posterior_predictive["x"].shape == (2, 25, 12, 16)
    assert idata.observed_data["x"].shape == (12, 16)
    assert az.loo(idata, pointwise=True).loo_i.shape == (12,)
    assert loo(idata).pareto_k.shape == (12,)


def test_inference_data_of_conjugate_model(x):
    idata = to_inference_data(model, make_guide(), x, num_samples=400, prior=True)
    groups = {"posterior", "posterior_predictive", "log_likelihood", "sample_stats"}
    assert set(idata.groups()) >= groups | {"observed_data", "prior", "prior_predictive"}
    assert idata.posterior["theta"].shape == (4, 100, 2)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert idata.sample_stats["log_weight"].shape == (4, 100)
    assert idata.prior_predictive["x"].shape == (4, 100, N, 2)
    assert "independent draws" in idata.sample_stats.attrs["draws"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Shape validation failed" for one chain
        summary = az.summary(idata, var_names=["theta"])
    # independent draws from the exact posterior: r_hat 1 (its spread at 4 x 100 draws is about
    # 0.005), bulk ESS about S = 400 (ArviZ's estimate varies by about 10% here)
    assert (summary["r_hat"] < 1.03).all()
    assert ((summary["ess_bulk"] > 250) & (summary["ess_bulk"] < 600)).all()
    m, s = posterior(x)
    # posterior mean: MC error s / sqrt(400) = 0.011; az.summary rounds to 3 decimals
    assert np.allclose(summary["mean"].values, m.numpy(), atol=5 * s / 20 + 1e-3)
    # exact guide: constant weights, so the VI correction leaves az.loo unchanged
    # (independent draws: relative efficiency 1, which az.loo would estimate from the chains)
    ours, theirs = loo(idata), az.loo(idata, pointwise=True, reff=1.0)
    assert ours.elpd_loo == pytest.approx(theirs.elpd_loo, abs=1e-4)  # float32
    assert ours.loo_i.shape == (N,)


def exact_elpd_loo(x) -> float:
    """sum_i log p(x_i | x_-i), with p(x_i | x_-i) = N(m_-i, s_-i^2 + SIGMA^2) per coordinate."""
    total = 0.0
    for i in range(len(x)):
        m, s = posterior(torch.cat([x[:i], x[i + 1 :]]))
        total += float(dist.Normal(m, math.sqrt(s**2 + SIGMA**2)).log_prob(x[i]).sum())
    return total


def test_loo_correction_for_a_narrow_guide(x):
    """For draws from a too-narrow q the corrected elpd matches the analytic leave-one-out value;
    az.loo, which takes the draws for posterior draws, is biased."""
    pyro.set_rng_seed(0)
    idata = to_inference_data(model, make_guide(0.85), x, num_samples=4000)
    corrected, naive = loo(idata).elpd_loo, az.loo(idata).elpd_loo
    exact = exact_elpd_loo(x)  # -58.745
    # q at 0.85 s: joint-weight k = 1 - 0.85^2 = 0.28 (finite variance). Over 20 seeds with these
    # settings: corrected - exact = 0.031 +- 0.071 (sd), naive - exact = 0.590 +- 0.029
    sd = 0.071
    assert abs(corrected - exact) < 4 * sd
    assert naive - exact > 4 * sd  # 11 sd of the naive value above the bound


def mixture(x, idx=None, size=None):
    """Two-component mixture with known weights and scale; z summed out by enumeration."""
    locs = pyro.sample("locs", dist.Normal(x.new_tensor([-2.0, 2.0]), 1.0).to_event(1))
    with data_plate(x, idx, size):
        z = pyro.sample("z", dist.Categorical(x.new_tensor([0.3, 0.7])),
                        infer={"enumerate": "parallel"})  # fmt: skip
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x)


def mixture_guide(x, idx=None, size=None):
    pyro.sample("locs", dist.Normal(x.new_tensor([-2.0, 2.0]), 0.1).to_event(1))


def test_enumerated_latents_are_summed_out():
    x = torch.tensor([-2.5, -1.0, 0.3, 2.2, 3.0])
    d = draw(mixture, mixture_guide, x, num_samples=40)
    locs = d.values["locs"]  # (S, 2)
    comp = dist.Normal(locs[:, None, :], 1.0).log_prob(x[None, :, None])
    expected = torch.logsumexp(comp + torch.tensor([0.3, 0.7]).log(), -1)
    assert torch.allclose(d.log_lik["obs"], expected, atol=1e-5)
    assert d.values["z"].shape == (40, 5) and set(d.values["z"].unique().tolist()) <= {0, 1}
    assert d.random_globals and not psis_khat(mixture, mixture_guide, x, num_samples=40).pointwise


def test_sbc_uniform_for_exact_guide_and_not_for_biased(x):
    # Under the null a p-value is uniform: 1e-3 fails once in a thousand seeds. A guide shifted
    # by one posterior sd puts rank/L = Phi(z - 1), z ~ N(0, 1): the 5 bins get probabilities
    # (.56, .21, .12, .07, .03), a chi-square noncentrality of 100 * 0.91 = 91 on 4 df, far
    # beyond the 1e-4 critical value 23.5.
    exact = sbc(model, make_guide(), x, num_simulations=100, num_draws=99, seed=0)
    assert exact.ranks["theta"].shape == (100, 2)
    assert all(t.pvalue > 1e-3 for t in exact.chi2(bins=5).values())
    assert all(t.pvalue > 1e-3 for t in exact.vsbc_test().values())
    biased = sbc(model, make_guide(shift=1.0), x, num_simulations=100, num_draws=99, seed=0)
    assert all(t.pvalue < 1e-4 for t in biased.chi2(bins=5).values())
    assert all(t.pvalue < 1e-4 for t in biased.vsbc_test().values())


def test_plots_return_figures(x):
    idata = to_inference_data(model, make_guide(), x, num_samples=100, prior=True)
    assert len(posterior_vs_prior(idata).axes) >= 2
    assert len(ppc_plot(idata, column=0).axes[0].lines) >= 2
    assert len(khat_plot(np.array([-np.inf, 0.2, 0.9])).axes) == 1
    res = sbc(model, make_guide(), x, num_simulations=20, num_draws=19, seed=0)
    assert len(rank_histogram(res).axes) >= 2


# --------------------------------------------------------------------------- bad inputs
def test_guide_missing_a_latent_site(x):
    def empty_guide(x, idx=None, size=None):
        pass

    with pytest.raises(DiagnosticsError, match="guide has no site 'theta'"):
        to_inference_data(model, empty_guide, x, num_samples=100)


def test_too_few_samples(x):
    with pytest.raises(ValueError, match="num_samples=5"):
        to_inference_data(model, make_guide(), x, num_samples=5)
    with pytest.raises(ValueError, match="num_samples=9"):
        psis_khat(model, make_guide(), x, num_samples=9)


def test_pointwise_output_needs_a_data_plate(x):
    def flat_model(x):
        theta = pyro.sample("theta", dist.Normal(x.new_zeros(2), TAU).to_event(1))
        loc = theta.unsqueeze(-2).expand(theta.shape[:-1] + x.shape)
        pyro.sample("x", dist.Normal(loc, SIGMA).to_event(2), obs=x)

    def flat_guide(x):
        make_guide()(x)

    with pytest.raises(ValueError, match="no plate named 'data'"):
        psis_khat(flat_model, flat_guide, x, num_samples=100, pointwise=True)
    idata = to_inference_data(flat_model, flat_guide, x, num_samples=100)
    with pytest.raises(ValueError, match="no log_likelihood group"):
        loo(idata)


def test_pointwise_khat_with_random_globals_is_refused(x):
    with pytest.raises(ValueError, match="pointwise=False"):
        psis_khat(model, make_guide(), x, num_samples=100, pointwise=True)


def test_pointwise_khat_tolerance_does_not_grow_with_the_data_set():
    """Per-datapoint weights of a slightly-off local guide on 20,000 points in float32: each
    column's rounding tolerance follows its own terms, so no column is mistaken for constant
    weights and every k-hat is ArviZ's on the same weights (a tolerance from the sum over all
    datapoints, ~4 nats here, exceeded every column's spread of ~1.7 nats)."""
    d = 20
    sd = math.sqrt(1 / (d + 1))

    def local_model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            # z[..., None] and the broadcast expand keep a leading draws dimension intact
            loc = z[..., None].expand(z.shape + (d,))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def local_guide(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(x.sum(-1) / (d + 1) + 0.3 * sd, 1.1 * sd))

    pyro.set_rng_seed(0)
    x = torch.randn(20000, 1) * 2 + torch.randn(20000, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vectorized path, not the one-at-a-time fallback
        r = psis_khat(local_model, local_guide, x, num_samples=100, pointwise=True)
    _, k_az = az.psislw(r.log_weights.double().T.numpy().copy(), reff=1.0)
    assert bool(torch.isfinite(r.khat).all())
    np.testing.assert_allclose(r.khat.numpy(), k_az, rtol=0, atol=1e-12)


def test_sbc_ranks_of_a_discrete_latent_break_ties_at_random():
    """c ~ Categorical(3) with its exact posterior as the guide: draws often equal the true c.
    Counting only draws below it piles the ranks at 0 (chi-square p ~ 0); ties broken at random
    make them uniform again (p-value above 1e-3, which a uniform null fails once in 1000)."""
    locs = torch.tensor([-1.0, 0.0, 1.0])

    def cat_model(x, idx=None, size=None):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
        with data_plate(x, idx, size):
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def cat_guide(x, idx=None, size=None):
        pyro.sample(
            "c", dist.Categorical(logits=dist.Normal(locs[:, None], 1.0).log_prob(x).sum(-1))
        )

    res = sbc(cat_model, cat_guide, torch.zeros(5), num_simulations=200, num_draws=19, seed=1)
    assert res.chi2(bins=5)["c"].pvalue > 1e-3
    assert 0 <= res.ranks["c"].min() and res.ranks["c"].max() <= 19


def test_sbc_without_a_usable_bin_count_says_which_num_draws_to_use(x):
    res = sbc(model, make_guide(), x, num_simulations=20, num_draws=100, seed=0)  # 101 is prime
    with pytest.raises(DiagnosticsError, match="num_draws=99"):
        res.chi2()


def test_a_model_that_indexes_from_the_left_falls_back_with_the_fix_named():
    """``z[:, None]`` and ``expand([len(x), d])`` assume z has no draws dimension: the vectorized
    draw cannot work, the one-at-a-time draw does, and the warning says what to change. The same
    model written with right-aligned indexing draws vectorized, with equal weights' k-hat."""
    d = 3

    def left_model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z[:, None], 1.0).expand([len(x), d]).to_event(1), obs=x)

    def right_model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z[..., None].expand(z.shape + (d,)), 1.0).to_event(1),
                        obs=x)  # fmt: skip

    def guide(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(x.sum(-1) / (d + 1), 1.2 / math.sqrt(d + 1)))

    x = torch.randn(50, d)
    with pytest.warns(UserWarning, match=r"drawing one at a time.*z\[\.\.\., None\]"):
        slow = draw(left_model, guide, x, num_samples=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = draw(right_model, guide, x, num_samples=30)
    assert slow.log_p_local.shape == fast.log_p_local.shape == (30, 50)
    # same draws of z scored by both models: the same log p, vectorized or not
    zs = fast.values["z"]
    lp_left = dist.Normal(0.0, 1.0).log_prob(zs) + dist.Normal(zs[..., None], 1.0).log_prob(x).sum(
        -1
    )
    torch.testing.assert_close(fast.log_p_local, lp_left)
