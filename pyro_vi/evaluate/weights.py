r"""The log-weight engine: S guide draws scored under the model, the one place that does it.

Every evaluation and diagnostic of a model/guide pair rests on the log importance weights of
draws :math:`z^{(s)} \sim q(z \mid x)`, :math:`s = 1..S`,

.. math:: \log w^{(s)} = \log p(x, z^{(s)}) - \log q(z^{(s)} \mid x)
          = g^{(s)} + \sum_i \ell_i^{(s)},

split into a global part :math:`g` (sites outside the plate ``"data"``) and one term per datapoint
:math:`\ell_i` (sites inside it). :func:`pyro_vi.elbo`, :func:`pyro_vi.log_marginal`,
:func:`pyro_vi.psis_khat`, PSIS-LOO and :func:`pyro_vi.to_inference_data` (through
:func:`pyro_vi.diagnostics.importance.draw`) and data-parallel validation
(:meth:`pyro_vi.infer.distributed.DataParallel.mean_elbo`) all take them from :func:`score_chunks`:

- **one particle plate**, :data:`PARTICLES`, at dim ``-(nesting + 1)`` left of the model's
  plates, so S draws run as one vectorized trace per chunk;
- **one chunking rule**, :func:`chunk_sizes`: at most :data:`CHUNK_BUDGET` elements of the
  largest tensor argument times the particles of a chunk;
- **one notion of a subsampled site**, :func:`is_subsample_site` (the sample site a
  ``pyro.plate`` records for its indices); the data plate's site (:func:`data_plate_site`) holds
  the dataset indices of the rows and the full data set's size;
- discrete model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not sample
  (one value per datapoint, plate ``"data"`` only) are summed out exactly, as ``TraceEnum_ELBO``
  does;
- a model that cannot take a leading particle dimension (it indexes from the left) falls back to
  one draw per trace, with a warning that names the fix.

Log densities are unscaled (subsampling scales do not enter) and masks apply. At equal seeds the
callers see the same draws: ``psis_khat``'s raw weights are ``log_marginal``'s and ``elbo``'s.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

__all__ = [
    "GlobalLatentsError",
    "CHUNK_BUDGET",
    "DATA_PLATE",
    "PARTICLES",
    "DiagnosticsError",
    "EvaluationError",
    "LogWeights",
    "Scored",
    "WeightsError",
    "chunk_sizes",
    "data_frame",
    "data_plate_site",
    "is_latent",
    "is_subsample_site",
    "log_weights",
    "max_plate_nesting",
    "particle_plate",
    "plate_nesting_of",
    "score",
    "score_chunks",
    "summed_log_weights",
    "trace_pair",
]

#: The plate of the local latents and observations, one entry per datapoint.
DATA_PLATE = "data"
#: The name of the plate the particles (draws from the guide) run in, left of the model's plates.
PARTICLES = "_pyro_vi_particles"
#: Elements of the largest tensor argument times particles per chunk: bounds a chunk's memory.
CHUNK_BUDGET = 2**22

_FALLBACK = (
    "vectorized draws failed ({error}); drawing one at a time, which is slower. The model or "
    "guide likely indexes or reshapes from the left (z[:, None], expand([len(x), d])), which a "
    "leading draws dimension breaks: index from the right (z[..., None], expand(z.shape + "
    "(d,))) to vectorize, or pass vectorize=False to skip the attempt"
)


class EvaluationError(ValueError):
    """The model/guide pair cannot be evaluated per datapoint; the message says why and how."""


class GlobalLatentsError(EvaluationError):
    """A per-datapoint log p(x) is asked of a model with latent variables outside the data plate
    (a mixture's weights and means, a Bayesian network's weights): it is not defined per point."""


class DiagnosticsError(ValueError):
    """A diagnostic cannot run on this model/guide pair; the message names the problem and fix."""


class WeightsError(EvaluationError, DiagnosticsError):
    """The engine cannot score this model/guide pair (an EvaluationError and a DiagnosticsError,
    so callers of either layer catch it); the message names the problem and the fix."""


class DrawnRows(WeightsError):
    """A plate of the model draws its own subsample of the rows (``pyro.plate(name, N,
    subsample_size=B)`` with no indices given), so one trace scores B random rows, not all N.
    :func:`pyro_vi.elbo` and :func:`pyro_vi.log_marginal` catch it and score every row in
    chunks of B (:func:`every_row`); the diagnostics, which need all rows in one trace, say so."""

    def __init__(self, name: str, size: int, subsample_size: int, device):
        self.name, self.size, self.subsample_size, self.device = name, size, subsample_size, device
        super().__init__(
            f"the model's plate {name!r} draws its own {subsample_size} of {size} rows "
            "(subsample_size), so one trace sees a random subset: give the model idx=None, "
            "size=None and pyro.plate(name, size, subsample=idx), or a subsample_size of None "
            "when evaluating"
        )


def drawn_rows(trace) -> DrawnRows | None:
    """The :class:`DrawnRows` of a plate in ``trace`` that drew its own rows, or None."""
    for name, site in trace.nodes.items():
        fn = site["fn"] if site["type"] == "sample" else None
        if isinstance(fn, _Subsample) and not site["is_observed"]:
            if fn.subsample_size is not None and fn.subsample_size < fn.size:
                return DrawnRows(name, int(fn.size), int(fn.subsample_size), fn.device)
    return None


def every_row(evaluate: Callable[..., torch.Tensor], model: Callable, guide: Callable, *args,
              **kwargs) -> torch.Tensor:  # fmt: skip
    """``evaluate(model, guide, *args, **kwargs)``, a per-row estimate of shape (N,), on every
    row: where a plate of the model draws its own B rows (:class:`DrawnRows`), the plate is
    conditioned on consecutive chunks of B indices (the last wrapped around and cut), in model
    and guide alike, and the chunks are joined."""
    try:
        return evaluate(model, guide, *args, **kwargs)
    except DrawnRows as own:
        parts, n, b = [], own.size, own.subsample_size
        for start in range(0, n, b):
            rows = {own.name: torch.arange(start, start + b, device=own.device) % n}
            m, g = poutine.condition(model, data=rows), poutine.condition(guide, data=rows)
            parts.append(evaluate(m, g, *args, **kwargs)[: n - start])
        return torch.cat(parts)


# ----------------------------------------------------------------------------- sites and plates
def is_subsample_site(site) -> bool:
    """True for the sample site a ``pyro.plate`` records for its indices (not a random variable)."""
    return site["type"] == "sample" and isinstance(site["fn"], _Subsample)


def is_latent(site) -> bool:
    """True for a latent sample site (not observed, not a plate's subsample site)."""
    return site["type"] == "sample" and not site["is_observed"] and not is_subsample_site(site)


def _is_observation(site) -> bool:
    return site["type"] == "sample" and site["is_observed"] and not is_subsample_site(site)


def data_frame(site, name: str = DATA_PLATE):
    """The site's frame of the plate ``name`` (default ``"data"``), or None outside it."""
    return next((f for f in site["cond_indep_stack"] if f.name == name), None)


def data_plate_site(trace):
    """The subsample site of the plate ``"data"`` in ``trace``, or None: its ``value`` holds the
    dataset indices of the rows, its ``fn.size`` the full data set's size."""
    site = trace.nodes.get(DATA_PLATE)
    return site if site is not None and is_subsample_site(site) else None


def trace_pair(model: Callable, guide: Callable, *args, **kwargs) -> tuple:
    """One trace of ``guide`` and one of ``model`` replayed against it, without gradients and
    hidden from enclosing handlers (creates the params)."""
    with torch.no_grad(), poutine.block():
        gt = poutine.trace(guide).get_trace(*args, **kwargs)
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(*args, **kwargs)
    return gt, mt


def plate_nesting_of(gt, mt) -> int:
    """The deepest vectorized plate nesting over the sample sites of two traces."""
    dims = [
        -f.dim
        for tr in (gt, mt)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized and f.dim is not None
    ]
    return max(dims, default=0)


def max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The deepest plate nesting in one trace of ``guide`` and ``model`` (creates the params)."""
    return plate_nesting_of(*trace_pair(model, guide, *args, **kwargs))


def particle_plate(n: int, nesting: int, vectorize: bool = True, device=None):
    """The particle plate :data:`PARTICLES` of ``n`` draws at dim ``-(nesting + 1)``; a no-op
    context for one plain draw (``vectorize=False``)."""
    if not vectorize:
        return nullcontext()
    return pyro.plate(PARTICLES, n, dim=-(nesting + 1), device=device)


def chunk_sizes(total: int, tensors: Sequence, chunk_size: int | None = None) -> list[int]:
    """Particles per chunk for ``total`` particles: ``chunk_size`` each, or (None) as many as
    keep the largest of ``tensors`` times the particles within :data:`CHUNK_BUDGET` elements."""
    if not chunk_size:
        numel = max((t.numel() for t in tensors if torch.is_tensor(t)), default=1)
        chunk_size = max(1, min(total, CHUNK_BUDGET // max(numel, 1)))
    return [min(chunk_size, total - start) for start in range(0, total, chunk_size)]


# ----------------------------------------------------------------------------- log weights
class LogWeights:
    """The log weights of draws, :math:`g^{(s)}`, :math:`\\ell_i^{(s)}` and their total, from the
    terms a class using it holds: ``log_q_global`` and ``log_p_global`` of shape (S,),
    ``log_q_local`` and ``log_p_local`` of shape (S, N) (None without a data plate)."""

    @property
    def has_data_plate(self) -> bool:
        """True when the model has sites in the plate ``"data"`` (per-datapoint terms exist)."""
        return self.log_p_local is not None

    @property
    def log_weight_global(self) -> torch.Tensor:
        """:math:`g^{(s)}`: terms of the sites outside the data plate, shape (S,)."""
        return self.log_p_global - self.log_q_global

    @property
    def log_weight_local(self) -> torch.Tensor:
        """:math:`\\ell_i^{(s)}`: terms of the sites inside the data plate, shape (S, N)."""
        if self.log_p_local is None:
            raise WeightsError(
                "the model has no plate named 'data': put the local latents and observations in "
                "pyro.plate('data', N) (pyro_vi.data.data_plate) for per-datapoint values"
            )
        return self.log_p_local - self.log_q_local

    @property
    def log_weight(self) -> torch.Tensor:
        """:math:`\\log p(y, \\theta) - \\log q(\\theta)` per draw, shape (S,)."""
        lw = self.log_weight_global
        return lw if self.log_p_local is None else lw + self.log_weight_local.sum(-1)


@dataclass
class Scored(LogWeights):
    """``num_particles`` draws from the guide scored under the model: one chunk of the engine.

    The terms have the draws first: ``log_*_global`` shape (n,), ``log_*_local`` (n, N) along
    the plate ``"data"`` (None without it); ``log_p_local`` holds every model term in the plate,
    observations and summed-out enumerated sites included. ``log_lik`` holds the pointwise terms
    of the observed sites in the plate that no enumerated site feeds; ``joint`` (enum axes,
    draws, N) the terms of the ``joint_sites`` that depend on the ``enumerated`` values, before
    they are summed out into ``log_enum_marginal`` (n, N), part of ``log_p_local``.
    ``vectorized=False``: one draw without the particle plate.
    """

    num_particles: int
    nesting: int
    vectorized: bool
    guide_trace: poutine.Trace
    model_trace: poutine.Trace
    guide_sites: dict[str, dict]
    model_latent: dict[str, dict]
    observed: dict[str, dict]
    log_q_global: torch.Tensor
    log_p_global: torch.Tensor
    log_q_local: torch.Tensor | None
    log_p_local: torch.Tensor | None
    enumerated: set[str]
    log_lik: dict[str, torch.Tensor]
    joint: torch.Tensor | None
    joint_sites: list[str]
    log_enum_marginal: torch.Tensor | None

    def _data_site(self):
        return data_plate_site(self.model_trace) or data_plate_site(self.guide_trace)

    @property
    def data_size(self) -> int:
        """The full data set's size: the data plate's ``size`` (``size=`` of a subsample)."""
        site = self._data_site()
        return int(site["fn"].size) if site is not None else self.log_weight_local.shape[-1]

    @property
    def data_index(self) -> torch.Tensor | None:
        """The dataset indices of the rows (the data plate's subsample), or None without it."""
        site = self._data_site()
        return None if site is None else site["value"]


def _log_prob(site) -> torch.Tensor:
    """Unscaled, masked log-density of a sample site."""
    lp = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        lp = lp * site["mask"]
    return lp


def _site_terms(site, lp: torch.Tensor, nesting: int, width: int, n: int | None) -> torch.Tensor:
    """Log-density ``lp`` of a site as (*enum axes, draws, N or 1), other plates summed out;
    ``n`` draws in the particle plate, None for one plain draw."""
    shape = tuple(lp.shape)
    lp = lp.reshape((1,) * (width - lp.dim()) + shape)
    n_enum = width - nesting - 1
    if lp.shape[n_enum] not in (1, n or 1):
        # under the particle plate this may be the vectorization's fault: a plain ValueError,
        # so that score_chunks falls back to one draw at a time, where it is the model's
        raise (WeightsError if n is None else ValueError)(
            f"site {site['name']!r} has a log-density of shape {shape}, batch dims outside any "
            "plate: declare them with pyro.plate (datapoints in a plate named 'data', "
            "pyro_vi.data.data_plate) or move them to the event with .to_event()"
        )
    frame = data_frame(site)
    data_axis = None if frame is None else width + frame.dim
    drop = tuple(a for a in range(n_enum + 1, width) if a != data_axis)
    lp = lp.sum(drop) if drop else lp
    return lp if data_axis is not None else lp.unsqueeze(-1)


def _check_sites(guide_sites: dict, model_latent: dict) -> set[str]:
    """The model's enumerated sites; raises where the guide and model sites do not pair up."""
    enumerated = {k for k in model_latent if k not in guide_sites}
    for name in sorted(enumerated):
        site = model_latent[name]
        if site["infer"].get("enumerate") != "parallel":
            raise WeightsError(
                f"the guide has no site {name!r}, a latent site of the model: add it to the guide "
                "(or mark it infer={'enumerate': 'parallel'} in the model to sum it out)"
            )
        plates = {f.name for f in site["cond_indep_stack"] if f.vectorized} - {PARTICLES}
        if plates != {DATA_PLATE}:
            raise WeightsError(
                f"enumerated site {name!r} lives in plates {sorted(plates)}: per-datapoint "
                "evaluation sums out discrete latents with one value per datapoint (plate "
                "'data' only); sample it in the guide instead"
            )
    extra = sorted(k for k in guide_sites if k not in model_latent)
    if extra:
        raise WeightsError(
            f"guide site {extra[0]!r} is not a latent site of the model: rename or drop it"
        )
    return enumerated


def score(
    model: Callable, guide: Callable, args, kwargs, n: int, nesting: int, vectorize: bool = True
) -> Scored:
    """Draw ``n`` particles from ``guide`` (vectorized in :data:`PARTICLES`, or one plain draw
    with ``vectorize=False``) and score them under ``model``: a :class:`Scored`."""
    device = next((a.device for a in args if torch.is_tensor(a)), None)
    with particle_plate(n, nesting, vectorize, device):
        gt = poutine.trace(guide).get_trace(*args, **kwargs)
        # enum dims left of the particles' dim, also when that plate is absent
        m = poutine.enum(poutine.replay(model, trace=gt), first_available_dim=-(nesting + 2))
        mt = poutine.trace(m).get_trace(*args, **kwargs)
    if (own := drawn_rows(mt)) is not None:
        raise own
    guide_all = {k: s for k, s in gt.nodes.items() if is_latent(s)}
    guide_sites = {k: s for k, s in guide_all.items() if not s["infer"].get("is_auxiliary")}
    model_latent = {k: s for k, s in mt.nodes.items() if is_latent(s)}
    observed = {k: s for k, s in mt.nodes.items() if _is_observation(s)}
    enumerated = _check_sites(guide_sites, model_latent)
    model_sites = {**model_latent, **observed}
    terms = _sum_terms(guide_all, model_sites, enumerated, nesting, n if vectorize else None)
    return Scored(
        num_particles=n, nesting=nesting, vectorized=vectorize, guide_trace=gt, model_trace=mt,
        guide_sites=guide_sites, model_latent=model_latent, observed=observed,
        enumerated=enumerated, **_shaped(terms, n, args),
    )  # fmt: skip


def _sum_terms(guide_all, model_sites, enumerated, nesting: int, n: int | None) -> dict:
    """Sum the sites' log densities into the global, local, likelihood and enumerated terms."""
    lps = {k: _log_prob(s) for k, s in model_sites.items()}
    width = max([nesting + 1] + [lp.dim() for lp in lps.values()])
    out = dict(log_q_global=0.0, log_p_global=0.0, log_q_local=0.0, log_p_local=0.0)
    out.update(log_lik={}, joint=0.0, joint_sites=[])
    sites = [*guide_all.values(), *model_sites.values()]
    out["has_data"] = any(data_frame(s) is not None for s in sites)
    for s in guide_all.values():  # auxiliary sites (AutoNormal's) belong to log q
        key = "log_q_global" if data_frame(s) is None else "log_q_local"
        out[key] = out[key] + _site_terms(s, _log_prob(s), nesting, nesting + 1, n)
    for k, s in model_sites.items():
        lp = _site_terms(s, lps[k], nesting, width, n)
        enum_dependent = any(d != 1 for d in lp.shape[:-2])
        if data_frame(s) is None:
            if enum_dependent:
                raise WeightsError(
                    f"site {k!r} outside the 'data' plate depends on an enumerated site: only "
                    "local discrete latents can be summed out; add them to the guide"
                )
            out["log_p_global"] = out["log_p_global"] + lp.reshape(lp.shape[-2:])
        elif k in enumerated or enum_dependent:
            out["joint"] = out["joint"] + lp
            out["joint_sites"].append(k)
        else:
            out["log_p_local"] = out["log_p_local"] + lp.reshape(lp.shape[-2:])
            if s["is_observed"]:
                out["log_lik"][k] = lp.reshape(lp.shape[-2:])
    return out


def _shaped(terms: dict, n: int, args) -> dict:
    """The summed terms as tensors of shape (n,) and (n, N), the enumerated ones summed out."""
    found = [t for t in (*terms.values(), *terms["log_lik"].values()) if torch.is_tensor(t)]
    ref = next((a for a in args if torch.is_tensor(a)), None)
    like = found[0] if found else torch.zeros((), device=None if ref is None else ref.device)
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in found], like.dtype)
    width = max([1] + [t.shape[-1] for t in found if t.dim() >= 1])

    def full(t, cols: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=dtype, device=like.device)
        return t.reshape(t.shape[-2:] if t.dim() >= 2 else (1, 1)).expand(n, cols)

    joint = terms["joint"] if torch.is_tensor(terms["joint"]) else None
    out = dict(
        log_q_global=full(terms["log_q_global"], 1)[:, 0],
        log_p_global=full(terms["log_p_global"], 1)[:, 0],
        log_q_local=full(terms["log_q_local"], width) if terms["has_data"] else None,
        log_p_local=full(terms["log_p_local"], width) if terms["has_data"] else None,
        log_lik={k: full(v, width) for k, v in terms["log_lik"].items()},
        joint=joint,
        joint_sites=terms["joint_sites"],
        log_enum_marginal=None,
    )
    if joint is not None:  # log sum_z p(x_i, z_i | ...) per draw and datapoint
        marginal = torch.logsumexp(joint.reshape(-1, *joint.shape[-2:]), 0).expand(n, width)
        out["log_enum_marginal"] = marginal
        out["log_p_local"] = out["log_p_local"] + marginal
    return out


