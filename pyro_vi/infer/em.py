"""Closed-form inference for Gaussian mixtures: EM and its Bayesian twin, CAVI.

Both alternate the two coordinate-ascent steps of the ELBO (seed 001)

.. math::

    \\mathcal{L}(q, \\theta) = \\sum_i \\mathbb{E}_{q_i(z)}[\\log p_\\theta(x_i, z)] + H[q_i]
                             = \\sum_i \\log p_\\theta(x_i) - KL(q_i(z) \\| p_\\theta(z \\mid x_i)).

**EM** (:func:`em`) is the case where the E-step makes the bound tight, ``q_i(z) = p(z | x_i)``
(the responsibilities ``r_ik``), and the M-step maximizes :math:`\\sum_i E_{q_i}[\\log p(x_i, z)]`
in closed form: ``N_k = sum_i r_ik``, ``pi_k = N_k / N``,
``mu_k = sum_i r_ik x_i / N_k``, ``Sigma_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + reg I``.
It climbs the mean log-likelihood :math:`\\frac1N \\sum_i \\log \\sum_k \\pi_k N(x_i | \\mu_k,
\\Sigma_k)` and stops when an iteration gains less than ``tol``.

**CAVI** (:func:`cavi`) puts conjugate priors on the globals, ``pi ~ Dirichlet(alpha0)``,
``Lambda_k ~ Wishart(W0, nu0)``, ``mu_k | Lambda_k ~ N(m0, (beta0 Lambda_k)^-1)``, and keeps the
mean-field family ``q(z) q(pi) prod_k q(mu_k, Lambda_k)``; every factor has an analytic update
(Bishop, PRML 10.2) and the ELBO is exact, so it must never decrease.

Everything is batched torch (matmul E-steps, Cholesky solves, no loop over points) on the device
and in the floating dtype of the data::

    x = torch.randn(1000, 2)
    fit = em(x, 3, n_init=3, generator=torch.Generator().manual_seed(0))
    fit.weights, fit.locs, fit.covariances, fit.mean_loglik
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = [
    "MixtureFit",
    "CAVIFit",
    "component_log_prob",
    "kmeans_plusplus",
    "init_params",
    "em",
    "cavi",
    "wishart_kl",
]

COVARIANCES = ("full", "diag")


@dataclass
class MixtureFit:
    """Point estimates of a Gaussian mixture and how the fit went.

    ``covariances`` is (K, D, D) for ``"full"`` and the (K, D) variances for ``"diag"``.
    ``history`` holds the objective (mean log-likelihood for EM, ELBO per datapoint for CAVI) at
    every iteration of the best restart.
    """

    weights: torch.Tensor
    locs: torch.Tensor
    covariances: torch.Tensor
    covariance: str
    mean_loglik: float
    n_iter: int
    converged: bool
    history: list[float] = field(default_factory=list)


@dataclass
class CAVIFit(MixtureFit):
    """CAVI's point summaries (E[pi], m_k, E[Lambda_k]^-1) plus the variational factors.

    q(pi) = Dirichlet(``alpha``); q(mu_k, Lambda_k) = N(mu_k | ``m_k``, (``beta_k`` Lambda_k)^-1)
    Wishart(Lambda_k | W_k, ``nu_k``) with ``W_k = inv(W_inv_k)``. ``mean_loglik`` is the final
    ELBO per datapoint.
    """

    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    m: torch.Tensor | None = None
    W_inv: torch.Tensor | None = None
    nu: torch.Tensor | None = None


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _safe_cholesky(cov: torch.Tensor, reg: float) -> torch.Tensor:
    """Cholesky factors of a batch of covariances, adding jitter where a factor fails."""
    chol, info = torch.linalg.cholesky_ex(cov)
    jitter = max(reg, 1e-10)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    while bool((info > 0).any()):
        jitter *= 10.0
        bad = (info > 0)[:, None, None]
        scale = cov.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1.0)[:, None, None]
        cov = torch.where(bad, cov + jitter * scale * eye, cov)
        chol, info = torch.linalg.cholesky_ex(cov)
    return chol


def component_log_prob(
    x: torch.Tensor, locs: torch.Tensor, covariances: torch.Tensor, covariance: str = "full"
) -> torch.Tensor:
    """``log N(x_i | mu_k, Sigma_k)`` for every point and component, shape (N, K).

    Full covariances go through one Cholesky factor per component and one (N, D) x (D, K D)
    matmul: ``||L_k^-1 (x - mu_k)||^2 = ||x P_k - mu_k P_k||^2`` with ``P_k = L_k^-T``.
    """
    n, d = x.shape
    k = locs.shape[0]
    log2pi = d * math.log(2 * math.pi)
    if covariance == "diag":
        prec = covariances.reciprocal()  # (K, D)
        maha = (
            (x * x) @ prec.T - 2.0 * x @ (locs * prec).T + (locs * locs * prec).sum(-1)
        ).clamp_min(0.0)
        return -0.5 * (log2pi + covariances.log().sum(-1) + maha)
    chol = _safe_cholesky(covariances, 0.0)
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(k, d, d)
    prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)  # L^-T
    proj = prec_chol.permute(1, 0, 2).reshape(d, k * d)  # column block k is P_k
    shift = torch.einsum("kd,kde->ke", locs, prec_chol).reshape(1, k * d)
    y = torch.addmm(shift, x, proj, beta=-1.0)  # x P_k - mu_k P_k, all k at once
    maha = y.square().view(n, k, d).sum(-1)
    half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (log2pi + maha) - half_logdet


def kmeans_plusplus(
    x: torch.Tensor, k: int, generator: torch.Generator | None = None, n_local_trials: int = 0
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn): ``k`` rows of x.

    Each new centre is the best, by total squared distance, of ``n_local_trials`` (default
    ``2 + log k``) candidates drawn with probability proportional to the squared distance to the
    nearest centre chosen so far. ``generator`` is a CPU generator; its draws are float64 whatever
    the dtype of ``x``, so float32 and float64 copies of the same data get the same seeds.
    """
    n = x.shape[0]
    trials = n_local_trials or 2 + int(math.log(k))
    sq = (x * x).sum(-1)

    def dist2(c: torch.Tensor) -> torch.Tensor:  # (N, C) squared distances to rows of c
        return (sq[:, None] - 2.0 * x @ c.T + (c * c).sum(-1)).clamp_min(0.0)

    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    closest = dist2(x[first : first + 1])[:, 0]
    for _ in range(1, k):
        cumulative = closest.double().cumsum(0)
        total = cumulative[-1]
        if not bool(total > 0):  # every point sits on a centre: pick any
            cand = torch.randint(n, (trials,), generator=generator).to(x.device)
        else:
            u = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device) * total
            cand = torch.searchsorted(cumulative, u).clamp_max(n - 1)
        new = torch.minimum(closest[:, None], dist2(x[cand]))  # (N, trials)
        best = int(new.sum(0).argmin())
        centers.append(x[cand[best]])
        closest = new[:, best]
    return torch.stack(centers)


