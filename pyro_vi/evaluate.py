r"""Per-datapoint evaluation of a model/guide pair: the ELBO and importance-sampled log p(x).

For a model whose local latents :math:`z_i` live in the plate ``"data"`` and a guide
:math:`q(z_i \mid x_i)`, each particle :math:`z_i^{(k)} \sim q` gives the log importance weight

.. math:: \log w_i^{(k)} = \log p(x_i, z_i^{(k)}) - \log q(z_i^{(k)} \mid x_i).

:func:`elbo` averages them, :math:`\mathrm{ELBO}_i = \frac1K \sum_k \log w_i^{(k)}` (Jensen's
bound); :func:`log_marginal` averages the weights themselves inside the log (the IWAE-K bound,
Burda et al. 2016), :math:`\log \frac1K \sum_k w_i^{(k)} \le \log p(x_i)`, which is monotone in K
and tends to :math:`\log p(x_i)` as K grows. Particles run vectorized in an outer plate, in chunks
whose size bounds memory. Log densities are unscaled: subsampling scales do not enter per-datapoint
values. Sites outside the ``"data"`` plate (global latents) add ``term / N`` to every datapoint in
:func:`elbo`, so the vector sums to the full-data ELBO; :func:`log_marginal` needs all latents in
the plate. Discrete model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not
sample (one value per datapoint, in the ``"data"`` plate) are summed out exactly, as
``TraceEnum_ELBO`` does: :math:`\log w_i` then holds :math:`\log \sum_{z_i} p(x_i, z_i, \dots)`.
Example::

    lw = log_marginal(vae.model, vae.guide, x_test, num_samples=5000)   # shape (N,)
    print(lw.mean(), elbo(vae.model, vae.guide, x_test).mean())
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine

__all__ = ["elbo", "log_marginal", "log_weights", "max_plate_nesting", "EvaluationError"]

_PARTICLES = "_pyro_vi_particles"


class EvaluationError(ValueError):
    """The model/guide pair cannot be evaluated per datapoint; the message says why and how."""


def max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The deepest plate nesting in one trace of ``guide`` and ``model`` (creates the params)."""
    return plate_nesting_of(*trace_pair(model, guide, *args, **kwargs))


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


