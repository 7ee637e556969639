r"""Posterior diagnostics for a model/guide pair: InferenceData, PSIS k-hat and PSIS-LOO.

Draws :math:`\theta^{(s)} \sim q(\theta \mid y)`, :math:`s = 1..S`, from the guide give the log
importance weights

.. math:: \log w^{(s)} = \log p(y, \theta^{(s)}) - \log q(\theta^{(s)} \mid y),

split into a global part (sites outside the plate ``"data"``) and one term per datapoint (sites
inside it): :math:`\log w^{(s)} = g^{(s)} + \sum_i \ell_i^{(s)}`.

**PSIS** (Yao et al. 2018, Vehtari et al. 2024): a generalized Pareto fit to the largest weights
gives the shape :math:`\hat k`; :math:`\hat k < 0.5` means the importance-sampling estimates
converge fast (q is close to p), :math:`\hat k > 0.7` that q misses mass of p. With random global
latents :func:`psis_khat` reports one :math:`\hat k` of the joint weights; when the guide's globals
are fixed (none, or point masses) the posterior factorizes over datapoints and it reports one
:math:`\hat k_i` per datapoint from :math:`\ell_i^{(s)}`: the datapoints an amortized encoder fits
badly. Weights constant to working precision (an exact guide) have no tail: :math:`\hat k = -\infty`
(``az.psislw`` and Pyro's ``psis_diagnostic`` return :math:`+\infty` there).
:meth:`PSISResult.expectation` gives PSIS-corrected posterior expectations
:math:`\sum_s \tilde w^{(s)} f(\theta^{(s)})` with the smoothed, self-normalized weights.

**LOO for draws from q** (Magnusson et al. 2019): the leave-one-out importance ratios are

.. math:: r_i^{(s)} = \frac{p(\theta^{(s)} \mid y_{-i})}{q(\theta^{(s)})} \propto
          \frac{p(\theta^{(s)} \mid y)}{q(\theta^{(s)})\, p(y_i \mid \theta^{(s)})},
          \qquad \log r_i^{(s)} = \log w^{(s)} - \log p(y_i \mid \theta^{(s)}),

Pareto-smoothed per datapoint into :math:`\tilde r_i^{(s)}` (normalized), and
:math:`\widehat{\mathrm{elpd}}_i = \log \sum_s \tilde r_i^{(s)} p(y_i \mid \theta^{(s)})`.
``az.loo`` on the same InferenceData omits the :math:`\log w` term (it assumes exact posterior
draws). Discrete local latents that the model enumerates (``infer={"enumerate": "parallel"}``) and
the guide leaves out are summed out exactly, so :math:`p(y_i \mid \theta)` is the marginal
likelihood of datapoint i (a mixture's :math:`\log \sum_k \pi_k p(y_i \mid \theta_k)`). Example::

    idata = to_inference_data(model, guide, x, num_samples=1000)   # arviz.InferenceData
    az.summary(idata); az.loo(idata)                                 # ArviZ as usual
    loo(idata)                                                       # corrected for q
    res = psis_khat(vae.model, vae.guide, x_test, num_samples=500)
    res.khat, res.summary()["share_above_0.7"]

The draws and their weights come from the one log-weight engine, :mod:`pyro_vi.evaluate.weights`,
that :func:`pyro_vi.elbo` and :func:`pyro_vi.log_marginal` use. Log densities are unscaled
(subsampling scales do not enter) and masks apply.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from pyro import poutine
from torch.distributions import biject_to

from pyro_vi.evaluate.weights import (
    DATA_PLATE,
    PARTICLES,
    DiagnosticsError,
    LogWeights,
    Scored,
    data_frame,
    is_subsample_site,
    max_plate_nesting,
    particle_plate,
    score_chunks,
)

if TYPE_CHECKING:
    import arviz as az
    from arviz.stats.stats_utils import ELPDData

__all__ = [
    "DiagnosticsError",
    "Draws",
    "PSISResult",
    "draw",
    "psis",
    "psis_khat",
    "to_inference_data",
    "loo",
    "prior_draws",
    "MIN_SAMPLES",
    "DATA_PLATE",
]

MIN_SAMPLES = 10
PSIS_MIN_SAMPLES = (
    21  # the smallest S whose Pareto tail (ceil(S/5) draws) has the 5 draws a fit needs
)


def arviz():
    """ArviZ, imported on first use and without its daily "major refactor" FutureWarning (a
    notice about ArviZ 1.x, not about anything the caller did)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "\\s*ArviZ is undergoing", FutureWarning)
        import arviz as az
    return az


