r"""The inference gap of an amortized guide, split into approximation and amortization gaps.

For a trained model :math:`p_\theta` and an amortized guide :math:`q_\phi(z \mid x)` (Cremer, Li &
Duvenaud 2018), per datapoint :math:`x_i`:

.. math::
    \underbrace{\log p(x_i) - \mathcal L[q_\phi(\cdot \mid x_i)]}_{\text{inference gap}}
    = \underbrace{\log p(x_i) - \mathcal L[q^*_i]}_{\text{approximation gap}}
    + \underbrace{\mathcal L[q^*_i] - \mathcal L[q_\phi(\cdot \mid x_i)]}_{\text{amortization gap}}

where :math:`q^*_i` is the best member of the same family (diagonal Gaussian) for :math:`x_i`
alone: a per-datapoint q fitted with the model frozen, started from the encoder's proposal
(:func:`pyro_vi.infer.guides.fit_local`). :math:`\log p(x_i)` is estimated by the IWAE-K bound with
:math:`q^*_i` as the proposal (K = 5000 by default; a lower bound, so the approximation gap is
slightly under-stated). ELBOs are averaged over ``elbo_particles`` fresh particles. Example::

    gaps = amortization_gaps(vae.model, vae, x_test[:500])
    print(gaps["mean"])   # {"amortized_elbo": .., "local_elbo": .., "log_px": .., ...}
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch

from pyro_vi.evaluate.bounds import elbo, log_marginal
from pyro_vi.infer.guides import SemiAmortizedELBO, fit_local

__all__ = ["amortization_gaps"]


def amortization_gaps(
    model: Callable,
    guide_or_vae: Callable,
    x: torch.Tensor,
    *,
    num_samples: int = 5000,
    elbo_particles: int = 100,
    local_steps: int = 500,
    local_lr: float = 1e-2,
    semi_amortized: SemiAmortizedELBO | None = None,
    seed: int = 0,
) -> dict:
    """Per-datapoint and mean amortized ELBO, local ELBO, log p(x) and the gaps (nats).

    Args:
        model: the trained model, called as ``model(x)`` with its local latents in the
            ``"data"`` plate.
        guide_or_vae: the amortized guide, or an object with a ``.guide`` (e.g. a VAE); its
            local sites must be Normal (the starting point of local inference).
        x: datapoints, one per row (e.g. a test subset).
        num_samples: K of the IWAE-K estimate of log p(x).
        elbo_particles: particles per ELBO estimate.
        local_steps, local_lr: Adam steps and rate of the per-datapoint refinement.
        semi_amortized: if given, also the ELBO of the test-time guide "encoder + K refinement
            steps" of this objective (``refined_elbo``) and its gap to the local optimum
            (``semi_amortized_gap``).
        seed: seed of Pyro's RNG for the whole evaluation.

    Returns a dict of tensors of shape (N,) — ``amortized_elbo``, ``local_elbo``, ``log_px``,
    ``approximation_gap``, ``amortization_gap``, ``inference_gap`` (and ``refined_elbo``,
    ``semi_amortized_gap``) — and ``mean``, a dict of their averages as floats.
    """
    guide = getattr(guide_or_vae, "guide", guide_or_vae)
    pyro.set_rng_seed(seed)
    out: dict = {}
    with torch.no_grad():
        out["amortized_elbo"] = elbo(model, guide, x, num_particles=elbo_particles)
    local = fit_local(model, x, init=guide, steps=local_steps, lr=local_lr, seed=seed,
                      name="_gaps_local")  # fmt: skip
    with torch.no_grad():
        out["local_elbo"] = elbo(model, local, x, num_particles=elbo_particles)
        out["log_px"] = log_marginal(model, local, x, num_samples=num_samples)
    if semi_amortized is not None:
        refined = semi_amortized.refined_guide(model, guide, x)
        with torch.no_grad():
            out["refined_elbo"] = elbo(model, refined, x, num_particles=elbo_particles)
        out["semi_amortized_gap"] = out["local_elbo"] - out["refined_elbo"]
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith("_gaps_local.")]:
        del store[key]
    out["approximation_gap"] = out["log_px"] - out["local_elbo"]
    out["amortization_gap"] = out["local_elbo"] - out["amortized_elbo"]
    out["inference_gap"] = out["log_px"] - out["amortized_elbo"]
    out["mean"] = {k: float(v.mean()) for k, v in out.items() if torch.is_tensor(v)}
    return out
