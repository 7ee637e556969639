"""Monte-Carlo standard errors of the figures a run directory reports, for tests' tolerances."""

import math

import torch

from pyro_vi.evaluate import log_weights, max_plate_nesting
from pyro_vi.runs import load_run, model_inputs


def mc_se(run_dir, iwae_k: int | None = None, particles: int = 10, pool: int = 100) -> dict:
    """Monte-Carlo s.e. of a run's reported means, keyed like metrics.json: the ``particles``-
    particle ELBO of each split (sqrt(sum_i var(log w_i) / particles) / N) and, with ``iwae_k``,
    the test set's IWAE-K (delta method: var(w_i / mean w_i) / K per datapoint), from ``pool``
    fresh log weights per datapoint of the saved model."""
    model_obj, data, config = load_run(run_dir, "cpu")
    out = {}
    with torch.no_grad():
        for split in ("train", "valid", "test"):
            args, kw = model_inputs(model_obj, getattr(data, split), config["seed"])
            nesting = max_plate_nesting(model_obj.model, model_obj.guide, *args, **kw)
            lw = log_weights(model_obj.model, model_obj.guide, *args, num_particles=pool,
                             nesting=nesting, **kw)[0]  # fmt: skip
            n = lw.shape[1]
            out[f"{split}_elbo"] = math.sqrt(lw.var(0).sum() / particles) / n
            if iwae_k and split == "test":
                rel_w = (lw - lw.logsumexp(0)).exp() * pool
                out["test_log_px"] = math.sqrt(rel_w.var(0).sum() / iwae_k) / n
    return out