# ----------------------------------------------------------------------------- drawing from q
@dataclass
class Draws(LogWeights):
    """S draws from the guide with the model's log densities, in a plate-aware layout.

    Every tensor has the draws first. ``values`` (latents, also enumerated ones sampled from their
    conditional posterior), ``predictive`` (replicated observations) and ``observed`` (the data,
    no draw axis) have their plate axes next, in the order of ``dims[name]`` (plate names), then
    their event axes. ``log_*_local`` and ``log_lik`` have shape (S, N) along the plate
    ``"data"``; ``log_*_global`` have shape (S,). The log weights (``log_weight``,
    ``log_weight_local``, ``log_weight_global``) are those of
    :class:`pyro_vi.evaluate.weights.LogWeights`.
    """

    num_samples: int
    values: dict[str, torch.Tensor]
    dims: dict[str, list[str]]
    sizes: dict[str, int]
    local_sites: set[str]
    global_sites: set[str]
    enumerated: set[str]
    log_q_global: torch.Tensor
    log_p_global: torch.Tensor
    log_q_local: torch.Tensor | None
    log_p_local: torch.Tensor | None
    log_lik: dict[str, torch.Tensor]
    predictive: dict[str, torch.Tensor]
    observed: dict[str, torch.Tensor]
    data_index: torch.Tensor | None
    tolerance: float
    tolerance_local: torch.Tensor | None = None
    random_globals: bool = False
    fixed_globals: set[str] = field(default_factory=set)
    point_masses: set[str] = field(default_factory=set)  # Delta in the guide, not in the model


def _check_samples(num_samples: int, least: int = MIN_SAMPLES) -> None:
    if not isinstance(num_samples, int) or num_samples < least:
        raise DiagnosticsError(
            f"num_samples={num_samples}: use at least {least} draws (hundreds for stable k-hat)"
        )


def _layout(site, nesting: int, tensor: torch.Tensor, event: int):
    """Reshape ``tensor`` (batch dims + ``event`` trailing dims, no enum dims) to
    (draws, *plate axes, *event axes); returns it with the plate names of its axes."""
    batch = tensor.dim() - event
    t = tensor.reshape((1,) * (nesting + 1 - batch) + tuple(tensor.shape))
    names, drop = [], []
    for axis in range(1, nesting + 1):
        dim = axis - nesting - 1
        frame = next((f for f in site["cond_indep_stack"] if f.vectorized and f.dim == dim), None)
        if frame is not None and frame.name != PARTICLES:
            names.append(frame.name)
        elif t.shape[axis] == 1:
            drop.append(axis)
        else:
            raise DiagnosticsError(
                f"site {site['name']!r} has a batch dim of size {t.shape[axis]} at dim {dim} "
                "outside any plate: declare its plates with pyro.plate"
            )
    return (t.squeeze(tuple(drop)) if drop else t), names


def _enum_axis(v: torch.Tensor, event: int) -> int:
    axes = [a for a in range(v.dim() - event) if v.shape[a] != 1]
    if len(axes) != 1:
        raise DiagnosticsError(
            "an enumerated site has an unexpected shape: enumerate it with 'parallel'"
        )
    return axes[0]


def _unravel(index: torch.Tensor, sizes) -> list[torch.Tensor]:
    out = []
    for size in reversed(sizes):
        out.append(index % size)
        index = torch.div(index, size, rounding_mode="floor")
    return out[::-1]


