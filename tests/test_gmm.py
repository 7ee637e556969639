"""The Gaussian mixture: EM, CAVI and SVI against scikit-learn; exact and score-function gradients
against analytic ones; the score-function guide's convergence; each guide a plain Pyro callable
that fits as the estimator does; bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from pyro_vi import fit
from pyro_vi.infer.em import cavi, em, init_params, wishart_kl
from pyro_vi.models import GMM
from pyro_vi.models.gmm import (
    GUIDES,
    AmortizedGuide,
    GMMError,
    MixtureModel,
    NotFittedError,
    ScoreGuide,
    kmeans_init,
    loss_for,
    map_guide,
    meanfield_guide,
)

LOCS = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])


def separated(n: int, seed: int = 0, dtype=torch.float64):
    """Three well-separated 2-D components with correlated covariances; train and test."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.tensor(
        [[[1.0, 0.0], [0.5, 0.6]], [[0.7, 0.0], [-0.3, 1.0]], [[0.8, 0.0], [0, 0.5]]]
    )
    z = torch.multinomial(torch.tensor([0.3, 0.3, 0.4]), 2 * n, True, generator=g)
    x = LOCS[z] + (chol[z] @ torch.randn(2 * n, 2, 1, generator=g)).squeeze(-1)
    x = x.to(dtype)
    return x[:n], z[:n], x[n:], z[n:]


def sklearn_reference(x, xt, zt, covariance="full", n_init=2):
    sk = GaussianMixture(3, covariance_type=covariance, n_init=n_init, tol=1e-3,
                         init_params="k-means++", reg_covar=1e-6, random_state=0)  # fmt: skip
    sk.fit(x.numpy())
    return sk.score(xt.numpy()), adjusted_rand_score(zt, sk.predict(xt.numpy())), sk


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_matches_sklearn(covariance):
    x, _, xt, zt = separated(800)
    ref_ll, ref_ari, sk = sklearn_reference(x, xt, zt, covariance)
    gmm = GMM(3, covariance).fit(x, method="em", seed=0, n_init=2)
    assert abs(gmm.score(xt) - ref_ll) <= 0.005 * abs(ref_ll)
    assert abs(adjusted_rand_score(zt, gmm.predict(xt)) - ref_ari) <= 0.02
    assert gmm.converged_
    # EM never lowers the likelihood; components come sorted by their means' first coordinate
    assert all(b >= a - 1e-9 for a, b in zip(gmm.history_, gmm.history_[1:], strict=False))
    assert bool((gmm.means_[1:, 0] >= gmm.means_[:-1, 0]).all())
    assert gmm.bic(xt) == pytest.approx(sk.bic(xt.numpy()), rel=0.005)


def test_svi_enumeration_matches_sklearn():
    x, _, xt, zt = separated(400, dtype=torch.float32)
    ref_ll, ref_ari, _ = sklearn_reference(x.double(), xt.double(), zt)
    gmm = GMM(3).fit(x, method="svi", seed=0, epochs=60, batch_size=400, lr=0.05)
    assert abs(gmm.score(xt) - ref_ll) <= 0.005 * abs(ref_ll)
    assert abs(adjusted_rand_score(zt, gmm.predict(xt)) - ref_ari) <= 0.02
    assert gmm.history_[-1] > gmm.history_[0]


