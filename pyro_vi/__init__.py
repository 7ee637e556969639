"""pyro-vi: latent-variable models and variational inference for Pyro.

The path data take: :mod:`pyro_vi.data` → a model/guide pair (:mod:`pyro_vi.models`) →
:func:`fit` → :func:`elbo` / :func:`log_marginal` → diagnostics and plots.
"""

from .diagnostics import loo, psis_khat, to_inference_data
from .evaluate import elbo, log_marginal
from .gaps import amortization_gaps
from .guides import PerDatapointGuide, SemiAmortizedELBO, fit_local
from .sbc import sbc
from .training import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "fit", "FitResult", "elbo", "log_marginal", "psis_khat", "to_inference_data", "loo", "sbc",
    "amortization_gaps", "PerDatapointGuide", "SemiAmortizedELBO", "fit_local", "__version__",
]  # fmt: skip