def _sample_enumerated(p: Scored) -> dict[str, torch.Tensor]:
    """Values of the enumerated sites drawn from p(z_i | y_i, theta), from the chunk's joint."""
    nesting, n_enum = p.nesting, p.joint.dim() - 2
    width = n_enum + nesting + 1
    logits = p.joint.movedim(tuple(range(n_enum)), tuple(range(-n_enum, 0)))
    enum_sizes = logits.shape[-n_enum:]
    logits = logits.reshape(*logits.shape[:2], -1)
    logits = logits.expand(p.num_particles, p.log_enum_marginal.shape[-1], -1)
    index = _unravel(torch.distributions.Categorical(logits=logits).sample(), enum_sizes)
    data = {}
    for name in p.enumerated:
        s = p.model_latent[name]
        v, ev = s["value"], len(s["fn"].event_shape)
        axis = _enum_axis(v, ev)
        support = v.reshape(v.shape[axis], *v.shape[v.dim() - ev :])
        chosen = support[index[width - (v.dim() - ev) + axis]]  # (draws, N, *event)
        shape = [1] * (nesting + 1)
        shape[0], shape[nesting + 1 + data_frame(s).dim] = chosen.shape[:2]
        value = chosen.reshape(*shape, *chosen.shape[2:])
        data[name] = value if p.vectorized else value.squeeze(0)
    return data


def _complete(model: Callable, args, kwargs, p: Scored) -> tuple:
    """A chunk's model trace with its enumerated sites drawn from their conditional posterior,
    those sites, and the pointwise log-likelihood of each observed site in the data plate."""
    if p.joint is None:
        return p.model_trace, {}, p.log_lik
    for k in p.joint_sites:
        if k not in p.observed and k not in p.enumerated:
            raise DiagnosticsError(
                f"latent site {k!r} depends on the enumerated {sorted(p.enumerated)}: "
                "add those to the guide"
            )
    marginal = [k for k in p.joint_sites if k in p.observed]
    if len(marginal) != 1:
        raise DiagnosticsError(
            f"enumerated sites {sorted(p.enumerated)} feed {len(marginal)} observed sites: "
            "a pointwise likelihood needs exactly one; put the others in the guide"
        )
    data = _sample_enumerated(p)
    device = next((a.device for a in args if torch.is_tensor(a)), None)
    with particle_plate(p.num_particles, p.nesting, p.vectorized, device):
        m = poutine.condition(poutine.replay(model, trace=p.guide_trace), data=data)
        plain = poutine.trace(m).get_trace(*args, **kwargs)
    lik = {**p.log_lik, marginal[0]: p.log_enum_marginal}
    return plain, {k: plain.nodes[k] for k in p.enumerated}, lik


def draw(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
    **kwargs,
) -> Draws:
    """Draw ``num_samples`` latents from ``guide`` and score them under ``model``.

    Draws run vectorized in the engine's particle plate (:mod:`pyro_vi.evaluate.weights`; chunks of
    ``chunk_size``, automatic by default). ``vectorize=False`` runs one draw per trace, for models
    that index tensors in ways a particle dimension breaks; ``None`` tries vectorized and falls
    back with a warning. The weights' draws come first, so at equal seeds they are those of
    :func:`pyro_vi.log_marginal` and :func:`pyro_vi.elbo`. Runs without gradients.
    """
    _check_samples(num_samples)
    with torch.no_grad():
        parts = list(score_chunks(model, guide, args, kwargs, num_samples, vectorize=vectorize,
                                  chunk_size=chunk_size))  # fmt: skip
        done = [_complete(model, args, kwargs, p) for p in parts]
        return _collect(parts, done, args)


