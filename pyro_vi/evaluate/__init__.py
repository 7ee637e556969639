"""Evaluation: bounds on log p(x) of a fitted pair, from one log-weight engine.

:mod:`~pyro_vi.evaluate.weights` computes log importance weights log p(x, z) - log q(z | x) per
datapoint and particle (one particle plate, one chunking rule, one notion of a subsampled site);
:mod:`~pyro_vi.evaluate.bounds` turns them into :func:`elbo` and the IWAE :func:`log_marginal`.
The diagnostics (PSIS, LOO, InferenceData) and the fit loop's validation use the same engine.
"""

from pyro_vi.evaluate.bounds import EvaluationError, elbo, log_marginal, log_weights
from pyro_vi.evaluate.weights import LogWeights

__all__ = ["elbo", "log_marginal", "log_weights", "LogWeights", "EvaluationError"]
