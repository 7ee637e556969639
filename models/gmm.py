r"""The Gaussian mixture model and its four guides, as plain Pyro callables.

Model, for K components in D dimensions and datapoints :math:`x_i`:

.. math::

    \pi &\sim \mathrm{Dirichlet}(\alpha \mathbf 1_K), \qquad
    \mu_k \sim \mathcal N(c, (2s)^2 I), \qquad
    \sigma_{kd} \sim \mathrm{LogNormal}(\log(s_d / 2), 1), \\
    L_k &\sim \mathrm{LKJCholesky}(D, \eta) \quad (\text{full covariance only}), \qquad
    \Sigma_k = \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k)
    \quad (\text{diag: } \mathrm{diag}(\sigma_k^2)), \\
    z_i &\sim \mathrm{Categorical}(\pi), \qquad
    x_i \mid z_i \sim \mathcal N(\mu_{z_i}, \Sigma_{z_i}),

with :math:`c, s` the priors' centre and spread (the training data's mean and standard
deviation in :meth:`MixtureModel.from_data`). The data plate ``"data"`` subsamples. Guides, each
its own callable, with the ELBO it needs in :func:`loss_for`:

- :func:`map_guide` (``"map"``): Pyro's ``AutoDelta`` on the globals, ``z`` summed out exactly by
  enumeration (``TraceEnum_ELBO``): the objective is :math:`\sum_i \log p(x_i \mid \theta) +
  \log p(\theta)`, EM's objective plus the log prior;
- :func:`meanfield_guide` (``"meanfield"``): Pyro's ``AutoNormal`` on the globals, ``z``
  enumerated;
- :class:`ScoreGuide` (``"score"``): MAP globals and a free categorical :math:`q_i(z)` per
  datapoint, trained by the score-function estimator of ``TraceGraph_ELBO``;
- :class:`AmortizedGuide` (``"amortized"``): MAP globals and :math:`q_\phi(z \mid x)` from a
  small classifier, its K values summed exactly (guide-side enumeration).

The ordinary Pyro way::

    model = MixtureModel.from_data(x, n_components=3)
    guide = map_guide(model, kmeans_init(model, x, torch.Generator().manual_seed(0)))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss_for("map"))
    for step in range(200):
        svi.step(x)

:class:`pyro_vi.models.GMM` (``gmm_estimator.py``) wraps this pair in a scikit-learn-style
estimator with restarts, and fits the same mixture by closed-form EM or CAVI
(:mod:`pyro_vi.infer.em`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import sklearn.exceptions
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_median, init_to_value
from pyro.ops.indexing import Vindex
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_vi.data import data_plate
from pyro_vi.infer.em import component_log_prob, init_params

__all__ = [
    "MixtureModel", "map_guide", "meanfield_guide", "ScoreGuide", "AmortizedGuide", "loss_for",
    "kmeans_init", "GMMError", "NotFittedError", "GUIDES", "GLOBALS", "draw_mixture",
]  # fmt: skip

GUIDES = ("map", "meanfield", "score", "amortized")
GLOBALS = ("weights", "locs", "scales", "corr_chol")
Values = dict[str, torch.Tensor]


class GMMError(ValueError):
    """Data or options a GMM cannot take; the message names the problem and the fix."""


class NotFittedError(GMMError, sklearn.exceptions.NotFittedError):
    """The GMM is used before :meth:`GMM.setup` or :meth:`GMM.fit` (also scikit-learn's
    ``NotFittedError``, a ``ValueError`` and ``AttributeError``)."""


def check_options(n_components: int, covariance: str) -> None:
    """One-line :class:`GMMError` for a K that is not a whole number >= 1 or an unknown
    covariance kind."""
    if not isinstance(n_components, int) or n_components < 1:
        raise GMMError(f"n_components={n_components!r}: use a whole number >= 1")
    if covariance not in ("full", "diag"):
        raise GMMError(f"covariance={covariance!r} is not known: use 'full' or 'diag'")


def draw_mixture(
    weights: torch.Tensor,
    locs: torch.Tensor,
    cov: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n`` draws ``(x, z)`` from a Gaussian mixture: :math:`z \sim \mathrm{Categorical}(\pi)`,
    :math:`x = \mu_z + L_z \epsilon` with :math:`L_z L_z^\top = \Sigma_z`, :math:`\epsilon \sim
    N(0, I)`; ``cov`` holds covariances (K, D, D) or variances (K, D). The noise is drawn on the
    CPU from ``generator`` (torch's default one if None), then moved to the mixture's device."""
    z = torch.multinomial(weights.cpu(), n, replacement=True, generator=generator)
    eps = torch.randn(n, locs.shape[-1], generator=generator, dtype=locs.dtype)
    z, eps = z.to(locs.device), eps.to(locs.device)
    if cov.dim() == 2:
        return locs[z] + cov[z].sqrt() * eps, z
    tril = torch.linalg.cholesky(cov)
    return locs[z] + (tril[z] @ eps.unsqueeze(-1)).squeeze(-1), z