def _collect(parts: list[Scored], done: list[tuple], args) -> Draws:
    """The chunks' values, replicated observations and terms as one :class:`Draws`."""
    first, (plain0, sampled0, lik0) = parts[0], done[0]
    nesting = first.nesting
    dims: dict[str, list[str]] = {}
    plate_sizes: dict[str, int] = {}

    def gather(get) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        for p, d in zip(parts, done, strict=True):
            for name, (site, tensor, event) in get(p, d).items():
                t, names = _layout(site, nesting, tensor, event)
                out.setdefault(name, []).append(t.expand(p.num_particles, *t.shape[1:]))
                dims[name] = names
                for f in site["cond_indep_stack"]:
                    if f.name != PARTICLES:
                        plate_sizes.setdefault(f.name, t.shape[1 + names.index(f.name)])
        return {k: torch.cat(v) for k, v in out.items()}

    def latents(p, d):
        sites = {**p.guide_sites, **d[1]}
        return {k: (s, s["value"], len(s["fn"].event_shape)) for k, s in sites.items()}

    def replicas(p, d):
        sites = {k: d[0].nodes[k] for k in p.observed}
        return {k: (s, s["fn"].sample(), len(s["fn"].event_shape)) for k, s in sites.items()}

    values = gather(latents)
    predictive = gather(replicas)
    local = {k for k, s in {**first.guide_sites, **sampled0}.items() if data_frame(s) is not None}
    glob = set(values) - local
    observed = {}
    for k in first.observed:
        s = plain0.nodes[k]
        full = s["value"].expand(s["fn"].batch_shape + s["fn"].event_shape)
        observed[k] = _layout(s, nesting, full, len(s["fn"].event_shape))[0][0]
    has_data = first.has_data_plate
    keys = ("log_q_global", "log_p_global") + (("log_q_local", "log_p_local") if has_data else ())
    terms = {key: torch.cat([getattr(p, key) for p in parts]) for key in keys}
    lik = {k: torch.cat([d[2][k] for d in done]) for k in lik0}
    fixed = {k for k in glob if bool((values[k] == values[k][:1]).all())}
    model_fns = {k: site["fn"] for k, site in first.model_latent.items()}
    point = {k for k in first.guide_sites if _point_mass(values[k], model_fns.get(k))}
    return Draws(
        num_samples=sum(p.num_particles for p in parts), values=values, dims=dims,
        sizes=plate_sizes, local_sites=local, global_sites=glob, enumerated=set(first.enumerated),
        log_q_global=terms["log_q_global"], log_p_global=terms["log_p_global"],
        log_q_local=terms.get("log_q_local"), log_p_local=terms.get("log_p_local"),
        log_lik=lik, predictive=predictive, observed=observed,
        data_index=first.data_index if has_data else None,
        **_tolerances(terms, lik, args), random_globals=bool(glob - fixed), fixed_globals=fixed,
        point_masses=point,
    )  # fmt: skip


def _point_mass(draws: torch.Tensor, model_fn) -> bool:
    """True when the guide's draws of a continuous site are all equal (a point mass, such as
    ``AutoDelta``'s) although the model's distribution there has room to vary (not, e.g., a
    Dirichlet over one component)."""
    if model_fn is None or model_fn.support.is_discrete or len(draws) < 2:
        return False
    try:
        free = math.prod(biject_to(model_fn.support).inverse_shape(model_fn.event_shape))
    except (NotImplementedError, AttributeError, TypeError):
        free = 1
    return free > 0 and bool((draws == draws[:1]).all())


def _tolerances(terms: dict, lik: dict, args) -> dict:
    """Float rounding of a log weight, which grows with the magnitudes summed into it: the joint
    weight's with the terms of all datapoints, one datapoint's (a column of the local weights)
    with its own. The spread of weights within it counts as constant weights."""
    ref = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
    eps = 64 * torch.finfo(torch.get_default_dtype() if ref is None else ref.dtype).eps
    parts = dict(terms)
    if "log_p_local" in parts:  # the latent terms apart from the likelihood, as they were summed
        parts["log_p_local"] = parts["log_p_local"] - sum(lik.values(), 0.0)
    rows = [v.reshape(v.shape[0], -1).abs().sum(-1).max() for v in (*parts.values(), *lik.values())]
    out = {"tolerance": eps * max([1.0] + [float(r) for r in rows]), "tolerance_local": None}
    if "log_q_local" in parts:
        size = parts["log_q_local"].abs() + parts["log_p_local"].abs()
        size = size + sum((v.abs() for v in lik.values()), torch.zeros_like(size))
        out["tolerance_local"] = eps * size.amax(0).clamp_min(1.0)
    return out