def _hard_resp(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    d2 = (x * x).sum(-1, keepdim=True) - 2.0 * x @ centers.T + (centers * centers).sum(-1)
    return torch.nn.functional.one_hot(d2.argmin(-1), centers.shape[0]).to(x.dtype)


# Second moments x x^T of all points are cached (one GEMM per M-step instead of a (K, N, D)
# product) when the data is float64 (no cancellation worth noting after centring) and small enough.
_OUTER_CACHE_LIMIT = 64_000_000


def _outer(x: torch.Tensor) -> torch.Tensor | None:
    n, d = x.shape
    if x.dtype != torch.float64 or n * d * d > _OUTER_CACHE_LIMIT:
        return None
    return (x[:, :, None] * x[:, None, :]).reshape(n, d * d)


def _moments(
    x: torch.Tensor,
    resp: torch.Tensor,
    covariance: str,
    reg: float,
    outer: torch.Tensor | None = None,
):
    """Weighted counts, means and regularized covariances (the M-step of EM).

    ``outer`` is :func:`_outer` of ``x`` (centred data) or None for the two-pass formula.
    """
    eps = 10 * torch.finfo(x.dtype).eps
    nk = resp.sum(0) + eps
    locs = (resp.T @ x) / nk[:, None]
    if covariance == "diag":
        var = (resp.T @ (x * x)) / nk[:, None] - locs * locs
        return nk, locs, var.clamp_min(0.0) + reg
    d = x.shape[1]
    if outer is not None:
        cov = (resp.T @ outer).view(-1, d, d) / nk[:, None, None] - locs[:, :, None] * locs[:, None]
    else:
        diff = x[None] - locs[:, None]  # (K, N, D)
        cov = torch.bmm((resp.T[:, :, None] * diff).transpose(1, 2), diff) / nk[:, None, None]
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return nk, locs, cov + reg * torch.eye(d, dtype=x.dtype, device=x.device)


def init_params(
    x: torch.Tensor,
    k: int,
    covariance: str = "full",
    reg_covar: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Starting point shared by EM and the SVI guides: k-means++ seeds, every point assigned to
    its nearest seed, that partition's ``(weights, locs, covariances)``.

    The same ``generator`` state gives the same start as a restart of :func:`em` (data centred
    the same way, float64 draws), so SVI restarts can begin where EM's do.
    """
    _check(x, k, covariance)
    x = x.to(_work_dtype(x))
    center = x.mean(0)
    x = x - center
    nk, locs, cov = _moments(
        x, _hard_resp(x, kmeans_plusplus(x, k, generator)), covariance, reg_covar
    )
    return nk / nk.sum(), locs + center, cov


def _check(x: torch.Tensor, k: int, covariance: str) -> None:
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance={covariance!r} is not known: use 'full' or 'diag'")
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}: reshape the data")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"{k} components for {x.shape[0]} points: use 1 <= k <= N")


def em(
    x: torch.Tensor,
    k: int,
    covariance: str = "full",
    *,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    generator: torch.Generator | None = None,
) -> MixtureFit:
    """Maximum-likelihood Gaussian mixture by EM, best of ``n_init`` k-means++ restarts.

    Each restart seeds the means with k-means++, assigns every point to its nearest seed and takes
    that partition's moments, then iterates E- and M-steps until the mean log-likelihood gains less
    than ``tol`` (or ``max_iter``). ``reg_covar`` is added to every covariance's diagonal, so
    duplicated points and collapsing components stay finite. The restart with the highest final
    mean log-likelihood wins.
    """
    _check(x, k, covariance)
    x = x.to(_work_dtype(x))
    center = x.mean(0)
    x = x - center  # fit centred data, shift the means back at the end
    outer = _outer(x) if covariance == "full" else None
    best: MixtureFit | None = None
    for _ in range(n_init):
        resp = _hard_resp(x, kmeans_plusplus(x, k, generator))
        nk, locs, cov = _moments(x, resp, covariance, reg_covar, outer)
        weights = nk / nk.sum()
        history: list[float] = []
        converged = False
        for _ in range(max_iter):
            log_joint = component_log_prob(x, locs, cov, covariance) + weights.log()
            log_norm = torch.logsumexp(log_joint, -1, keepdim=True)
            history.append(float(log_norm.mean()))
            resp = (log_joint - log_norm).exp()
            nk, locs, cov = _moments(x, resp, covariance, reg_covar, outer)
            weights = nk / nk.sum()
            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                converged = True
                break
        fit = MixtureFit(
            weights, locs, cov, covariance, history[-1], len(history), converged, history
        )
        if best is None or fit.mean_loglik > best.mean_loglik:
            best = fit
    assert best is not None
    best.locs = best.locs + center
    return best


def wishart_kl(
    w_inv_q: torch.Tensor, nu_q: torch.Tensor, w_inv_p: torch.Tensor, nu_p: torch.Tensor
) -> torch.Tensor:
    """KL(Wishart(W_q, nu_q) || Wishart(W_p, nu_p)), scale matrices given by their inverses."""
    d = w_inv_q.shape[-1]
    chol_q = torch.linalg.cholesky(w_inv_q)
    chol_p = torch.linalg.cholesky(w_inv_p)
    logdet_wq = -2 * chol_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log|W_q|
    logdet_wp = -2 * chol_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    w_q = torch.cholesky_inverse(chol_q)
    e_logdet = _expected_logdet(nu_q, logdet_wq, d)
    trace = (w_inv_p * w_q).sum((-2, -1))  # tr(W_p^-1 W_q)
    return (
        -0.5 * nu_q * logdet_wq
        + 0.5 * nu_p * logdet_wp
        - 0.5 * (nu_q - nu_p) * d * math.log(2.0)
        - torch.mvlgamma(0.5 * nu_q, d)
        + torch.mvlgamma(0.5 * nu_p, d)
        + 0.5 * (nu_q - nu_p) * e_logdet
        - 0.5 * nu_q * d
        + 0.5 * nu_q * trace
    )


def _expected_logdet(nu: torch.Tensor, logdet_w: torch.Tensor, d: int) -> torch.Tensor:
    """E[log|Lambda|] under Wishart(W, nu): sum_i digamma((nu + 1 - i) / 2) + D log 2 + log|W|."""
    i = torch.arange(1, d + 1, dtype=nu.dtype, device=nu.device)
    return torch.digamma(0.5 * (nu[..., None] + 1 - i)).sum(-1) + d * math.log(2.0) + logdet_w


def _cavi_step(x: torch.Tensor, resp: torch.Tensor, prior: tuple, reg_covar: float):
    """One sweep of CAVI (the updates in :func:`cavi`'s docstring): q(pi), q(mu, Lambda) given
    q(z) = ``resp``, then q(z) given those; ``prior`` is ``(alpha0 1_K, beta0, nu0, m0, W0^-1)``.
    Returns ``(alpha, beta, nu, m, W^-1)``, the new responsibilities and the exact ELBO (a sum
    over the datapoints)."""
    a0, beta0, nu0, m0, W0_inv = prior
    k, d = resp.shape[1], x.shape[1]
    # q(pi), q(mu, Lambda) given q(z)
    nk, xbar, sk = _moments(x, resp, "full", reg_covar)
    alpha, beta, nu = a0 + nk, beta0 + nk, nu0 + nk
    m = (beta0 * m0 + nk[:, None] * xbar) / beta[:, None]
    dm = xbar - m0
    w_inv = W0_inv + nk[:, None, None] * sk
    w_inv = w_inv + (beta0 * nk / (beta0 + nk))[:, None, None] * dm[:, :, None] * dm[:, None]
    # q(z) given q(pi), q(mu, Lambda): log rho through the Gaussian with covariance W^-1/nu
    chol = _safe_cholesky(w_inv, reg_covar)
    logdet_w = -2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    e_log_pi = torch.digamma(alpha) - torch.digamma(alpha.sum())
    e_logdet = _expected_logdet(nu, logdet_w, d)
    log_gauss = component_log_prob(x, m, w_inv / nu[:, None, None], "full")
    # component_log_prob used log|W^-1/nu|; swap in E[log|Lambda|] and add D/(2 beta)
    log_rho = (
        log_gauss - 0.5 * (d * torch.log(nu) + logdet_w) + 0.5 * e_logdet - 0.5 * d / beta
        + e_log_pi
    )  # fmt: skip
    log_norm = torch.logsumexp(log_rho, -1, keepdim=True)
    resp = (log_rho - log_norm).exp()
    kl_pi = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(a0)
    )
    w_q = torch.cholesky_inverse(chol)
    quad = torch.einsum("kd,kde,ke->k", m - m0, w_q, m - m0)
    kl_mu = 0.5 * (d * beta0 / beta + beta0 * nu * quad - d - d * torch.log(beta0 / beta))
    kl_lam = wishart_kl(w_inv, nu, W0_inv.expand(k, d, d), x.new_tensor(nu0).expand(k))
    elbo = log_norm.sum() - kl_pi - (kl_mu + kl_lam).sum()
    return (alpha, beta, nu, m, w_inv), resp, elbo


def cavi(
    x: torch.Tensor,
    k: int,
    *,
    alpha0: float | None = None,
    beta0: float = 1.0,
    nu0: float | None = None,
    m0: torch.Tensor | None = None,
    W0_inv: torch.Tensor | None = None,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    generator: torch.Generator | None = None,
) -> CAVIFit:
    """Variational Bayes for the conjugate Gaussian mixture by coordinate ascent (full covariance).

    Priors (scikit-learn's BayesianGaussianMixture defaults): ``alpha0 = 1/K``, ``beta0 = 1``,
    ``nu0 = D``, ``m0`` the data mean, ``W0^-1`` the data covariance. Updates, with
    ``N_k, xbar_k, S_k`` the responsibility-weighted counts, means and covariances::

        alpha_k = alpha0 + N_k        beta_k = beta0 + N_k        nu_k = nu0 + N_k
        m_k = (beta0 m0 + N_k xbar_k) / beta_k
        W_k^-1 = W0^-1 + N_k S_k + beta0 N_k / (beta0 + N_k) (xbar_k - m0)(xbar_k - m0)^T
        log r_ik = E[log pi_k] + E[log|Lambda_k|] / 2 - D/(2 beta_k)
                   - nu_k (x_i - m_k)^T W_k (x_i - m_k) / 2 - D log(2 pi) / 2 + const_i

    With q(z) optimal, the ELBO is ``sum_i logsumexp_k log rho_ik - KL(q(pi)||p(pi))
    - sum_k KL(q(mu_k, Lambda_k)||p(mu_k, Lambda_k))``; it is returned per datapoint in
    ``history`` and stops the iterations when it gains less than ``tol``.
    """
    _check(x, k, "full")
    x = x.to(_work_dtype(x))
    n, d = x.shape
    alpha0 = 1.0 / k if alpha0 is None else alpha0
    nu0 = float(d) if nu0 is None else nu0
    if nu0 <= d - 1:
        raise ValueError(f"nu0={nu0} must exceed D - 1 = {d - 1} for a proper Wishart prior")
    m0 = x.mean(0) if m0 is None else m0.to(x)
    if W0_inv is None:
        W0_inv = torch.atleast_2d(torch.cov(x.T)) + reg_covar * torch.eye(d, device=x.device)
    W0_inv = W0_inv.to(x)
    prior = (x.new_full((k,), alpha0), beta0, nu0, m0, W0_inv)
    best: CAVIFit | None = None
    for _ in range(n_init):
        resp = _hard_resp(x, kmeans_plusplus(x, k, generator))
        history: list[float] = []
        converged = False
        for _ in range(max_iter):
            q, resp, elbo = _cavi_step(x, resp, prior, reg_covar)
            history.append(float(elbo) / n)
            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                converged = True
                break
        alpha, beta, nu, m, w_inv = q
        fit = CAVIFit(
            weights=alpha / alpha.sum(),
            locs=m,
            covariances=w_inv / nu[:, None, None],
            covariance="full",
            mean_loglik=history[-1],
            n_iter=len(history),
            converged=converged,
            history=history,
            alpha=alpha,
            beta=beta,
            m=m,
            W_inv=w_inv,
            nu=nu,
        )
        if best is None or fit.mean_loglik > best.mean_loglik:
            best = fit
    assert best is not None
    return best
