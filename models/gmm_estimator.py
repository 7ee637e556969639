r"""A Gaussian mixture estimator for scikit-learn, over the Pyro pair of :mod:`.gmm`.

:class:`GMM` is a scikit-learn estimator (``BaseEstimator`` and ``DensityMixin``, as
``sklearn.mixture.GaussianMixture`` is): its constructor only stores hyperparameters,
``get_params``/``set_params``/``clone`` work, and ``check_estimator`` passes (tests/test_gmm.py
names the checks it skips and why). It fits the mixture of
:class:`~pyro_vi.models.gmm.MixtureModel` by closed-form EM (``method="em"``, maximum likelihood,
:func:`pyro_vi.infer.em.em`), CAVI for the conjugate Normal-Wishart model (``"cavi"``,
:func:`pyro_vi.infer.em.cavi`) or SVI with one of the four guides of :mod:`.gmm` (``"svi"`` with
``guide_kind``, or the guide's name), then scores, predicts and samples from the fitted mixture
:math:`p(x) = \sum_k \pi_k \mathcal N(x \mid \mu_k, \Sigma_k)`::

    gmm = GMM(n_components=3, covariance="full", n_init=3).fit(x)       # EM, numpy or torch x
    gmm.score(x_test), gmm.predict(x_test), gmm.bic(x_test)
    svi = GMM(3, method="svi", epochs=50, lr=0.05).fit(x)             # guide "map"
    svi = GMM(3).fit(x, method="meanfield", n_init=3)   # keywords = set_params(...).fit(x)
    g = GMM(3).setup(x)
    fit(g.model, g.guide, data, loss=g.loss)                          # the plain Pyro pair

The torch model lives inside the estimator: ``mixture_`` (the model), ``guides_`` (the four
guides, built by :meth:`GMM.setup`) and ``gmm.model``/``gmm.guide`` for :func:`pyro_vi.fit` or
``pyro.infer.SVI``. Predictions follow the input: a torch tensor in gives a tensor back (on its
device), anything else (numpy, lists) a numpy array validated as scikit-learn does. The fitted
``weights_``, ``means_``, ``covariances_`` are torch tensors (``np.asarray`` converts them).
Components are sorted by the first coordinate of their means after every fit (label switching).

It lives beside the pair in ``models/`` rather than in ``pyro_vi/``: it is specific to this one
model and imports it, and ``pyro_vi`` itself never imports ``models``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data
from torch import nn

from pyro_vi.infer.em import cavi, component_log_prob, em
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
    draw_mixture,
    kmeans_init,
    loss_for,
    map_guide,
    meanfield_guide,
)

__all__ = ["GMM", "GMMError", "NotFittedError", "GUIDES", "METHODS"]

METHODS = ("em", "cavi", "svi", *GUIDES)


class GMM(DensityMixin, BaseEstimator):
    """Gaussian mixture with K components; see :mod:`.gmm` for the model and guides.

    Args:
        n_components: K >= 1.
        covariance: ``"full"`` (LKJ correlation times scales) or ``"diag"``.
        method: one of :data:`METHODS`: ``"em"``, ``"cavi"``, ``"svi"`` (the guide
            ``guide_kind``) or a guide's name.
        n_init: restarts, each from a k-means++ start; the best is kept.
        tol, max_iter, reg_covar: EM's and CAVI's tolerance on the mean log-likelihood (ELBO per
            datapoint for CAVI), iteration cap and covariance floor.
        epochs, batch_size, lr: SVI's epochs, batch size (evened out: no small remainder
            batch) and Adam's learning rate; ``lr_decay`` (a :meth:`fit` keyword) defaults to a
            100-fold decay over the run.
        center, spread: the priors' centre c and spread s (length D; None: the data mean and
            std).
        concentration: Dirichlet concentration alpha of the weights (1: flat).
        lkj_concentration: eta of the LKJ prior on correlations (1: uniform).
        guide_kind: the guide :meth:`guide` runs and ``method="svi"`` fits, one of :data:`GUIDES`.
        baseline_beta: decay of the per-datapoint baseline of the ``"score"`` guide; None for
            plain REINFORCE without baseline.
        hidden: hidden width of the ``"amortized"`` guide's classifier.
        random_state: seed (int, or a numpy ``RandomState``/None as scikit-learn takes) of the
            k-means++ starts, the batch order and SVI's draws.
    """

    def __init__(
        self,
        n_components: int = 1,
        covariance: str = "full",
        *,
        method: str = "em",
        n_init: int = 1,
        tol: float = 1e-3,
        max_iter: int = 100,
        reg_covar: float = 1e-6,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.05,
        center: list[float] | None = None,
        spread: list[float] | None = None,
        concentration: float = 1.0,
        lkj_concentration: float = 1.0,
        guide_kind: str = "map",
        baseline_beta: float | None = 0.5,
        hidden: int = 32,
        random_state: int | np.random.RandomState | None = 0,
    ):
        self.n_components, self.covariance, self.method = n_components, covariance, method
        self.n_init, self.tol, self.max_iter, self.reg_covar = n_init, tol, max_iter, reg_covar
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.center, self.spread = center, spread
        self.concentration, self.lkj_concentration = concentration, lkj_concentration
        self.guide_kind, self.baseline_beta, self.hidden = guide_kind, baseline_beta, hidden
        self.random_state = random_state

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_data(
        cls, data, n_components: int | None = None, covariance: str = "full", seed: int = 0, **opt
    ) -> GMM:
        """A GMM set up for ``data`` (a Dataset, Split or (N, D) tensor); K defaults to the
        data set's known number of components or classes, else 3; ``opt`` are constructor
        parameters."""
        train = getattr(data, "train", data)
        x = getattr(train, "x", train)
        info = getattr(data, "info", {}) or {}
        k = n_components or info.get("k") or getattr(data, "num_classes", 0) or 3
        return cls(int(k), covariance, random_state=seed, **opt).setup(x)

    def setup(self, x, seed: int | None = None, generator: torch.Generator | None = None) -> GMM:
        """Build the Pyro pair for ``x``: ``mixture_`` with the priors' centre and spread (the
        ``center``/``spread`` parameters, else the data mean and std) and ``guides_``, all four
        starting at the k-means++ partition of ``x`` drawn with ``generator`` (else with ``seed``,
        else ``random_state``: the start of EM's first restart with that seed); :meth:`fit`
        calls it for every SVI restart."""
        self._check_params()
        x = self._as_tensor(x, reset=True)
        self._check_k(x)
        gen = generator or torch.Generator().manual_seed(self._seed() if seed is None else seed)
        priors = dict(covariance=self.covariance, concentration=self.concentration,
                      lkj_concentration=self.lkj_concentration)  # fmt: skip
        if self.center is not None:
            c = torch.as_tensor(self.center, dtype=x.dtype, device=x.device)
            s = torch.ones_like(c) if self.spread is None else torch.as_tensor(self.spread).to(c)
            model = MixtureModel(self.n_components, c, s, **priors)
        else:
            model = MixtureModel.from_data(x, self.n_components, **priors)
        init = kmeans_init(model, x, gen)
        delta = map_guide(model, init)  # the MAP globals of "map", "score" and "amortized"
        # the score guide's q_i(z) start at the posterior under the start (EM's first E-step)
        logits = torch.log_softmax(model.log_joint(x, init), -1)
        self.mixture_ = model
        self.guides_ = nn.ModuleDict(
            dict(
                map=delta,
                meanfield=meanfield_guide(model, init),
                amortized=AmortizedGuide(model, delta, self.hidden),
                score=ScoreGuide(model, delta, logits, self.baseline_beta),
            )
        )
        return self

    def _check_params(self) -> None:
        """One-line :class:`GMMError` for a hyperparameter this GMM cannot take (checked by
        :meth:`fit` and :meth:`setup`, not by the constructor, as scikit-learn requires)."""
        check_options(self.n_components, self.covariance)
        if self.method not in METHODS:
            raise GMMError(f"method={self.method!r} is not known: use one of {METHODS}")
        if self.guide_kind not in GUIDES:
            raise GMMError(f"guide_kind={self.guide_kind!r} is not known: use one of {GUIDES}")
        beta = self.baseline_beta
        if beta is not None and not 0.0 <= beta < 1.0:
            raise GMMError(f"baseline_beta={beta}: use a value in [0, 1) or None")
        for name in ("n_init", "max_iter", "epochs", "batch_size", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise GMMError(f"{name}={value!r}: use a whole number >= 1")
        for name in ("tol", "reg_covar", "lr", "concentration", "lkj_concentration"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise GMMError(f"{name}={value!r}: use a number > 0")

    def _seed(self) -> int:
        """The integer seed ``random_state`` stands for."""
        if isinstance(self.random_state, int | np.integer):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _guide_kind(self) -> str:
        return self.method if self.method in GUIDES else self.guide_kind

    # ----------------------------------------------------------------- the Pyro pair
    def _built(self) -> MixtureModel:
        if not hasattr(self, "mixture_"):
            raise NotFittedError("the GMM has no data scale yet: call gmm.setup(x) or fit first")
        return self.mixture_

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The generative model :class:`~pyro_vi.models.gmm.MixtureModel`; ``idx``/``size``
        subsample the data plate."""
        return self._built()(x, idx, size)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """The guide ``method`` names, else ``guide_kind`` (see :mod:`.gmm`); train it with
        ``loss=gmm.loss``."""
        self._built()
        return self.guides_[self._guide_kind()](x, idx=idx, size=size)

    @property
    def loss(self) -> pyro.infer.ELBO:
        """The Pyro ELBO the current guide needs (enumeration, or TraceGraph for ``"score"``)."""
        return loss_for(self._guide_kind())

    @property
    def map_guide(self):
        """The MAP globals (Pyro's ``AutoDelta``) shared by the map, score and amortized guides."""
        return self.guides_["map"] if hasattr(self, "guides_") else None

    @property
    def meanfield_guide(self):
        """The mean-field globals (Pyro's ``AutoNormal``)."""
        return self.guides_["meanfield"] if hasattr(self, "guides_") else None

    @property
    def classifier(self) -> nn.Module | None:
        """The amortized guide's network from standardized x to the logits of q(z | x)."""
        return self.guides_["amortized"].classifier if hasattr(self, "guides_") else None

    @property
    def baseline(self) -> torch.Tensor | None:
        """The score guide's per-datapoint baseline (N,), NaN where a row was not visited."""
        return self.guides_["score"].baseline if hasattr(self, "guides_") else None

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
    def fit(self, X, y=None, **options: Any) -> GMM:
        """Fit to ``X`` (N, D) by ``method`` and return self; ``y`` is ignored.

        Keywords that name constructor parameters are ``set_params`` shorthand (the estimator
        keeps them; ``seed`` means ``random_state``): ``GMM(3).fit(x, method="svi", n_init=3)``.
        The others go to :func:`pyro_vi.fit` for the SVI methods (``lr_decay``,
        ``checkpoint_dir``, ``resume``, ``progress``, ...). ``"em"`` and ``"cavi"`` run
        ``n_init`` k-means++ restarts with ``tol``, ``max_iter`` and ``reg_covar``. The SVI
        methods run :func:`pyro_vi.fit` ``n_init`` times, each in a private Pyro param-store scope
        from the k-means++ start EM's restart of the same seed uses, and keep the run with the
        highest :meth:`objective` at its point estimate (``objective_``, its store
        ``param_state_``; ``restart_objectives_`` lists all; with ``checkpoint_dir`` and
        ``n_init > 1`` restart i checkpoints to ``checkpoint_dir/restart-i``). ``history_`` holds
        the per-iteration (EM) or per-epoch (SVI) objective per datapoint.
        """
        if "seed" in options:
            options["random_state"] = options.pop("seed")
        names = self.get_params(deep=False)
        self.set_params(**{key: options.pop(key) for key in list(options) if key in names})
        self._check_params()
        x = self._as_tensor(X, reset=True)
        self._check_k(x)
        seed = self._seed()
        gen = torch.Generator().manual_seed(seed)
        if self.method in ("em", "cavi"):
            if options:
                raise GMMError(f"{', '.join(options)}: not options of method={self.method!r} "
                               "(pyro_vi.fit options are for the SVI methods)")  # fmt: skip
            self._fit_closed_form(x, gen)
        else:
            self._fit_svi(x, gen, seed, options)
        order = torch.argsort(self.means_[:, 0])  # a canonical labelling of the components
        self.weights_, self.means_ = self.weights_[order], self.means_[order]
        self.covariances_ = self.covariances_[order]
        return self

    def fit_predict(self, X, y=None, **options: Any):
        """:meth:`fit` on ``X``, then the most probable component of each of its rows."""
        return self.fit(X, **options).predict(X)

    def _fit_closed_form(self, x: torch.Tensor, gen: torch.Generator) -> None:
        opts = dict(n_init=self.n_init, max_iter=self.max_iter, tol=self.tol,
                    reg_covar=self.reg_covar, generator=gen)  # fmt: skip
        if self.method == "cavi":
            if self.covariance != "full":
                raise GMMError("CAVI is derived for full covariances: use covariance='full'")
            res = cavi(x, self.n_components, **opts)
        else:
            res = em(x, self.n_components, self.covariance, **opts)
        self.weights_, self.means_, self.covariances_ = res.weights, res.locs, res.covariances
        self.history_, self.n_iter_, self.converged_ = res.history, res.n_iter, res.converged
        self.lower_bound_, self.result_ = res.mean_loglik, res

    def _fit_svi(self, x: torch.Tensor, gen: torch.Generator, seed: int, options: dict) -> None:
        """``n_init`` restarts of :func:`pyro_vi.fit`, each from the next k-means++ start of
        ``gen``; the one with the highest objective at its point estimate is kept."""
        n = x.shape[0]
        # Equal batches (no small remainder batch with a large N/B scale and noisy step) and,
        # unless asked otherwise, a learning rate decaying 100-fold over the run.
        batch_size = math.ceil(n / math.ceil(n / self.batch_size))
        options.setdefault("lr_decay", 0.01 ** (1.0 / self.epochs))
        options.setdefault("progress", False)
        ckpt = options.pop("checkpoint_dir", None)
        options = dict(epochs=self.epochs, batch_size=batch_size, lr=self.lr, seed=seed,
                       device=x.device, **options)  # fmt: skip
        kind, store, runs = self._guide_kind(), pyro.get_param_store(), []
        for i in range(self.n_init):
            self.setup(x, generator=gen)  # the start of EM's restart with this seed
            if ckpt is not None:  # one checkpoint per restart, so each resumes its own
                options["checkpoint_dir"] = Path(ckpt) / f"restart-{i}" if self.n_init > 1 else ckpt
            with store.scope() as state:
                result = svi_fit(self.model, self.guide, x, loss=self.loss, **options)
                point = self.guides_["meanfield" if kind == "meanfield" else "map"]
                values = {key: v.detach() for key, v in point.median().items()}
            runs.append((self.objective(x, values), state, values, result, self.mixture_,
                         self.guides_))  # fmt: skip
        self.restart_objectives_ = [run[0] for run in runs]
        best = max(runs, key=lambda run: run[0])
        self.objective_, self.param_state_, values, result, self.mixture_, self.guides_ = best
        self.weights_, self.means_, self.covariances_ = self.mixture_.moments(values)
        if self.covariance == "full" and not self.mixture_.full:  # D = 1: variances as (K, 1, 1)
            self.covariances_ = self.covariances_[:, :, None]
        self.history_ = [h["train_elbo"] for h in result.history]
        self.n_iter_, self.converged_ = result.steps, True
        self.lower_bound_, self.result_ = self.history_[-1], result

    # ----------------------------------------------------------------- the fitted mixture
    def _fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError("this GMM is not fitted yet: call gmm.fit(x) first")

    def _component_log_joint(self, X) -> torch.Tensor:
        self._fitted()
        x = self._as_tensor(X, reset=False).to(self.means_.dtype)
        kind = "diag" if self.covariance == "diag" else "full"
        cov = self.covariances_.to(x.device)
        log_weights = self.weights_.to(x.device).clamp_min(torch.finfo(x.dtype).tiny).log()
        return component_log_prob(x, self.means_.to(x.device), cov, kind) + log_weights

    def score_samples(self, X):
        """Per-point log-likelihood ``log sum_k pi_k N(x_i | mu_k, Sigma_k)``, shape (N,)."""
        return _like(torch.logsumexp(self._component_log_joint(X), -1), X)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of ``X``; ``y`` is ignored."""
        return float(torch.logsumexp(self._component_log_joint(X), -1).mean())

    def predict_proba(self, X):
        """Responsibilities ``p(z_i = k | x_i)``, shape (N, K)."""
        return _like(torch.softmax(self._component_log_joint(X), -1), X)

    def predict(self, X):
        """The most probable component of every row, shape (N,)."""
        return _like(self._component_log_joint(X).argmax(-1), X)

    def sample(self, n_samples: int = 1, seed: int | None = None):
        """``n_samples`` draws ``(x, labels)`` from the fitted mixture, as torch tensors:
        ``z ~ Categorical(pi)``, ``x = mu_z + L_z eps`` with ``L_z L_z^T = Sigma_z`` and
        ``eps ~ N(0, I)``."""
        self._fitted()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return draw_mixture(self.weights_, self.means_, self.covariances_, n_samples, gen)

    def n_parameters(self) -> int:
        """Free parameters: K - 1 weights, K D means, K D or K D (D + 1) / 2 covariance terms."""
        self._fitted()
        k, d = self.means_.shape
        cov = k * d if self.covariance == "diag" else k * d * (d + 1) // 2
        return k - 1 + k * d + cov

    def bic(self, X) -> float:
        """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
        n = len(X)
        return -2.0 * self.score(X) * n + self.n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
        return -2.0 * self.score(X) * len(X) + 2 * self.n_parameters()

    # ----------------------------------------------------------------- input checks
    def check(self, x) -> None:
        """One-line errors for data this GMM cannot take (shape, NaN/Inf, width)."""
        self._as_tensor(x, reset=False)

    def _as_tensor(self, X, reset: bool) -> torch.Tensor:
        """``X`` as a floating tensor (torch input kept on its device and dtype; anything else
        validated by scikit-learn, float64); ``reset`` records its width (``n_features_in_``),
        else it must have the fitted width."""
        if not torch.is_tensor(X):
            try:
                return torch.tensor(validate_data(self, X, reset=reset, dtype=np.float64))
            except ValueError as e:
                raise GMMError(str(e)) from None
        x = X if X.is_floating_point() else X.double()
        if x.ndim != 2:
            raise GMMError(f"data of shape {tuple(x.shape)}: pass a 2-D array (N points, D dims)")
        if x.shape[0] == 0:
            raise GMMError("no data points: pass at least one row")
        if not bool(torch.isfinite(x).all()):
            raise GMMError("data contain NaN or Inf: drop or impute those rows first")
        if reset:
            self.n_features_in_ = x.shape[1]
        elif hasattr(self, "n_features_in_") and x.shape[1] != self.n_features_in_:
            raise GMMError(
                f"data have {x.shape[1]} columns but the GMM was fitted on {self.n_features_in_}:"
                " pass data with the same columns or refit"
            )
        return x

    def _check_k(self, x: torch.Tensor) -> None:
        if self.n_components > x.shape[0]:
            raise GMMError(
                f"n_components={self.n_components} exceeds the {x.shape[0]} data points: "
                "use fewer components or more data"
            )


def _like(t: torch.Tensor, X) -> torch.Tensor | np.ndarray:
    """``t`` as the caller passed ``X``: a tensor for a tensor, else a numpy array."""
    return t if torch.is_tensor(X) else t.detach().cpu().numpy()