# ----------------------------------------------------------------------------- PSIS
def psis(
    log_weights: torch.Tensor, tolerance: float | torch.Tensor = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pareto-smoothed, self-normalized log weights and the Pareto shape k-hat.

    ``log_weights`` has the draws first: shape (S,) gives one k-hat, (S, N) one per column.
    Columns whose spread is at most ``tolerance`` (one value, or one per column) are constant
    weights: left uniform, with k-hat = -inf (no tail). The smoothing is ArviZ's
    :func:`arviz.psislw` (float64).
    """
    lw = log_weights.detach().to("cpu", torch.float64)
    flat = lw.reshape(lw.shape[0], -1).T.numpy().copy()  # (columns, S)
    smoothed, khat = arviz().psislw(flat, reff=1.0)
    khat = np.atleast_1d(np.asarray(khat, dtype=float)).copy()
    smoothed = np.atleast_2d(smoothed)
    tol = torch.as_tensor(tolerance, dtype=torch.float64).detach().cpu().reshape(-1).numpy()
    constant = (flat.max(-1) - flat.min(-1)) <= tol
    khat[constant] = -np.inf
    smoothed[constant] = -math.log(flat.shape[1])
    out = torch.as_tensor(smoothed.T.reshape(lw.shape), device=log_weights.device)
    kh = torch.as_tensor(khat.reshape(lw.shape[1:]), device=log_weights.device)
    return out, kh


@dataclass
class PSISResult:
    """k-hat of a guide: one value (global) or one per datapoint (``pointwise``).

    ``log_weights`` are the raw log importance weights (S,) or (S, N); ``smoothed_log_weights``
    the Pareto-smoothed ones, normalized over the draws; ``draws`` the guide's latent values
    (draws first, as in :class:`Draws`).
    """

    khat: torch.Tensor
    log_weights: torch.Tensor
    smoothed_log_weights: torch.Tensor
    draws: dict[str, torch.Tensor]
    pointwise: bool
    data_index: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.log_weights.shape[0]

    @property
    def threshold(self) -> float:
        """The sample-size-dependent bound min(1 - 1/log10(S), 0.7) (Vehtari et al. 2024)."""
        return min(1.0 - 1.0 / math.log10(self.num_samples), 0.7)

    def bad(self, threshold: float | None = None) -> torch.Tensor:
        """Dataset indices (pointwise) or positions of the k-hats above ``threshold`` (default
        :attr:`threshold`, the bound for this number of draws)."""
        threshold = self.threshold if threshold is None else threshold
        where = torch.nonzero(self.khat.reshape(-1) > threshold).reshape(-1)
        if self.pointwise and self.data_index is not None:
            return self.data_index.to(where.device)[where]
        return where

    def summary(self) -> dict:
        """Counts and shares of k-hat in (-inf, 0.5], (0.5, 0.7], (0.7, inf); max; worst five."""
        k = self.khat.reshape(-1).double()
        n = k.numel()
        order = torch.argsort(k, descending=True)[:5]
        index = self.data_index if self.pointwise and self.data_index is not None else None
        worst = (order if index is None else index.to(order.device)[order]).tolist()
        return {
            "n": n,
            "max": float(k.max()),
            "share_below_0.5": float((k <= 0.5).double().mean()),
            "share_0.5_to_0.7": float(((k > 0.5) & (k <= 0.7)).double().mean()),
            "share_above_0.7": float((k > 0.7).double().mean()),
            "worst": worst,
        }

    def expectation(self, f: str | Callable[[dict], torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """PSIS-corrected posterior expectation of ``f``: a latent's name, a function of the draws
        dict or a tensor with the draws first. Pointwise results weigh each datapoint's values
        (axis 1 along the data plate) with that datapoint's weights."""
        values = self.draws[f] if isinstance(f, str) else f(self.draws) if callable(f) else f
        w = self.smoothed_log_weights.exp().to(values.dtype)
        if self.pointwise and values.dim() >= 2 and values.shape[1] == w.shape[1]:
            w = w.reshape(w.shape + (1,) * (values.dim() - 2))
            return (w * values).sum(0)
        if self.pointwise:
            raise DiagnosticsError(
                "pointwise weights need values with the draws first and the datapoints second"
            )
        return (w.reshape((-1,) + (1,) * (values.dim() - 1)) * values).sum(0)

    def __float__(self) -> float:
        """The global k-hat as a number; a pointwise result has one per datapoint."""
        if self.pointwise or self.khat.numel() != 1:
            raise DiagnosticsError(
                f"this k-hat is pointwise ({self.khat.numel()} values, one per datapoint), not one "
                "number: use .khat (a tensor), .bad() (the datapoints above the threshold) or "
                ".summary()['max']"
            )
        return float(self.khat.reshape(()))

    def __repr__(self) -> str:
        s = self.summary()
        if not self.pointwise and s["n"] == 1:
            verdict = "ok" if s["max"] <= self.threshold else "above threshold"
            return (
                f"PSISResult(global k-hat={s['max']:.3f}, S={self.num_samples}, "
                f"threshold={self.threshold:.3f}: {verdict})"
            )
        return (
            f"PSISResult({s['n']} datapoints, S={self.num_samples}, max k-hat={s['max']:.3f}, "
            f"share above 0.7={s['share_above_0.7']:.3f}, above threshold "
            f"{self.threshold:.3f}: {len(self.bad())})"
        )


def psis_khat(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    pointwise: bool | None = None,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
    **kwargs,
) -> PSISResult:
    """PSIS k-hat of ``guide`` as an importance proposal for ``model``'s posterior.

    ``pointwise=None`` picks: one k-hat per datapoint when the guide's global latents are fixed
    (none, or point masses: the posterior factorizes over the plate ``"data"``, as for amortized
    and per-datapoint guides), else one global k-hat of the joint weights. ``pointwise=True``
    with random global latents, or without a ``"data"`` plate, is an error. At least 21 draws
    (hundreds for a stable k-hat).
    """
    _check_samples(num_samples, PSIS_MIN_SAMPLES)
    d = draw(model, guide, *args, num_samples=num_samples, vectorize=vectorize,
             chunk_size=chunk_size, **kwargs)  # fmt: skip
    if pointwise is None:
        pointwise = d.has_data_plate and not d.random_globals and bool(d.local_sites)
    if pointwise:
        if not d.has_data_plate:
            d.log_weight_local  # raises the one-line error  # noqa: B018
        if d.random_globals:
            raise DiagnosticsError(
                f"per-datapoint k-hat needs fixed global latents, but {sorted(d.global_sites)} "
                "are random in the guide: use pointwise=False for the global k-hat"
            )
        lw = d.log_weight_local
    else:
        lw = d.log_weight
    if point := sorted(d.point_masses & (d.local_sites if pointwise else set(d.values))):
        raise DiagnosticsError(
            f"the guide's {point[0]!r} is a point mass (e.g. AutoDelta): importance sampling "
            "from it is undefined, so there is no k-hat (constant weights are not an exact "
            "guide): use a guide with a density for it (AutoNormal), or pointwise k-hat with "
            "point masses for global latents only"
        )
    smoothed, khat = psis(lw, d.tolerance_local if pointwise else d.tolerance)
    return PSISResult(khat, lw, smoothed, d.values, bool(pointwise), d.data_index)


# ----------------------------------------------------------------------------- ArviZ
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _coords(d: Draws) -> dict[str, np.ndarray]:
    coords = {name: np.arange(size) for name, size in d.sizes.items()}
    if d.data_index is not None:
        coords[DATA_PLATE] = _np(d.data_index)
    return coords


def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    local: bool | None = None,
    prior: bool = False,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
    chains: int = 4,
    **kwargs,
) -> az.InferenceData:
    """``num_samples`` draws from ``guide`` as an :class:`arviz.InferenceData`.

    The draws are independent samples from q, not one MCMC chain: they are split into ``chains``
    pseudo-chains (the largest divisor of S up to ``chains``; ``chains=1`` keeps one), so that
    ArviZ's shape checks pass and ``az.summary``'s columns read as they should for independent
    draws (r_hat near 1, ess near S, mcse = sd / sqrt(S)); ``sample_stats.attrs["draws"]`` says so.
    Groups: ``posterior`` (chain, draw) with the global latents, and the local ones (plate
    ``"data"``) when ``local=True`` or when there are no global latents (``local=None``);
    ``posterior_predictive`` and ``observed_data`` for every observed site; ``log_likelihood``
    per datapoint for observed sites in the plate ``"data"`` (``az.loo`` works; use :func:`loo`
    for draws from q); ``sample_stats`` with ``log_weight`` = log p(y, θ) - log q(θ), ``lp``,
    ``log_q`` and, with a data plate, ``log_weight_local`` (chain, draw, data); with
    ``prior=True`` also ``prior`` and ``prior_predictive``. Dims are named after the plates,
    event dims ``{site}_dim_{j}``; the ``"data"`` coordinate holds the dataset indices.
    """
    d = draw(model, guide, *args, num_samples=num_samples, vectorize=vectorize,
             chunk_size=chunk_size, **kwargs)  # fmt: skip
    if local is None:
        local = not d.global_sites
    names = sorted(d.global_sites | (d.local_sites if local else set()))
    c = max(k for k in range(1, max(chains, 1) + 1) if d.num_samples % k == 0)
    ch = lambda t: _np(t).reshape(c, -1, *t.shape[1:])  # noqa: E731 - (chain, draw, ...)
    posterior = {k: ch(d.values[k]) for k in names}
    event_rank = {k: v.dim() - 1 - len(d.dims[k]) for k, v in {**d.values, **d.predictive}.items()}
    dims = {k: v + [f"{k}_dim_{j}" for j in range(event_rank[k])] for k, v in d.dims.items()}
    groups = dict(
        posterior=posterior,
        posterior_predictive={k: ch(v) for k, v in d.predictive.items()},
        observed_data={k: _np(v) for k, v in d.observed.items()},
    )
    lp = d.log_p_global + (d.log_p_local.sum(-1) if d.has_data_plate else 0.0)
    lq = d.log_q_global + (d.log_q_local.sum(-1) if d.has_data_plate else 0.0)
    stats = {"log_weight": ch(d.log_weight), "lp": ch(lp), "log_q": ch(lq)}
    if d.has_data_plate:
        groups["log_likelihood"] = {k: ch(v) for k, v in d.log_lik.items()}
        stats["log_weight_local"] = ch(d.log_weight_local)
        dims["log_weight_local"] = [DATA_PLATE]
    groups["sample_stats"] = stats
    if prior:
        pt = _prior_draws(model, *args, num_samples=num_samples, **kwargs)
        groups["prior"] = {k: ch(v) for k, (v, _) in pt["latent"].items() if k in names}
        groups["prior_predictive"] = {k: ch(v) for k, (v, _) in pt["observed"].items()}
    idata = arviz().from_dict(**groups, coords=_coords(d), dims=dims)
    idata.sample_stats.attrs["draws"] = (
        f"{d.num_samples} independent draws from the variational guide q (not MCMC), split into "
        f"{c} chains"
    )
    idata.sample_stats.attrs["random_globals"] = int(d.random_globals)
    idata.sample_stats.attrs["khat_tolerance"] = float(d.tolerance)
    if d.tolerance_local is not None:
        idata.sample_stats.attrs["khat_tolerance_local"] = _np(d.tolerance_local.double())
    return idata


