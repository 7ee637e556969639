r"""A Gaussian mixture estimator in scikit-learn's style over the Pyro pair of :mod:`.gmm`.

:class:`GMM` fits the mixture of :class:`~pyro_vi.models.gmm.MixtureModel` by closed-form EM (the
default, :func:`pyro_vi.infer.em.em`: maximum likelihood), CAVI for the conjugate Normal-Wishart
model (:func:`pyro_vi.infer.em.cavi`) or SVI with any of the four guides of :mod:`.gmm`, and then
scores, predicts and samples from the fitted mixture :math:`p(x) = \sum_k \pi_k \mathcal N(x \mid
\mu_k, \Sigma_k)`::

    gmm = GMM(n_components=3, covariance="full").fit(x, method="em", seed=0)
    gmm.score(x_test), gmm.predict(x_test), gmm.bic(x_test)
    svi = GMM(n_components=3).fit(x, method="svi", epochs=50, lr=0.05)   # guide "map"
    svi = GMM(n_components=3).fit(x, method="svi", n_init=3)   # EM's three starts, best kept
    fit(gmm.model, gmm.guide, data, loss=gmm.loss)                      # the plain Pyro pair

``gmm.model`` is the model and ``gmm.guide`` the guide ``guide_kind`` names (both built by
:meth:`GMM.setup`), for :func:`pyro_vi.fit` or ``pyro.infer.SVI``. Components are sorted by the
first coordinate of their means after every fit (label switching).

It lives beside the pair in ``models/`` rather than in ``pyro_vi/``: it is specific to this one
model and imports it, and ``pyro_vi`` itself never imports ``models``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import nn

from pyro_vi.infer.em import cavi, component_log_prob, em
from pyro_vi.infer.training import FitResult
from pyro_vi.infer.training import fit as svi_fit

from .gmm import (
    GUIDES,
    AmortizedGuide,
    GMMError,
    MixtureModel,
    NotFittedError,
    ScoreGuide,
    Values,
    check_options,
    kmeans_init,
    loss_for,
    map_guide,
    meanfield_guide,
)

__all__ = ["GMM", "GMMError", "NotFittedError", "GUIDES", "METHODS"]

METHODS = ("em", "cavi", "svi", *GUIDES)


class GMM(nn.Module):
    """Gaussian mixture with K components; see :mod:`.gmm` for the model and guides.

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
        check_options(n_components, covariance)
        if guide_kind not in GUIDES:
            raise GMMError(f"guide_kind={guide_kind!r} is not known: use one of {GUIDES}")
        if baseline_beta is not None and not 0.0 <= baseline_beta < 1.0:
            raise GMMError(f"baseline_beta={baseline_beta}: use a value in [0, 1) or None")
        self.config = dict(
            n_components=n_components, covariance=covariance, center=center, spread=spread,
            concentration=concentration, lkj_concentration=lkj_concentration,
            guide_kind=guide_kind, baseline_beta=baseline_beta, hidden=hidden,
        )  # fmt: skip
        self.n_components, self.covariance = n_components, covariance
        self.concentration, self.lkj_concentration = concentration, lkj_concentration
        self.guide_kind, self.baseline_beta, self.hidden = guide_kind, baseline_beta, hidden
        self.mixture: MixtureModel | None = None
        self.guides: nn.ModuleDict | None = None
        if center is not None:
            c = torch.as_tensor(center, dtype=torch.get_default_dtype())
            s = torch.as_tensor(spread, dtype=c.dtype) if spread is not None else torch.ones_like(c)
            self._build(MixtureModel(n_components, c, s, **self._prior_options()), None)

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
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        model = MixtureModel.from_data(x, self.n_components, **self._prior_options())
        init = kmeans_init(model, x, gen)
        # the score guide's q_i(z) start at the posterior under the start (EM's first E-step)
        self._build(model, init, torch.log_softmax(model.log_joint(x, init), -1))
        return self

    def _prior_options(self) -> dict:
        return dict(covariance=self.covariance, concentration=self.concentration,
                    lkj_concentration=self.lkj_concentration)  # fmt: skip

    def _build(
        self, model: MixtureModel, init: Values | None, init_logits: torch.Tensor | None = None
    ) -> None:
        """Take ``model`` and build the four guides for it, starting at ``init`` (or at the
        prior's median when None, as when a saved run is rebuilt from ``config``)."""
        self.config["center"], self.config["spread"] = model.center.tolist(), model.spread.tolist()
        self.mixture = model
        delta = map_guide(model, init)  # the MAP globals of "map", "score" and "amortized"
        self.guides = nn.ModuleDict(
            dict(
                map=delta,
                meanfield=meanfield_guide(model, init),
                amortized=AmortizedGuide(model, delta, self.hidden),
                score=ScoreGuide(model, delta, init_logits, self.baseline_beta),
            )
        )

    # ----------------------------------------------------------------- the Pyro pair
    def _built(self) -> MixtureModel:
        if self.mixture is None:
            raise NotFittedError("the GMM has no data scale yet: call gmm.setup(x) or fit first")
        return self.mixture

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The generative model :class:`~pyro_vi.models.gmm.MixtureModel`; ``idx``/``size``
        subsample the data plate."""
        return self._built()(x, idx, size)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The guide ``guide_kind`` names (see :mod:`.gmm`); train it with ``loss=gmm.loss``."""
        if self.guides is None:
            raise NotFittedError("the GMM's guides are not built: call gmm.setup(x) or fit first")
        return self.guides[self.guide_kind](x, idx=idx, size=size)

    @property
    def loss(self) -> pyro.infer.ELBO:
        """The Pyro ELBO the current guide needs (enumeration, or TraceGraph for ``"score"``)."""
        return loss_for(self.guide_kind)

    @property
    def map_guide(self):
        """The MAP globals (Pyro's ``AutoDelta``) shared by the map, score and amortized guides."""
        return self.guides["map"] if self.guides is not None else None

    @property
    def meanfield_guide(self):
        """The mean-field globals (Pyro's ``AutoNormal``)."""
        return self.guides["meanfield"] if self.guides is not None else None

    @property
    def classifier(self) -> nn.Module | None:
        """The amortized guide's network from standardized x to the logits of q(z | x)."""
        return self.guides["amortized"].classifier if self.guides is not None else None

    @property
    def baseline(self) -> torch.Tensor | None:
        """The score guide's per-datapoint baseline (N,), NaN where a row was not visited."""
        return self.guides["score"].baseline if self.guides is not None else None

    @property
    def center(self) -> torch.Tensor | None:
        """The priors' centre c (length D)."""
        return self.mixture.center if self.mixture is not None else None

    @property
    def spread(self) -> torch.Tensor | None:
        """The priors' spread s (length D)."""
        return self.mixture.spread if self.mixture is not None else None

    @property
    def dim(self) -> int | None:
        """D, once set up."""
        return self.mixture.dim if self.mixture is not None else None

    def log_joint(self, x: torch.Tensor, values: Values) -> torch.Tensor:
        """``log pi_k + log N(x_i | mu_k, Sigma_k)`` (N, K) at global values ``values``."""
        return self._built().log_joint(x, values)

    def objective(self, x: torch.Tensor, values: Values) -> float:
        """The MAP objective per datapoint at global ``values``: the mean log-likelihood of the
        rows of ``x`` (z summed out) plus ``log p(globals) / N``; for the ``"map"`` guide the
        full-data enumerated ELBO divided by N. :meth:`fit` keeps the SVI restart with the
        highest value (EM keeps the highest mean log-likelihood)."""
        return self._built().objective(x, values)

    # ----------------------------------------------------------------- fitting
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
        the per-epoch ELBO per datapoint. ``seed`` fixes the starts, batch order and SVI draws.
        """
        if method not in METHODS:
            raise GMMError(f"method={method!r} is not known: use one of {METHODS}")
        x = self._as_tensor(x, check_dim=False)
        self._check_k(x)
        gen = torch.Generator().manual_seed(seed)
        if method in ("em", "cavi"):
            self._fit_closed_form(x, method, gen, n_init, max_iter, tol, reg_covar)
        else:
            if not isinstance(n_init, int) or n_init < 1:
                raise GMMError(f"n_init={n_init!r}: use a whole number >= 1")
            self.guide_kind = self.config["guide_kind"] = "map" if method == "svi" else method
            # Equal batches (no small remainder batch with a large N/B scale and noisy step) and,
            # unless asked otherwise, a learning rate decaying 100-fold over the run.
            batch_size = math.ceil(x.shape[0] / math.ceil(x.shape[0] / batch_size))
            fit_options.setdefault("lr_decay", 0.01 ** (1.0 / epochs))
            options = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           progress=progress, device=x.device, **fit_options)  # fmt: skip
            self._fit_svi(x, gen, n_init, options)
        self._canonical_order()
        return self

    def _fit_closed_form(self, x, method, gen, n_init, max_iter, tol, reg_covar) -> None:
        opts = dict(n_init=n_init, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
        if method == "cavi":
            if self.covariance != "full":
                raise GMMError("CAVI is derived for full covariances: use covariance='full'")
            res = cavi(x, self.n_components, generator=gen, **opts)
        else:
            res = em(x, self.n_components, self.covariance, generator=gen, **opts)
        self.weights_, self.means_, self.covariances_ = res.weights, res.locs, res.covariances
        self.history_, self.n_iter_, self.converged_ = res.history, res.n_iter, res.converged
        self.lower_bound_, self.result_ = res.mean_loglik, res

    def _fit_svi(self, x: torch.Tensor, gen: torch.Generator, n_init: int, options: dict) -> None:
        """``n_init`` restarts of :func:`pyro_vi.fit`, each from the next k-means++ start of
        ``gen``; the one with the highest objective at its point estimate is kept."""
        store = pyro.get_param_store()
        ckpt = options.pop("checkpoint_dir", None)
        runs = []
        for i in range(n_init):
            self.setup(x, generator=gen)  # the start of EM's restart with this seed
            if ckpt is not None:  # one checkpoint per restart, so each resumes its own
                options["checkpoint_dir"] = Path(ckpt) / f"restart-{i}" if n_init > 1 else ckpt
            with store.scope() as state:
                result = svi_fit(self.model, self.guide, x, loss=self.loss, **options)
                point = self.guides["meanfield" if self.guide_kind == "meanfield" else "map"]
                values = {key: v.detach() for key, v in point.median().items()}
            runs.append(
                (self.objective(x, values), state, values, result, self.mixture, self.guides)
            )
        self.restart_objectives_ = [run[0] for run in runs]
        self.objective_, self.param_state_, values, result, self.mixture, self.guides = max(
            runs, key=lambda run: run[0]
        )
        self._set_point(values, result)

    def _set_point(self, values: Values, result: FitResult) -> None:
        self.weights_, self.means_, self.covariances_ = self.mixture.moments(values)
        if self.covariance == "full" and not self.mixture.full:  # D = 1: variances as (K, 1, 1)
            self.covariances_ = self.covariances_[:, :, None]
        self.history_ = [h["train_elbo"] for h in result.history]
        self.n_iter_, self.converged_ = result.steps, True
        self.lower_bound_, self.result_ = self.history_[-1], result

    def _canonical_order(self) -> None:
        order = torch.argsort(self.means_[:, 0])
        self.weights_ = self.weights_[order]
        self.means_ = self.means_[order]
        self.covariances_ = self.covariances_[order]

    # ----------------------------------------------------------------- the fitted mixture
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
        """``n`` draws ``(x, labels)`` from the fitted mixture: ``z ~ Categorical(pi)``,
        ``x = mu_z + L_z eps`` with ``L_z L_z^T = Sigma_z`` and ``eps ~ N(0, I)``."""
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