def score_chunks(
    model: Callable,
    guide: Callable,
    args,
    kwargs,
    num_particles: int,
    *,
    nesting: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    stacklevel: int = 3,
) -> Iterator[Scored]:
    """Yield the :class:`Scored` chunks of ``num_particles`` draws, in chunks of
    :func:`chunk_sizes`. ``vectorize=None`` tries the particle plate and, where the model breaks
    under it, warns (naming the fix) and draws one at a time; ``False`` draws one at a time."""
    if nesting is None:
        nesting = max_plate_nesting(model, guide, *args, **kwargs)
    counts = chunk_sizes(num_particles, (*args, *kwargs.values()), chunk_size)
    if vectorize is None:
        try:
            first = score(model, guide, args, kwargs, counts[0], nesting)
        except WeightsError:
            raise
        except (RuntimeError, ValueError, IndexError) as e:
            error = f"{type(e).__name__}: {str(e)[:100]}"
            warnings.warn(_FALLBACK.format(error=error), stacklevel=stacklevel)
            vectorize = False
        else:
            yield first
            counts, vectorize = counts[1:], True
    if not vectorize:
        counts = [1] * num_particles
    for n in counts:
        yield score(model, guide, args, kwargs, n, nesting, vectorize)


def log_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1, nesting: int, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint log weights of ``num_particles`` vectorized particles, in one chunk.

    Returns ``(local, global_)``: ``local`` has shape (particles, N) and holds the terms of sites
    inside the ``"data"`` plate; ``global_`` has shape (particles,) and holds the rest.
    """
    scored = score(model, guide, args, kwargs, num_particles, nesting)
    return scored.log_weight_local, scored.log_weight_global


def summed_log_weights(
    model: Callable, guide: Callable, args, kwargs, num_particles: int, **options
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums over ``num_particles`` particles of the local log weights, shape (N,), and of the
    global ones (0-dim), with the data set's full size: what ELBO estimates are made of.
    ``options`` go to :func:`score_chunks`. Differentiable when grad mode is on."""
    local, global_, size = 0.0, 0.0, 1
    options.setdefault("stacklevel", 4)
    for scored in score_chunks(model, guide, args, kwargs, num_particles, **options):
        local = local + scored.log_weight_local.sum(0)
        global_ = global_ + scored.log_weight_global.sum(0)
        size = scored.data_size
    return local, global_, size