def _prior_draws(model: Callable, *args, num_samples: int, **kwargs) -> dict:
    """Vectorized draws of every latent and observed site from the prior (observed sites
    unconditioned): ``{"latent": {name: (values, dims)}, "observed": {...}}``."""
    with torch.no_grad():
        nesting = max(max_plate_nesting(model, lambda *a, **k: None, *args, **kwargs), 0)
        with particle_plate(num_samples, nesting):
            tr = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    out = {"latent": {}, "observed": {}}
    for name, s in tr.nodes.items():
        if s["type"] != "sample" or is_subsample_site(s):
            continue
        t, names = _layout(s, nesting, s["value"], len(s["fn"].event_shape))
        key = "observed" if (s.get("infer") or {}).get("was_observed") else "latent"
        out[key][name] = (t.expand(num_samples, *t.shape[1:]), names)
    return out


def prior_draws(model: Callable, *args, num_samples: int = 1000, **kwargs) -> dict:
    """Prior and prior-predictive draws: ``{site: tensor}`` with the draws first (plates next)."""
    _check_samples(num_samples)
    pt = _prior_draws(model, *args, num_samples=num_samples, **kwargs)
    return {k: v for group in pt.values() for k, (v, _) in group.items()}


# ----------------------------------------------------------------------------- LOO
def _merged(var) -> torch.Tensor:
    """An InferenceData variable's values with chain and draw merged into one axis (float64)."""
    v = torch.as_tensor(var.values, dtype=torch.float64)
    return v.reshape(-1, *v.shape[2:])