class MixtureModel(nn.Module):
    """The generative model above; call it as ``model(x, idx=None, size=None)`` (``idx``/``size``
    subsample the data plate). ``center``/``spread`` are the priors' c and s (length D)."""

    def __init__(
        self,
        n_components: int,
        center: torch.Tensor,
        spread: torch.Tensor,
        covariance: str = "full",
        concentration: float = 1.0,
        lkj_concentration: float = 1.0,
    ):
        super().__init__()
        check_options(n_components, covariance)
        self.n_components, self.covariance, self.dim = n_components, covariance, center.shape[0]
        self.concentration, self.lkj_concentration = concentration, lkj_concentration
        self.register_buffer("center", center)
        self.register_buffer("spread", spread)

    @classmethod
    def from_data(cls, x: torch.Tensor, n_components: int, **options) -> MixtureModel:
        """The model with c, s the mean and standard deviation of the rows of ``x``."""
        spread = x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(x[0])
        return cls(n_components, x.mean(0), spread, **options)

    @property
    def full(self) -> bool:
        """Whether components carry a correlation factor (full covariance and D > 1)."""
        return self.covariance == "full" and self.dim > 1

    @property
    def globals(self) -> tuple[str, ...]:
        """Names of the global sample sites."""
        return GLOBALS if self.full else GLOBALS[:3]

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        prior = self.priors(x)
        weights = pyro.sample("weights", prior["weights"])
        with pyro.plate("components", self.n_components, device=x.device):
            locs = pyro.sample("locs", prior["locs"])
            scales = pyro.sample("scales", prior["scales"])
            if self.full:
                corr = pyro.sample("corr_chol", prior["corr_chol"])
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            # the component axis sits left of the data axis, so that batch axes of the globals
            # (vectorized particles) line up with those of z (particles, enumeration)
            loc = Vindex(locs.unsqueeze(-3))[..., z, :]
            scale = Vindex(scales.unsqueeze(-3))[..., z, :]
            if self.full:
                tril = scale.unsqueeze(-1) * Vindex(corr.unsqueeze(-4))[..., z, :, :]
                pyro.sample("obs", dist.MultivariateNormal(loc, scale_tril=tril), obs=x)
            else:
                pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x)

    def priors(self, like: torch.Tensor) -> dict[str, dist.Distribution]:
        """The priors of the globals (one component's for locs, scales, corr_chol), on the device
        and in the dtype of ``like``."""
        center, spread = self.center.to(like), self.spread.to(like)
        prior = {
            "weights": dist.Dirichlet(like.new_full((self.n_components,), self.concentration)),
            "locs": dist.Normal(center, 2.0 * spread).to_event(1),
            "scales": dist.LogNormal((spread / 2).log(), 1.0).to_event(1),
        }
        if self.full:
            prior["corr_chol"] = dist.LKJCholesky(self.dim, like.new_tensor(self.lkj_concentration))
        return prior

    def moments(self, values: Values) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""``(pi, mu, Sigma)`` at global ``values``: :math:`\Sigma_k = \mathrm{diag}(\sigma_k)
        L_k L_k^\top \mathrm{diag}(\sigma_k)` (K, D, D), or the variances :math:`\sigma_k^2`
        (K, D) without a correlation factor."""
        scales = values["scales"]
        if self.full:
            tril = scales.unsqueeze(-1) * values["corr_chol"]
            return values["weights"], values["locs"], tril @ tril.transpose(-1, -2)
        return values["weights"], values["locs"], scales**2

    def log_joint(self, x: torch.Tensor, values: Values) -> torch.Tensor:
        """``log pi_k + log N(x_i | mu_k, Sigma_k)`` (N, K) at global values ``values``."""
        weights, locs, cov = self.moments(values)
        kind = "full" if self.full else "diag"
        return component_log_prob(x, locs.to(x), cov.to(x), kind) + weights.to(x).log()

    def objective(self, x: torch.Tensor, values: Values) -> float:
        """The MAP objective per datapoint at global ``values``: the mean log-likelihood of the
        rows of ``x`` (z summed out) plus ``log p(globals) / N``; for :func:`map_guide` it is the
        full-data enumerated ELBO divided by N."""
        with torch.no_grad():
            values = {key: v.to(x) for key, v in values.items()}
            loglik = sum(
                float(torch.logsumexp(self.log_joint(rows, values), -1).sum())
                for rows in x.split(65536)
            )
            prior = sum(float(p.log_prob(values[key]).sum()) for key, p in self.priors(x).items())
        return (loglik + prior) / x.shape[0]


def kmeans_init(
    model: MixtureModel, x: torch.Tensor, generator: torch.Generator | None = None
) -> Values:
    """Global values at the k-means++ partition of ``x`` (:func:`pyro_vi.infer.em.init_params`, the
    start of EM's restart with the same ``generator`` state), in the model's parameterization:
    weights, locs, scales = sqrt(diag Sigma_k) and corr_chol = chol(Sigma_k / scales scales^T)."""
    weights, locs, cov = init_params(x, model.n_components, model.covariance, 1e-6, generator)
    eps = 1e-6
    init = {"weights": weights.clamp_min(eps) / weights.clamp_min(eps).sum(), "locs": locs}
    if model.full:
        scales = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        corr = cov / (scales[:, :, None] * scales[:, None, :])
        init["scales"], init["corr_chol"] = scales, torch.linalg.cholesky(corr)
    else:
        init["scales"] = cov.sqrt() if model.covariance == "diag" else cov[:, :, 0].sqrt()
    init["scales"] = init["scales"].clamp_min(eps)
    return {key: v.to(x.dtype) for key, v in init.items()}


def _init_fn(init: Values | None):
    return init_to_value(values=init) if init is not None else init_to_median


def map_guide(model: MixtureModel, init: Values | None = None) -> AutoDelta:
    r"""Point masses :math:`q(\theta) = \delta_{\hat\theta}` on the globals, starting at ``init``
    (else the prior median). Exactly Pyro's ``AutoDelta`` of the model with ``z`` hidden, which
    ``TraceEnum_ELBO`` then sums out of the model."""
    return AutoDelta(poutine.block(model, hide=["z"]), init_loc_fn=_init_fn(init))


def meanfield_guide(model: MixtureModel, init: Values | None = None) -> AutoNormal:
    r"""A mean-field normal :math:`q(\theta) = \prod_j \mathcal N(u_j \mid m_j, s_j^2)` on the
    unconstrained globals u, means starting at ``init`` and scales at 0.01: exactly Pyro's
    ``AutoNormal`` of the model with ``z`` hidden (enumerated by ``TraceEnum_ELBO``)."""
    return AutoNormal(poutine.block(model, hide=["z"]), init_loc_fn=_init_fn(init), init_scale=0.01)


def _plate_shape(value: torch.Tensor) -> list[int]:
    """The batch shape of the enclosing vectorized plates, for ``value`` along the innermost."""
    frames = [f for f in get_plates() if f.vectorized and f.dim is not None]
    shape = [1] * max([-f.dim for f in frames] + [value.dim()])
    for f in frames:
        shape[f.dim] = f.size
    return shape


# Not an autoguide: AutoGuideList(AutoDelta, AutoCategorical) would have neither the rows that
# own no q_i (held-out data) nor the per-datapoint baseline.
class ScoreGuide(nn.Module):
    r"""MAP globals (``globals_guide``, by default :func:`map_guide`) and a free categorical
    :math:`q_i(z) = \mathrm{Categorical}(\mathrm{softmax}(\ell_i))` per datapoint (param
    ``"gmm_z_logits"``, starting at ``init_logits`` (N, K), else uniform), trained by the
    score-function estimator of ``TraceGraph_ELBO``.

    With ``baseline_beta`` the learning signal :math:`f_i(z) = \log p(x_i, z) - \log q_i(z)`
    gets a per-datapoint decaying average from earlier visits only, :math:`b_i \leftarrow \beta
    b_i + (1 - \beta) f_i` (unbiased); None is plain REINFORCE. Rows that own no :math:`q_i`
    (held-out data such as :func:`pyro_vi.fit`'s validation split) get the optimum of the local
    family, the posterior :math:`p(z_i \mid x_i, \hat\theta)` under the current globals.
    """

    def __init__(
        self,
        model: MixtureModel,
        globals_guide: AutoDelta | None = None,
        init_logits: torch.Tensor | None = None,
        baseline_beta: float | None = 0.5,
    ):
        super().__init__()
        if baseline_beta is not None and not 0.0 <= baseline_beta < 1.0:
            raise GMMError(f"baseline_beta={baseline_beta}: use a value in [0, 1) or None")
        self._model = (model,)  # not a submodule: the model is not the guide's to save or move
        self.globals_guide = globals_guide if globals_guide is not None else map_guide(model)
        self.baseline_beta = baseline_beta
        self.register_buffer("init_logits", init_logits)
        self.register_buffer("baseline", None)

    def point(self) -> Values:
        """The globals' point estimate without any particle or plate axes."""
        return {name: getattr(self.globals_guide, name) for name in self._model[0].globals}

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        values = self.globals_guide(x, idx=idx, size=size)
        n = size if size is not None else x.shape[0]
        with data_plate(x, idx, size):
            store = pyro.get_param_store()
            if idx is None and "gmm_z_logits" in store:
                if store.get_param("gmm_z_logits").shape[0] != n:  # rows without a q_i
                    logits = self._model[0].log_joint(x, self.point())
                    pyro.sample("z", dist.Categorical(logits=logits))
                    return values
            rows = idx if idx is not None else torch.arange(n, device=x.device)
            logits = pyro.param("gmm_z_logits", lambda: self._initial_logits(x, n))[rows]
            q = dist.Categorical(logits=logits)
            if self.baseline_beta is None:
                pyro.sample("z", q)
            else:
                self._sample_with_baseline(x, q, rows, n)
        return values

    def _sample_with_baseline(self, x, q: dist.Categorical, rows: torch.Tensor, n: int) -> None:
        if self.baseline is None or self.baseline.shape[0] != n:
            self.baseline = x.new_full((n,), float("nan"))
        old = self.baseline[rows]
        scale = n / rows.shape[0]  # the plate's scale enters Pyro's downstream cost
        value = torch.nan_to_num(old, nan=0.0) * scale
        value = value.expand(_plate_shape(value))  # vectorized particles: one per particle
        z = pyro.sample("z", q, infer={"baseline": {"baseline_value": value}})
        with torch.no_grad():
            # unbatched globals: under a particle plate the globals and z carry particle axes
            joint = self._model[0].log_joint(x, self.point())
            f = joint.expand(*z.shape, -1).gather(-1, z.unsqueeze(-1)).squeeze(-1)
            f = (f - q.log_prob(z)).reshape(-1, rows.shape[0]).mean(0)  # mean over particles
            beta = self.baseline_beta
            self.baseline[rows] = torch.where(old.isnan(), f, beta * old + (1 - beta) * f)

    def _initial_logits(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if self.init_logits is not None and self.init_logits.shape[0] == n:
            return self.init_logits.to(x).clone()
        return x.new_zeros(n, self._model[0].n_components)


# Not an autoguide: AutoDelta plus a network over z is no single Pyro autoguide.
class AmortizedGuide(nn.Module):
    r"""MAP globals (``globals_guide``, by default :func:`map_guide`) and :math:`q_\phi(z \mid x)
    = \mathrm{Categorical}(\mathrm{softmax}(g_\phi((x - c) / s)))`, ``g`` a Linear-Tanh-Linear
    classifier of width ``hidden`` (module ``"gmm_classifier"``), summed over its K values by
    guide-side enumeration."""

    def __init__(
        self, model: MixtureModel, globals_guide: AutoDelta | None = None, hidden: int = 32
    ):
        super().__init__()
        self._model = (model,)  # not a submodule: the model is not the guide's to save or move
        self.globals_guide = globals_guide if globals_guide is not None else map_guide(model)
        center, k = model.center, model.n_components
        self.classifier = nn.Sequential(
            nn.Linear(model.dim, hidden), nn.Tanh(), nn.Linear(hidden, k)
        ).to(device=center.device, dtype=center.dtype)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        values = self.globals_guide(x, idx=idx, size=size)
        model = self._model[0]
        with data_plate(x, idx, size):
            pyro.module("gmm_classifier", self.classifier)
            logits = self.classifier((x - model.center.to(x)) / model.spread.to(x))
            pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
        return values


def loss_for(kind: str) -> pyro.infer.ELBO:
    """The ELBO guide ``kind`` needs: ``TraceGraph_ELBO`` for ``"score"`` (score-function
    gradients of the discrete z), else ``TraceEnum_ELBO`` with z enumerated."""
    if kind not in GUIDES:
        raise GMMError(f"guide kind {kind!r} is not known: use one of {GUIDES}")
    return TraceGraph_ELBO() if kind == "score" else TraceEnum_ELBO(max_plate_nesting=1)