def grid(n: int, seed: int = 0):
    """Six unit-variance 2-D clusters on a 3 x 2 grid of spacing 5; train and test."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.tensor([[5.0 * i, 5.0 * j] for i in range(3) for j in range(2)])
    z = torch.randint(6, (2 * n,), generator=g)
    x = (locs[z] + torch.randn(2 * n, 2, generator=g)).double()
    return x[:n], z[:n], x[n:], z[n:]


def test_svi_restarts_start_where_em_does_and_keep_the_best():
    """With seed 0 the first k-means++ start merges two clusters (the first restart's objective
    is the lowest); SVI's n_init restarts begin at EM's starts (float32 data give the float64
    starts), keep the best objective and reach EM's optimum."""
    x, _, xt, zt = grid(300)
    starts = [init_params(x, 6, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    starts[1] = init_params(x.float(), 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(starts[1][1].double(), starts[0][1], rtol=0, atol=1e-5)
    ref = GMM(6).fit(x, method="em", seed=0, n_init=3)
    svi = GMM(6).fit(x.float(), method="svi", seed=0, n_init=3, epochs=60, batch_size=300, lr=0.05)
    assert svi.objective_ == max(svi.restart_objectives_) > svi.restart_objectives_[0]
    assert abs(svi.score(xt) - ref.score(xt)) <= 0.005 * abs(ref.score(xt))
    ref_ari = adjusted_rand_score(zt, ref.predict(xt))
    assert abs(adjusted_rand_score(zt, svi.predict(xt)) - ref_ari) <= 0.02


def test_objective_is_the_enumerated_elbo_of_the_map_guide():
    """GMM.objective (restart selection) is -TraceEnum_ELBO / N of the MAP guide, prior included."""
    pyro.clear_param_store()
    x = tiny(40)
    gmm = GMM(2).setup(x)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, x)
    values = {key: v.detach() for key, v in gmm.map_guide.median().items()}
    assert gmm.objective(x, values) == pytest.approx(-loss / len(x), rel=1e-6)


def test_cavi_elbo_never_decreases_and_agrees_with_em():
    x, _, xt, zt = separated(500)
    gen = torch.Generator().manual_seed(0)
    fit = cavi(x, 3, n_init=1, tol=1e-8, max_iter=60, generator=gen)
    steps = np.diff(fit.history)
    assert (steps >= -1e-9 * abs(fit.history[-1])).all()  # coordinate ascent on an exact ELBO
    gmm = GMM(3).fit(x, method="cavi", seed=0)
    ref = GMM(3).fit(x, method="em", seed=0)
    assert adjusted_rand_score(ref.predict(xt), gmm.predict(xt)) > 0.98
    assert abs(gmm.score(xt) - ref.score(xt)) <= 0.01 * abs(ref.score(xt))


def test_wishart_kl_against_monte_carlo():
    torch.manual_seed(0)
    w_inv_q = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    w_inv_p = torch.tensor([[1.0, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    nu_q, nu_p = torch.tensor(6.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    q = torch.distributions.Wishart(nu_q, covariance_matrix=torch.linalg.inv(w_inv_q))
    p = torch.distributions.Wishart(nu_p, covariance_matrix=torch.linalg.inv(w_inv_p))
    lam = q.sample((20000,))
    diff = q.log_prob(lam) - p.log_prob(lam)
    tol = 5 * float(diff.std()) / math.sqrt(len(diff))
    assert float(wishart_kl(w_inv_q, nu_q, w_inv_p, nu_p)) == pytest.approx(
        float(diff.mean()), abs=tol
    )


def tiny(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 2.0


def test_enumeration_gradient_is_the_analytic_one():
    """d/dmu_k [log p(x | theta) + log p(mu)] = sum_i r_ik Sigma_k^-1 (x_i - mu_k) - prior term."""
    pyro.clear_param_store()
    x = tiny()
    gmm = GMM(2, "diag").setup(x)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(gmm.model, gmm.guide, x)
    name = next(n for n in pyro.get_param_store() if n.endswith(".locs"))
    (grad,) = torch.autograd.grad(loss, [pyro.get_param_store().get_param(name).unconstrained()])
    v = {k: t.detach() for k, t in gmm.map_guide.median().items()}
    resp = torch.softmax(gmm.log_joint(x, v), -1)  # (N, K)
    var = v["scales"] ** 2
    like = ((resp[:, :, None] * (x[:, None, :] - v["locs"])) / var).sum(0)
    prior = -(v["locs"] - gmm.mixture_.center) / (2.0 * gmm.mixture_.spread) ** 2
    torch.testing.assert_close(-grad, like + prior, rtol=1e-4, atol=1e-5)


def score_grad_samples(gmm, x, n_calls, particles):
    """Gradients of TraceGraph's surrogate loss w.r.t. the local logits, one row per call (each
    the mean over ``particles`` sequential particles: independent draws of the estimator)."""
    elbo = TraceGraph_ELBO(num_particles=particles)
    out = []
    for _ in range(n_calls):
        logits = pyro.param("gmm_z_logits")
        elbo.loss_and_grads(gmm.model, gmm.guide, x)
        out.append(-logits.unconstrained().grad.clone())
        for p in pyro.get_param_store().values():
            p.unconstrained().grad = None
    return torch.stack(out)


@pytest.mark.parametrize("baseline_beta", [None, 0.5])
def test_score_function_gradient_is_unbiased(baseline_beta):
    """dELBO_i / dlogit_ij = q_ij (f_ij - E_q f_i), f_ij = log pi_j + log N(x_i | j) - log q_ij."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = tiny()
    gmm = GMM(2, "diag", guide_kind="score", baseline_beta=baseline_beta).setup(x)
    gmm.guide(x)  # creates the parameters
    # logits within 1 of each other: every q_ij >= 0.27, so each value is drawn >= 27 times in
    # expectation among the 100 draws below and their spread shows the estimator's error (a
    # value with q_ij < 1/100 would often never be drawn, and the s.e. could not see it)
    with torch.no_grad():
        pyro.param("gmm_z_logits").unconstrained().copy_(torch.rand(6, 2))
    v = {k: t.detach() for k, t in gmm.map_guide.median().items()}
    log_q = torch.log_softmax(pyro.param("gmm_z_logits").detach(), -1)
    f = gmm.log_joint(x, v) - log_q
    analytic = log_q.exp() * (f - (log_q.exp() * f).sum(-1, keepdim=True))
    # with a baseline, each draw's baseline comes from earlier draws only, so each is unbiased
    # (and uncorrelated with the others: a martingale difference). 50 draws of 2 particles
    # each: the s.e. from their spread has t_49 tails, P(|t_49| > 5) = 8e-6 per coordinate
    draws = score_grad_samples(gmm, x, n_calls=50, particles=2)
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - analytic).abs() <= 5 * se + 1e-6).all())


def test_score_function_local_guide_converges():
    """The REINFORCE-trained q_i(z) reaches the exact posterior: its ELBO comes within 0.05 nats
    per datapoint of the enumerated ELBO (sum over z) at the same globals; the globals are right."""
    x, z, _, _ = separated(150, dtype=torch.float32)
    gmm = GMM(3, baseline_beta=0.5).fit(
        x, method="score", seed=0, epochs=50, batch_size=150, lr=0.05, lr_decay=1.0
    )
    with pyro.get_param_store().scope(gmm.param_state_):
        log_q = torch.log_softmax(pyro.param("gmm_z_logits").detach(), -1)
        v = {k: t.detach() for k, t in gmm.map_guide.median().items()}
        log_post = torch.log_softmax(gmm.log_joint(x, v), -1)  # p(z_i | x_i) at the globals
    # the enumerated ELBO minus q's ELBO is KL(q_i || p(z_i | x_i)), here exact (a sum over 3
    # values, no Monte-Carlo error): the optimisation bound 0.05 nats per datapoint
    kl = (log_q.exp() * (log_q - log_post)).sum(-1)
    assert float(kl.mean()) < 0.05, float(kl.mean())
    assert adjusted_rand_score(z, gmm.predict(x)) > 0.95


@pytest.mark.parametrize("particles", [1, 3])
def test_score_guide_with_validation_under_the_particle_plate(particles):
    """Regression: fit(..., valid=...) with the score guide evaluates held-out rows under the
    validation's particle plate. Those rows have no q_i of their own and get the posterior under
    the current globals, so their ELBO is the enumerated one (no Monte-Carlo error); validation
    neither resizes nor resets the training rows' baselines. Training with vectorized particles
    gets one baseline value per particle."""
    x, _, xv, _ = separated(120, dtype=torch.float32)
    xv = xv[:50]
    pyro.clear_param_store()
    gmm = GMM(3, guide_kind="score").setup(x)
    loss = TraceGraph_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    result = fit(gmm.model, gmm.guide, x, valid=xv, loss=loss, epochs=2, batch_size=60,
                 lr=0.05, valid_particles=particles, device="cpu", progress=False)  # fmt: skip
    assert gmm.baseline.shape == (120,) and bool(torch.isfinite(gmm.baseline).all())
    assert pyro.param("gmm_z_logits").shape == (120, 3)
    gmm.guide_kind = "map"  # same globals, z summed out
    exact = -TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, xv) / len(xv)
    assert result.history[-1]["valid_elbo"] == pytest.approx(exact, rel=1e-5)


def test_api_shapes_and_sampling():
    x, _, xt, _ = separated(300)
    gmm = GMM(3).fit(x, seed=0)
    proba = gmm.predict_proba(xt)
    assert proba.shape == (300, 3)
    torch.testing.assert_close(proba.sum(-1), torch.ones(300, dtype=proba.dtype))
    assert torch.equal(gmm.predict(xt), proba.argmax(-1))
    assert gmm.score_samples(xt).shape == (300,)
    draws, labels = gmm.sample(20000, seed=0)
    assert draws.shape == (20000, 2) and labels.shape == (20000,)
    # the sample's mean is the mixture mean within Monte-Carlo error
    mean = (gmm.weights_[:, None] * gmm.means_).sum(0)
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - mean).abs() < 5 * se).all())


def test_bad_inputs_are_one_line_errors():
    x, _, _, _ = separated(50)
    with pytest.raises(GMMError, match="n_components"):
        GMM(0).fit(x)  # checked by fit, not by the constructor (scikit-learn's rule)
    with pytest.raises(GMMError, match="exceeds"):
        GMM(60).fit(x)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(GMMError, match="NaN"):
        GMM(2).fit(bad)
    bad[3, 1] = float("inf")
    with pytest.raises(GMMError, match="NaN or Inf"):
        GMM(2).fit(bad)
    with pytest.raises(NotFittedError, match="fit"):
        GMM(2).predict(x)
    gmm = GMM(2).fit(x)
    with pytest.raises(GMMError, match="columns"):
        gmm.score(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(GMMError, match="method"):
        GMM(2).fit(x, method="gibbs")
    assert isinstance(GMMError("x"), ValueError)


def test_duplicates_and_collapsing_components_stay_finite():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.full((40, 2), 1.5), torch.randn(10, 2, generator=g)]).double()
    for covariance in ("full", "diag"):
        gmm = GMM(4, covariance).fit(x, seed=0, n_init=2)
        assert math.isfinite(gmm.score(x))
        assert bool(torch.isfinite(gmm.covariances_).all() and torch.isfinite(gmm.means_).all())
    # more components than distinct points: some collapse or empty out, all stay finite
    fit = em(torch.ones(6, 3, dtype=torch.float64), 3, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(fit.mean_loglik) and bool(torch.isfinite(fit.covariances).all())


def test_lkj_prior_lives_with_the_data():
    """The LKJ concentration follows the data's dtype and device (a CPU float would meet CUDA
    tensors in LKJCholesky.log_prob)."""
    gmm = GMM(n_components=2, covariance="full")
    x = torch.randn(50, 3, dtype=torch.float64)
    gmm.setup(x, generator=torch.Generator().manual_seed(0))
    prior = gmm.mixture_.priors(x)["corr_chol"]
    assert prior.concentration.dtype == torch.float64 and prior.concentration.device == x.device
    assert prior.log_prob(torch.eye(3, dtype=torch.float64)).dtype == torch.float64


def test_svi_restarts_checkpoint_apart_and_resume_their_own(tmp_path):
    x, _, _, _ = grid(200)
    opts = dict(method="svi", seed=0, n_init=2, epochs=4, batch_size=200, lr=0.05)
    first = GMM(6).fit(x.float(), checkpoint_dir=tmp_path, **opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restart-0", "restart-1"]
    again = GMM(6).fit(x.float(), checkpoint_dir=tmp_path, resume=True, **opts)  # nothing to run
    assert again.restart_objectives_ == pytest.approx(first.restart_objectives_, rel=1e-6)
    assert first.restart_objectives_[0] != pytest.approx(first.restart_objectives_[1], rel=1e-6)


def plain_guide(kind, model, x, start, baseline_beta):
    """The guide ``kind`` built by hand from the pair's public callables."""
    if kind == "map":
        return map_guide(model, start)
    if kind == "meanfield":
        return meanfield_guide(model, start)
    if kind == "amortized":
        return AmortizedGuide(model, map_guide(model, start))
    logits = torch.log_softmax(model.log_joint(x, start), -1)  # EM's first E-step
    return ScoreGuide(model, map_guide(model, start), logits, baseline_beta)


@pytest.mark.parametrize("kind", GUIDES)
def test_each_guide_is_a_plain_pyro_callable_that_fits_as_the_estimator_does(kind):
    """Model and guide straight from models/gmm.py in a stock pyro.infer.SVI loop (Pyro's Adam,
    the batch order and seed of pyro_vi.fit) give the estimator's fit of the same start."""
    x, _, _, _ = separated(120, dtype=torch.float32)
    n, epochs, lr, seed = len(x), 15, 0.05, 0
    # REINFORCE without a baseline: fit's probe trace (before its seed) sets the baselines from a
    # draw of the ambient RNG, which the estimator's setup (its classifier) has advanced further
    beta = None
    torch.manual_seed(1)  # the amortized guide's classifier draws its start from torch's RNG
    est = GMM(3, baseline_beta=beta).fit(
        x, method=kind, seed=seed, epochs=epochs, batch_size=n, lr=lr, lr_decay=1.0
    )

    pyro.clear_param_store()
    torch.manual_seed(1)
    model = MixtureModel.from_data(x, 3)
    start = kmeans_init(model, x, torch.Generator().manual_seed(seed))
    guide = plain_guide(kind, model, x, start, beta)
    assert isinstance(guide, {"map": AutoDelta, "meanfield": AutoNormal}.get(kind, torch.nn.Module))
    guide(x)  # its parameters, made before the seed as fit's probe trace makes them
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss_for(kind))
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        idx = torch.randperm(n, generator=order)
        svi.step(x[idx], idx=idx, size=n)

    point = guide if kind in ("map", "meanfield") else guide.globals_guide
    values = {key: v.detach() for key, v in point.median().items()}
    weights, locs, cov = model.moments(values)
    order = torch.argsort(locs[:, 0])  # the estimator's canonical order
    torch.testing.assert_close(est.weights_, weights[order], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(est.means_, locs[order], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(est.covariances_, cov[order], rtol=1e-5, atol=1e-6)
    assert est.objective_ == pytest.approx(model.objective(x, values), rel=1e-6)


# Checks scikit-learn's check_estimator may skip here, each with its reason.
SKIPPED = {
    "check_array_api_input": "runs only with SCIPY_ARRAY_API=1 set before SciPy loads; the "
    "estimator's back-end is torch, reached through numpy or torch tensors, not the array API",
}


@pytest.mark.parametrize(
    "estimator",
    [GMM(), GMM(2, covariance="diag", n_init=2), GMM(2, method="map", epochs=3, batch_size=64)],
    ids=["em", "em-diag", "svi-map"],
)
def test_check_estimator(estimator):
    """scikit-learn's own estimator checks pass, for the closed-form and the SVI fits."""
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(estimator, on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed
    assert {r["check_name"] for r in results if r["status"] == "skipped"} <= set(SKIPPED)
    assert len(results) > 30


def test_sklearn_protocol_numpy_in_numpy_out_and_model_selection():
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    x, z, xt, zt = separated(300)
    est = GMM(3, n_init=2)
    assert est.get_params()["n_components"] == 3 and est.get_params()["method"] == "em"
    copy = clone(est.set_params(covariance="diag"))
    assert copy.get_params() == est.get_params() and not hasattr(copy, "means_")
    copy.fit(x.numpy())
    assert isinstance(copy.predict(xt.numpy()), np.ndarray)
    assert isinstance(copy.predict(xt), torch.Tensor)
    np.testing.assert_allclose(copy.score_samples(xt.numpy()), copy.score_samples(xt).numpy())
    assert adjusted_rand_score(z.numpy(), copy.fit_predict(x.numpy())) > 0.9
    # keywords of fit that name parameters are set_params shorthand, and stay set
    assert GMM(3).fit(x, method="cavi", seed=1).get_params()["method"] == "cavi"
    # held-out log-likelihood (DensityMixin.score) picks K: 3 components beat 1 and 2 clearly
    search = GridSearchCV(GMM(n_init=2), {"n_components": [1, 2, 3, 4]}, cv=3).fit(x.numpy())
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["n_components"] in (3, 4) and scores[2] > scores[1] + 0.1