def loo(idata: az.InferenceData, var_name: str | None = None) -> ELPDData:
    """PSIS-LOO for draws from a variational approximation (Magnusson et al. 2019).

    ``idata`` comes from :func:`to_inference_data`. The LOO log ratios are
    ``log_weight - log p(y_i | θ)`` (``log_weight_local`` alone when the globals are fixed: the
    posterior factorizes), Pareto-smoothed per datapoint. Returns ArviZ's ``ELPDData`` with the
    fields of ``az.loo(..., pointwise=True)`` (so ``az.compare`` takes it); ``pareto_k`` are the
    k-hats of the LOO ratios, ``loo_i`` the pointwise elpd.
    """
    if "sample_stats" not in idata.groups() or "log_weight" not in idata.sample_stats:
        raise DiagnosticsError(
            "this InferenceData has no sample_stats.log_weight: build it with "
            "pyro_vi.to_inference_data (for MCMC draws use az.loo)"
        )
    if "log_likelihood" not in idata.groups():
        raise DiagnosticsError(
            "no log_likelihood group: LOO needs observations in a plate named 'data'"
        )
    ll = idata.log_likelihood
    names = list(ll.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise DiagnosticsError(f"several observed sites {names}: pick one with var_name=")
        var_name = names[0]
    elif var_name not in names:
        raise DiagnosticsError(f"var_name={var_name!r} is not in the log_likelihood {names}")
    lik = _merged(ll[var_name])  # (S, N)
    stats = idata.sample_stats
    if stats.attrs.get("random_globals", 1):
        lw = _merged(stats["log_weight"])[:, None]
    else:
        lw = _merged(stats["log_weight_local"])
    s, n = lik.shape
    tol = float(stats.attrs.get("khat_tolerance", 0.0))
    if not stats.attrs.get("random_globals", 1) and "khat_tolerance_local" in stats.attrs:
        tol = torch.as_tensor(np.asarray(stats.attrs["khat_tolerance_local"], dtype=float))
    post, _ = psis(lw.expand(s, n).contiguous(), tol)
    ratios, khat = psis(lw - lik, tol)
    loo_i = torch.logsumexp(ratios + lik, 0)
    lppd = float(torch.logsumexp(post + lik, 0).sum())
    elpd = float(loo_i.sum())
    se = math.sqrt(n * float(loo_i.var(unbiased=False)))
    good_k = min(1 - 1 / math.log10(s), 0.7)
    coord = ll[var_name].dims[2] if ll[var_name].ndim > 2 else DATA_PLATE
    coords = {coord: ll[var_name].coords[coord].values} if coord in ll[var_name].coords else {}
    arviz()  # the quiet first import, before its submodules
    import xarray as xr
    from arviz.stats.stats_utils import ELPDData

    loo_i_da = xr.DataArray(_np(loo_i), dims=[coord], coords=coords, name="loo_i")
    k_da = xr.DataArray(_np(khat), dims=[coord], coords=coords, name="pareto_shape")
    warn = bool((khat > good_k).any())
    return ELPDData(
        data=[elpd, se, lppd - elpd, s, n, warn, loo_i_da, k_da, "log", good_k],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
               "pareto_k", "scale", "good_k"],
    )  # fmt: skip
