r"""The Gaussian mixture model as a Pyro model, four guides, and a scikit-learn-style estimator.

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

with :math:`c, s` the mean and standard deviation of the training data (set by :meth:`GMM.setup`).
The data plate ``"data"`` subsamples. Guides (``guide_kind``), all for :func:`pyro_vi.fit`:

- ``"map"``: point-mass (MAP) globals; ``z`` summed out exactly by enumeration
  (``TraceEnum_ELBO``), so the objective is :math:`\sum_i \log p(x_i \mid \theta) + \log p(\theta)`,
  EM's objective plus the log prior;
- ``"meanfield"``: a mean-field normal guide on the (unconstrained) globals, ``z`` enumerated;
- ``"score"``: MAP globals and one free categorical :math:`q_i(z)` per datapoint, trained by the
  score-function (REINFORCE) estimator of ``TraceGraph_ELBO``, optionally with a per-datapoint
  decaying-average baseline (``baseline_beta``); rows without a :math:`q_i` of their own
  (held-out data such as :func:`pyro_vi.fit`'s validation split) get the optimum of the local
  family, the posterior under the current globals;
- ``"amortized"``: MAP globals and :math:`q_\phi(z \mid x)` from a small classifier network,
  the sum over its K values taken exactly (guide-side enumeration).

:class:`GMM` is also an estimator in scikit-learn's style, fitted by closed-form EM (the default,
:func:`pyro_vi.em.em`), CAVI for the conjugate model (:func:`pyro_vi.em.cavi`) or by SVI with any
guide::

    gmm = GMM(n_components=3, covariance="full").fit(x, method="em", seed=0)
    gmm.score(x_test), gmm.predict(x_test), gmm.bic(x_test)
    svi = GMM(n_components=3).fit(x, method="svi", epochs=50, lr=0.05)   # guide "map"
    svi = GMM(n_components=3).fit(x, method="svi", n_init=3)   # EM's three starts, best kept
    fit(gmm.model, gmm.guide, data, loss=gmm.loss)                      # the plain Pyro pair

Components are sorted by the first coordinate of their means after every fit (label switching).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_median, init_to_value
from pyro.ops.indexing import Vindex
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_vi.data import data_plate
from pyro_vi.em import cavi, component_log_prob, em, init_params
from pyro_vi.training import fit as svi_fit

__all__ = ["GMM", "GMMError", "NotFittedError", "GUIDES", "METHODS"]

GUIDES = ("map", "meanfield", "score", "amortized")
METHODS = ("em", "cavi", "svi", *GUIDES)
GLOBALS = ("weights", "locs", "scales", "corr_chol")


def _plate_shape(value: torch.Tensor) -> list[int]:
    """The batch shape of the enclosing vectorized plates, for ``value`` along the innermost."""
    frames = [f for f in get_plates() if f.vectorized and f.dim is not None]
    shape = [1] * max([-f.dim for f in frames] + [value.dim()])
    for f in frames:
        shape[f.dim] = f.size
    return shape


class GMMError(ValueError):
    """Data or options a GMM cannot take; the message names the problem and the fix."""


class NotFittedError(GMMError, AttributeError):
    """The GMM is used before :meth:`GMM.fit`."""


class GMM(nn.Module):
    """Gaussian mixture with K components; see the module docstring for the model and guides.

    Args:
        n_components: K >= 1.
        covariance: ``"full"`` (LKJ correlation times scales) or ``"diag"``.
        center, spread: the priors' centre c and spread s (length D; otherwise the data mean
            and std, set by :meth:`setup` or :meth:`fit`), stored in ``config`` for rebuilding.
        concentration: Dirichlet concentration alpha of the weights (1: flat).
        lkj_concentration: eta of the LKJ prior on correlations (1: uniform).
        guide_kind: the guide :meth:`guide` runs, one of :data:`GUIDES`.
        baseline_beta: decay of the per-datapoint baseline of the ``"score"`` guide; None for
            plain REINFORCE without baseline.
        hidden: hidden width of the ``"amortized"`` guide's classifier.
    """

    def __init__(
        self,
        n_components: int = 1,
        covariance: str = "full",
        *,
        center: list[float] | None = None,
        spread: list[float] | None = None,
        concentration: float = 1.0,
        lkj_concentration: float = 1.0,
        guide_kind: str = "map",
        baseline_beta: float | None = 0.5,
        hidden: int = 32,
    ):
        super().__init__()
        if not isinstance(n_components, int) or n_components < 1:
            raise GMMError(f"n_components={n_components!r}: use a whole number >= 1")
        if covariance not in ("full", "diag"):
            raise GMMError(f"covariance={covariance!r} is not known: use 'full' or 'diag'")
        if guide_kind not in GUIDES:
            raise GMMError(f"guide_kind={guide_kind!r} is not known: use one of {GUIDES}")
        if baseline_beta is not None and not 0.0 <= baseline_beta < 1.0:
            raise GMMError(f"baseline_beta={baseline_beta}: use a value in [0, 1) or None")
        self.config = dict(
            n_components=n_components, covariance=covariance, center=center, spread=spread,
            concentration=concentration, lkj_concentration=lkj_concentration,
            guide_kind=guide_kind, baseline_beta=baseline_beta, hidden=hidden,
        )  # fmt: skip
        self.n_components, self.covariance, self.dim = n_components, covariance, None
        self.concentration, self.lkj_concentration = concentration, lkj_concentration
        self.guide_kind, self.baseline_beta, self.hidden = guide_kind, baseline_beta, hidden
        self.register_buffer("center", None)
        self.register_buffer("spread", None)
        self.register_buffer("baseline", None)
        self.register_buffer("init_logits", None)
        self.map_guide: AutoDelta | None = None
        self.meanfield_guide: AutoNormal | None = None
        self.classifier: nn.Module | None = None
        if center is not None:
            c = torch.as_tensor(center, dtype=torch.get_default_dtype())
            s = torch.as_tensor(spread, dtype=c.dtype) if spread is not None else torch.ones_like(c)
            self._build(c, s, None)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_data(
        cls, data, n_components: int | None = None, covariance: str = "full", seed: int = 0, **opt
    ) -> GMM:
        """A GMM set up for ``data`` (a Dataset, Split or (N, D) tensor); K defaults to the
        data set's known number of components or classes, else 3."""
        train = getattr(data, "train", data)
        x = getattr(train, "x", train)
        info = getattr(data, "info", {}) or {}
        k = n_components or info.get("k") or getattr(data, "num_classes", 0) or 3
        names = ("concentration", "lkj_concentration", "guide_kind", "baseline_beta", "hidden")
        gmm = cls(int(k), covariance, **{key: opt[key] for key in names if key in opt})
        return gmm.setup(x, seed=seed)

    def setup(
        self, x: torch.Tensor, seed: int = 0, generator: torch.Generator | None = None
    ) -> GMM:
        """Fix D, the priors' centre and spread (data mean and std) and the guides' starting
        point (k-means++ partition of ``x`` drawn with ``generator``, else with ``seed``: the
        start of EM's first restart with that seed); called by :meth:`fit`."""
        x = self._as_tensor(x, check_dim=False)
        self._check_k(x)
        self.dim = x.shape[1]
        center = x.mean(0)
        spread = x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(x[0])
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        weights, locs, cov = init_params(x, self.n_components, self.covariance, 1e-6, gen)
        eps = 1e-6
        init = {"weights": weights.clamp_min(eps) / weights.clamp_min(eps).sum(), "locs": locs}
        if self._full:
            scales = cov.diagonal(dim1=-2, dim2=-1).sqrt()
            corr = cov / (scales[:, :, None] * scales[:, None, :])
            init["scales"], init["corr_chol"] = scales, torch.linalg.cholesky(corr)
        else:
            init["scales"] = cov.sqrt() if self.covariance == "diag" else cov[:, :, 0].sqrt()
        init["scales"] = init["scales"].clamp_min(eps)
        self._build(center, spread, {key: v.to(x.dtype) for key, v in init.items()})
        self.init_logits = torch.log_softmax(self.log_joint(x, init), -1)
        return self

    def _build(self, center: torch.Tensor, spread: torch.Tensor, init: dict | None) -> None:
        """Set the prior's centre and spread and build the guides (starting at ``init``, or at
        the prior's median when None, as when a saved run is rebuilt from ``config``)."""
        self.dim = center.shape[0]
        self.center, self.spread = center, spread
        self.config["center"], self.config["spread"] = center.tolist(), spread.tolist()
        init_fn = init_to_value(values=init) if init is not None else init_to_median
        globals_only = poutine.block(self.model, hide=["z"])
        self.map_guide = AutoDelta(globals_only, init_loc_fn=init_fn)
        self.meanfield_guide = AutoNormal(globals_only, init_loc_fn=init_fn, init_scale=0.01)
        self.classifier = nn.Sequential(
            nn.Linear(self.dim, self.hidden), nn.Tanh(), nn.Linear(self.hidden, self.n_components)
        ).to(device=center.device, dtype=center.dtype)
        self.baseline = None

    @property
    def _full(self) -> bool:
        return self.covariance == "full" and (self.dim or 0) > 1

    # ----------------------------------------------------------------- Pyro model and guides
    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The generative model; ``idx``/``size`` subsample the data plate."""
        if self.center is None:
            raise NotFittedError("the GMM has no data scale yet: call gmm.setup(x) or fit first")
        prior = self._priors(x)
        weights = pyro.sample("weights", prior["weights"])
        with pyro.plate("components", self.n_components, device=x.device):
            locs = pyro.sample("locs", prior["locs"])
            scales = pyro.sample("scales", prior["scales"])
            if self._full:
                corr = pyro.sample("corr_chol", prior["corr_chol"])
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            # the component axis sits left of the data axis, so that batch axes of the globals
            # (vectorized particles) line up with those of z (particles, enumeration)
            loc = Vindex(locs.unsqueeze(-3))[..., z, :]
            scale = Vindex(scales.unsqueeze(-3))[..., z, :]
            if self._full:
                tril = scale.unsqueeze(-1) * Vindex(corr.unsqueeze(-4))[..., z, :, :]
                pyro.sample("obs", dist.MultivariateNormal(loc, scale_tril=tril), obs=x)
            else:
                pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x)

    def _priors(self, like: torch.Tensor) -> dict[str, dist.Distribution]:
        """The priors of the globals (one component's for locs, scales, corr_chol), on the device
        and in the dtype of ``like``."""
        center, spread = self.center.to(like), self.spread.to(like)
        prior = {
            "weights": dist.Dirichlet(like.new_full((self.n_components,), self.concentration)),
            "locs": dist.Normal(center, 2.0 * spread).to_event(1),
            "scales": dist.LogNormal((spread / 2).log(), 1.0).to_event(1),
        }
        if self._full:
            prior["corr_chol"] = dist.LKJCholesky(self.dim, like.new_tensor(self.lkj_concentration))
        return prior

    def objective(self, x: torch.Tensor, values: dict[str, torch.Tensor]) -> float:
        """The MAP objective per datapoint at global ``values``: the mean log-likelihood of the
        rows of ``x`` (z summed out) plus ``log p(globals) / N``. For the ``"map"`` guide it is
        the full-data ELBO that enumeration maximizes, divided by N; :meth:`fit` keeps the SVI
        restart with the highest value (EM keeps the highest mean log-likelihood)."""
        with torch.no_grad():
            values = {key: v.to(x) for key, v in values.items()}
            loglik = sum(
                float(torch.logsumexp(self.log_joint(rows, values), -1).sum())
                for rows in x.split(65536)
            )
            prior = sum(float(p.log_prob(values[key]).sum()) for key, p in self._priors(x).items())
        return (loglik + prior) / x.shape[0]

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The guide chosen by ``guide_kind``; train it with ``loss=gmm.loss``."""
        if self.map_guide is None:
            raise NotFittedError("the GMM's guides are not built: call gmm.setup(x) or fit first")
        if self.guide_kind == "map":
            return self.map_guide(x, idx=idx, size=size)
        if self.guide_kind == "meanfield":
            return self.meanfield_guide(x, idx=idx, size=size)
        values = self.map_guide(x, idx=idx, size=size)
        n = size if size is not None else x.shape[0]
        with data_plate(x, idx, size):
            if self.guide_kind == "amortized":
                pyro.module("gmm_classifier", self.classifier)
                logits = self.classifier((x - self.center.to(x)) / self.spread.to(x))
                pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
                return values
            store = pyro.get_param_store()
            if idx is None and "gmm_z_logits" in store:
                if store.get_param("gmm_z_logits").shape[0] != n:
                    # Rows without a local factor of their own (held-out data, such as fit's
                    # validation split): q_i(z) is the optimum of the local family, the posterior
                    # under the current globals, which fitting a fresh q_i would converge to.
                    logits = self.log_joint(x, self._map_values())
                    pyro.sample("z", dist.Categorical(logits=logits))
                    return values
            rows = idx if idx is not None else torch.arange(n, device=x.device)
            logits = pyro.param("gmm_z_logits", lambda: self._initial_logits(x, n))[rows]
            q = dist.Categorical(logits=logits)
            if self.baseline_beta is None:
                pyro.sample("z", q)
                return values
            # Per-datapoint decaying average of the learning signal f_i(z) = log p(x_i, z) -
            # log q_i(z), taken from earlier visits only (independent of this draw: unbiased).
            if self.baseline is None or self.baseline.shape[0] != n:
                self.baseline = x.new_full((n,), float("nan"))
            old = self.baseline[rows]
            scale = n / rows.shape[0]  # the plate's scale enters Pyro's downstream cost
            value = torch.nan_to_num(old, nan=0.0) * scale
            value = value.expand(_plate_shape(value))  # vectorized particles: one per particle
            z = pyro.sample("z", q, infer={"baseline": {"baseline_value": value}})
            with torch.no_grad():
                # unbatched globals: under a particle plate ``values`` and z carry particle axes
                joint = self.log_joint(x, self._map_values())
                f = joint.expand(*z.shape, -1).gather(-1, z.unsqueeze(-1)).squeeze(-1)
                f = (f - q.log_prob(z)).reshape(-1, rows.shape[0]).mean(0)  # mean over particles
                beta = self.baseline_beta
                self.baseline[rows] = torch.where(old.isnan(), f, beta * old + (1 - beta) * f)
        return values

    def _map_values(self) -> dict[str, torch.Tensor]:
        """The MAP guide's global values without any particle or plate axes."""
        names = GLOBALS if self._full else GLOBALS[:3]
        return {name: getattr(self.map_guide, name) for name in names}

    def _initial_logits(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """q_i(z) starts at the posterior under the starting globals (EM's first E-step) when
        the guide is built for these ``n`` points, else uniform."""
        if self.init_logits is not None and self.init_logits.shape[0] == n:
            return self.init_logits.to(x).clone()
        return x.new_zeros(n, self.n_components)

    @property
    def loss(self) -> pyro.infer.ELBO:
        """The Pyro ELBO the current guide needs (enumeration, or TraceGraph for ``"score"``)."""
        if self.guide_kind == "score":
            return TraceGraph_ELBO()
        return TraceEnum_ELBO(max_plate_nesting=1)

    def log_joint(self, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log pi_k + log N(x_i | mu_k, Sigma_k)`` (N, K) at global values ``values``."""
        weights, locs, cov = self._moments(values)
        return component_log_prob(x, locs.to(x), cov.to(x), self._cov_kind) + weights.to(x).log()

    @property
    def _cov_kind(self) -> str:
        return "full" if self._full else "diag"

    def _moments(self, values: dict[str, torch.Tensor]):
        scales = values["scales"]
        if self._full:
            tril = scales.unsqueeze(-1) * values["corr_chol"]
            return values["weights"], values["locs"], tril @ tril.transpose(-1, -2)
        return values["weights"], values["locs"], scales**2

    # ----------------------------------------------------------------- estimator interface
    def fit(
        self,
        x,
        method: str = "em",
        *,
        seed: int = 0,
        n_init: int = 1,
        tol: float = 1e-3,
        max_iter: int = 100,
        reg_covar: float = 1e-6,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.05,
        progress: bool = False,
        **fit_options,
    ) -> GMM:
        """Fit to ``x`` (N, D) by ``method`` (one of :data:`METHODS`) and return self.

        ``"em"`` and ``"cavi"`` use ``n_init`` k-means++ restarts, ``tol`` on the mean
        log-likelihood (ELBO per datapoint for CAVI), ``max_iter`` and ``reg_covar``. ``"svi"``
        (the guide ``"map"``), ``"meanfield"``, ``"score"`` and ``"amortized"`` run
        :func:`pyro_vi.fit` with ``epochs``, ``batch_size``, ``lr`` and ``fit_options`` in a
        private Pyro param-store scope (kept in ``param_state_``); the batch size is evened out
        (no small remainder batch) and ``lr_decay`` defaults to a 100-fold decay over the run.
        SVI restarts like EM: ``n_init`` runs, each from the k-means++ start EM's restart of the
        same ``seed`` uses, and the run with the highest :meth:`objective` at its point estimate
        is kept (``objective_``; ``restart_objectives_`` lists all; with ``checkpoint_dir`` and
        ``n_init > 1`` restart i checkpoints to ``checkpoint_dir/restart-i``). ``history_`` holds
        the per-epoch ELBO per datapoint. ``seed`` fixes every random choice.
        """
        if method not in METHODS:
            raise GMMError(f"method={method!r} is not known: use one of {METHODS}")
        x = self._as_tensor(x, check_dim=False)
        self._check_k(x)
        gen = torch.Generator().manual_seed(seed)
        k = self.n_components
        if method in ("em", "cavi"):
            opts = dict(n_init=n_init, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
            if method == "cavi":
                if self.covariance != "full":
                    raise GMMError("CAVI is derived for full covariances: use covariance='full'")
                res = cavi(x, k, generator=gen, **opts)
            else:
                res = em(x, k, self.covariance, generator=gen, **opts)
            self.weights_, self.means_, self.covariances_ = res.weights, res.locs, res.covariances
            self.history_, self.n_iter_, self.converged_ = res.history, res.n_iter, res.converged
            self.lower_bound_, self.result_ = res.mean_loglik, res
        else:
            if not isinstance(n_init, int) or n_init < 1:
                raise GMMError(f"n_init={n_init!r}: use a whole number >= 1")
            self.guide_kind = self.config["guide_kind"] = "map" if method == "svi" else method
            # Equal batches (no small remainder batch with a large N/B scale and noisy step) and,
            # unless asked otherwise, a learning rate decaying 100-fold over the run.
            batch_size = math.ceil(x.shape[0] / math.ceil(x.shape[0] / batch_size))
            fit_options.setdefault("lr_decay", 0.01 ** (1.0 / epochs))
            store = pyro.get_param_store()
            runs = []
            ckpt = fit_options.pop("checkpoint_dir", None)
            for i in range(n_init):
                self.setup(x, generator=gen)  # the start of EM's restart with this seed
                if ckpt is not None:  # one checkpoint per restart, so each resumes its own
                    fit_options["checkpoint_dir"] = (
                        Path(ckpt) / f"restart-{i}" if n_init > 1 else ckpt
                    )
                with store.scope() as state:
                    result = svi_fit(
                        self.model, self.guide, x, epochs=epochs, batch_size=batch_size, lr=lr,
                        loss=self.loss, seed=seed, progress=progress, device=x.device,
                        **fit_options,
                    )  # fmt: skip
                    point = self.meanfield_guide if method == "meanfield" else self.map_guide
                    values = {key: v.detach() for key, v in point.median().items()}
                parts = {key: getattr(self, key) for key in self._RESTART_STATE}
                runs.append((self.objective(x, values), state, values, result, parts))
            self.restart_objectives_ = [run[0] for run in runs]
            self.objective_, state, values, result, parts = max(runs, key=lambda run: run[0])
            for key, value in parts.items():
                setattr(self, key, value)
            self.param_state_ = state
            self.weights_, self.means_, self.covariances_ = self._moments(values)
            if self.covariance == "full" and not self._full:  # D = 1: variances as (K, 1, 1)
                self.covariances_ = self.covariances_[:, :, None]
            self.history_ = [h["train_elbo"] for h in result.history]
            self.n_iter_, self.converged_ = result.steps, True
            self.lower_bound_, self.result_ = self.history_[-1], result
        self._canonical_order()
        return self

    # what a restart of the SVI fit builds afresh (setup), kept with the restart that wins
    _RESTART_STATE = ("map_guide", "meanfield_guide", "classifier", "baseline", "init_logits")

    def _canonical_order(self) -> None:
        order = torch.argsort(self.means_[:, 0])
        self.weights_ = self.weights_[order]
        self.means_ = self.means_[order]
        self.covariances_ = self.covariances_[order]

    def _fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("this GMM is not fitted yet: call gmm.fit(x) first")

    def _component_log_joint(self, x) -> torch.Tensor:
        self._fitted()
        x = self._as_tensor(x).to(self.means_.dtype)
        kind = "diag" if self.covariance == "diag" else "full"
        cov = self.covariances_.to(x.device)
        log_weights = self.weights_.to(x.device).clamp_min(torch.finfo(x.dtype).tiny).log()
        return component_log_prob(x, self.means_.to(x.device), cov, kind) + log_weights

    def score_samples(self, x) -> torch.Tensor:
        """Per-point log-likelihood ``log sum_k pi_k N(x_i | mu_k, Sigma_k)``, shape (N,)."""
        return torch.logsumexp(self._component_log_joint(x), -1)

    def score(self, x) -> float:
        """Mean log-likelihood of the rows of ``x``."""
        return float(self.score_samples(x).mean())

    def predict_proba(self, x) -> torch.Tensor:
        """Responsibilities ``p(z_i = k | x_i)``, shape (N, K)."""
        return torch.softmax(self._component_log_joint(x), -1)

    def predict(self, x) -> torch.Tensor:
        """The most probable component of every row, shape (N,)."""
        return self._component_log_joint(x).argmax(-1)

    def sample(self, n: int = 1, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``(x, labels)`` from the fitted mixture."""
        self._fitted()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dev = self.means_.device
        labels = torch.multinomial(self.weights_.cpu(), n, replacement=True, generator=gen)
        eps = torch.randn(n, self.means_.shape[1], generator=gen, dtype=self.means_.dtype)
        labels, eps = labels.to(dev), eps.to(dev)
        if self.covariance == "diag":
            return self.means_[labels] + self.covariances_[labels].sqrt() * eps, labels
        tril = torch.linalg.cholesky(self.covariances_)
        return self.means_[labels] + (tril[labels] @ eps.unsqueeze(-1)).squeeze(-1), labels

    def n_parameters(self) -> int:
        """Free parameters: K - 1 weights, K D means, K D or K D (D + 1) / 2 covariance terms."""
        self._fitted()
        k, d = self.means_.shape
        cov = k * d if self.covariance == "diag" else k * d * (d + 1) // 2
        return k - 1 + k * d + cov

    def bic(self, x) -> float:
        """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
        n = self._as_tensor(x).shape[0]
        return -2.0 * self.score(x) * n + self.n_parameters() * math.log(n)

    # ----------------------------------------------------------------- input checks
    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this GMM cannot take (shape, NaN/Inf, width)."""
        self._as_tensor(x)

    def _as_tensor(self, x, check_dim: bool = True) -> torch.Tensor:
        if isinstance(x, np.ndarray) or not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if not x.is_floating_point():
            x = x.double()
        if x.ndim != 2:
            raise GMMError(f"data of shape {tuple(x.shape)}: pass a 2-D array (N points, D dims)")
        if x.shape[0] == 0:
            raise GMMError("no data points: pass at least one row")
        if not bool(torch.isfinite(x).all()):
            raise GMMError("data contain NaN or Inf: drop or impute those rows first")
        fitted_dim = self.means_.shape[1] if hasattr(self, "means_") else None
        if check_dim and fitted_dim is not None and x.shape[1] != fitted_dim:
            raise GMMError(
                f"data have {x.shape[1]} columns but the GMM was fitted on {fitted_dim}: "
                "pass data with the same columns or refit"
            )
        return x

    def _check_k(self, x: torch.Tensor) -> None:
        if self.n_components > x.shape[0]:
            raise GMMError(
                f"n_components={self.n_components} exceeds the {x.shape[0]} data points: "
                "use fewer components or more data"
            )
