r"""Per-datapoint evaluation of a model/guide pair: the ELBO and importance-sampled log p(x).

For a model whose local latents :math:`z_i` live in the plate ``"data"`` and a guide
:math:`q(z_i \mid x_i)`, each particle :math:`z_i^{(k)} \sim q` gives the log importance weight

.. math:: \log w_i^{(k)} = \log p(x_i, z_i^{(k)}) - \log q(z_i^{(k)} \mid x_i).

:func:`elbo` averages them, :math:`\mathrm{ELBO}_i = \frac1K \sum_k \log w_i^{(k)}` (Jensen's
bound); :func:`log_marginal` averages the weights themselves inside the log (the IWAE-K bound,
Burda et al. 2016), :math:`\log \frac1K \sum_k w_i^{(k)} \le \log p(x_i)`, which is monotone in K
and tends to :math:`\log p(x_i)` as K grows. The weights come from the one log-weight engine,
:mod:`pyro_vi.evaluate.weights`: particles run vectorized in its particle plate, in chunks whose
size bounds memory (a model that breaks under the particle plate is drawn one particle at a time,
with a warning naming the fix), and at equal seeds they are the draws :func:`pyro_vi.psis_khat`
sees. Log densities are unscaled: subsampling scales do not enter per-datapoint
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

import torch

from pyro_vi.evaluate.weights import (
    EvaluationError,
    GlobalLatentsError,
    every_row,
    log_weights,
    max_plate_nesting,
    plate_nesting_of,
    score_chunks,
    summed_log_weights,
    trace_pair,
)

__all__ = ["elbo", "log_marginal", "log_weights", "max_plate_nesting", "EvaluationError",
           "GlobalLatentsError"]  # fmt: skip
__all__ += ["plate_nesting_of", "trace_pair"]  # re-exported from the engine, for pyro_vi.fit


def elbo(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1,
    chunk_size: int | None = None,
    nesting: int | None = None,
    vectorize: bool | None = None,
    **kwargs,
) -> torch.Tensor:
    """Per-datapoint ELBO estimate, shape (N,), averaged over ``num_particles`` particles.

    Differentiable when grad mode is on (a plain estimate: no score-function terms are added for
    non-reparameterizable sites). Global terms enter as ``term / N`` per datapoint, N the data
    set's size: the data plate's full size (``size=`` when the rows are a subsample, ``idx=``,
    ``size=``), else the rows given; so the values of all rows, or of all batches of an epoch,
    sum to the full-data ELBO. Particles are vectorized where the model allows it (else drawn
    one at a time, with a warning naming the fix); ``vectorize=False`` draws one at a time. A model
    that subsamples itself (``pyro.plate(..., subsample_size=B)``) is scored on every row, B rows
    at a time.
    """
    if num_particles < 1:
        raise EvaluationError(f"num_particles={num_particles}: use at least 1")
    return every_row(_elbo, model, guide, args, kwargs, num_particles, chunk_size=chunk_size,
                     nesting=nesting, vectorize=vectorize)  # fmt: skip


def _elbo(model, guide, args, kwargs, num_particles, **options) -> torch.Tensor:
    local, global_, size = summed_log_weights(
        model, guide, args, kwargs, num_particles, stacklevel=6, **options
    )
    return (local + global_ / size) / num_particles


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
    combined with a running log-sum-exp. Runs without gradients. A model that subsamples itself
    (``pyro.plate(..., subsample_size=B)``) is scored on every row, B rows at a time.
    """
    if num_samples < 1:
        raise EvaluationError(f"num_samples={num_samples}: use at least 1")
    with torch.no_grad():
        return every_row(_log_marginal, model, guide, args, kwargs, num_samples,
                         nesting=nesting, chunk_size=chunk_size)  # fmt: skip


def _log_marginal(model, guide, args, kwargs, num_samples, **options) -> torch.Tensor:
    acc = None
    for scored in score_chunks(model, guide, args, kwargs, num_samples, stacklevel=5, **options):
        if bool((scored.log_weight_global != 0).any()):
            raise GlobalLatentsError(
                "log_marginal needs every latent inside the 'data' plate; this model has "
                "global latent sites: use pyro_vi.elbo or PSIS diagnostics for it"
            )
        lse = torch.logsumexp(scored.log_weight_local, 0)
        acc = lse if acc is None else torch.logaddexp(acc, lse)
    return acc - math.log(num_samples)