def log_weights(
    model: Callable, guide: Callable, *args, num_particles: int = 1, nesting: int, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint log weights of ``num_particles`` vectorized particles.

    Returns ``(local, global_)``: ``local`` has shape (particles, N) and holds the terms of sites
    inside the ``"data"`` plate; ``global_`` has shape (particles,) and holds the rest.
    """
    dim = -(nesting + 1)
    device = next((a.device for a in args if torch.is_tensor(a)), None)
    with pyro.plate(_PARTICLES, num_particles, dim=dim, device=device):
        gt = poutine.trace(guide).get_trace(*args, **kwargs)
        # model sites marked for parallel enumeration that the guide does not sample are summed
        # out exactly, as TraceEnum_ELBO does (dims left of the particle plate)
        enum_model = poutine.enum(poutine.replay(model, trace=gt), first_available_dim=dim - 1)
        mt = poutine.trace(enum_model).get_trace(*args, **kwargs)
    enumerated = _enumerated_dims(mt, nesting)
    local, global_, joint = 0.0, 0.0, 0.0
    for sign, tr in ((1.0, mt), (-1.0, gt)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or name == _PARTICLES:
                continue
            lp = site["fn"].log_prob(site["value"])
            if site.get("mask") is not None:
                lp = lp * site["mask"]
            width = nesting + 1 + enumerated
            lp = lp.reshape((1,) * (width - lp.dim()) + lp.shape)
            frame = next((f for f in site["cond_indep_stack"] if f.name == "data"), None)
            keep = list(range(enumerated)) + [width + dim]
            keep += [] if frame is None else [width + frame.dim]
            drop = [d for d in range(lp.dim()) if d not in keep]
            lp = lp.sum(drop, keepdim=True) if drop else lp
            if enumerated and any(lp.shape[d] > 1 for d in range(enumerated)):
                joint = joint + lp  # depends on an enumerated value: summed out below
                continue
            lp = lp.reshape(lp.shape[enumerated:]).squeeze(tuple(range(1, nesting + 1)))
            if frame is None:
                global_ = global_ + sign * lp.reshape(-1)
            else:
                local = local + sign * lp.reshape(lp.shape[0], -1)
    if torch.is_tensor(joint):  # log sum_z p(x_i, z_i | ...) per particle and datapoint
        joint = torch.logsumexp(joint.reshape(-1, *joint.shape[enumerated:]), 0)
        local = local + joint.reshape(joint.shape[0], -1)
    if not torch.is_tensor(local):
        raise EvaluationError(
            "no sample site lives in a plate named 'data': put the local latents and the "
            "observations in pyro.plate('data', N) (see pyro_vi.data.data_plate)"
        )
    global_ = global_ if torch.is_tensor(global_) else local.new_zeros(local.shape[0])
    return local.expand(num_particles, -1), global_.expand(num_particles)


def _enumerated_dims(trace, nesting: int) -> int:
    """How many enumeration dims the model trace has; each enumerated site must be local to the
    ``"data"`` plate (one discrete value per datapoint and particle), the case summed out here."""
    count = 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_enumerate_dim") is None:
            continue
        plates = {f.name for f in site["cond_indep_stack"] if f.vectorized} - {_PARTICLES}
        if plates != {"data"}:
            raise EvaluationError(
                f"enumerated site {name!r} lives in plates {sorted(plates)}: per-datapoint "
                "evaluation sums out discrete latents with one value per datapoint (plate "
                "'data' only); sample it in the guide instead"
            )
        count += 1
    return count


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield min(size, total - start)


def _auto_chunk(args, total: int, budget: int = 2**23) -> int:
    numel = max((a.numel() for a in args if torch.is_tensor(a)), default=1)
    return max(1, min(total, budget // max(numel, 1)))


def elbo(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1,
    chunk_size: int | None = None,
    nesting: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Per-datapoint ELBO estimate, shape (N,), averaged over ``num_particles`` particles.

    Differentiable when grad mode is on (a plain estimate: no score-function terms are added for
    non-reparameterizable sites). Global terms enter as ``term / N`` per datapoint, N the data
    set's size: ``size=`` when the rows are a subsample (``idx=``, ``size=``), else the rows
    given; so the values of all rows, or of all batches of an epoch, sum to the full-data ELBO.
    """
    if num_particles < 1:
        raise EvaluationError(f"num_particles={num_particles}: use at least 1")
    if nesting is None:
        nesting = max_plate_nesting(model, guide, *args, **kwargs)
    chunk = chunk_size or _auto_chunk(args, num_particles)
    total = 0.0
    for n in _chunks(num_particles, chunk):
        local, global_ = log_weights(
            model, guide, *args, num_particles=n, nesting=nesting, **kwargs
        )
        n_data = kwargs.get("size") or local.shape[1]
        total = total + (local + global_[:, None] / n_data).sum(0)
    return total / num_particles


def log_marginal(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    nesting: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Per-datapoint importance-sampled :math:`\\log p(x_i)` (IWAE-K bound), shape (N,).

    Particles are drawn from the guide in chunks of ``chunk_size`` (automatic: bounded memory) and
    combined with a running log-sum-exp. Runs without gradients.
    """
    if num_samples < 1:
        raise EvaluationError(f"num_samples={num_samples}: use at least 1")
    with torch.no_grad():
        if nesting is None:
            nesting = max_plate_nesting(model, guide, *args, **kwargs)
        chunk = chunk_size or _auto_chunk(args, num_samples)
        acc = None
        for n in _chunks(num_samples, chunk):
            local, global_ = log_weights(
                model, guide, *args, num_particles=n, nesting=nesting, **kwargs
            )
            if bool((global_ != 0).any()):
                raise EvaluationError(
                    "log_marginal needs every latent inside the 'data' plate; this model has "
                    "global latent sites: use pyro_vi.elbo or PSIS diagnostics for it"
                )
            lse = torch.logsumexp(local, 0)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        return acc - math.log(num_samples)
