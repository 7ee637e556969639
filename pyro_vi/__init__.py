"""pyro-vi: latent-variable models and variational inference for Pyro.

The path data take: :mod:`pyro_vi.data` → a model/guide pair (:mod:`pyro_vi.models`) →
:func:`fit` → :func:`elbo` / :func:`log_marginal` → diagnostics and plots.

``import pyro_vi`` reaches the whole public API the way ``import pyro`` reaches ``pyro.infer``:
``pyro_vi.fit``, ``pyro_vi.flows.nice(6)``, ``pyro_vi.data.load("digits")``,
``pyro_vi.models.VAE``, ``pyro_vi.diagnostics.loo``. Submodules and the names below load on first
use (PEP 562), so ``import pyro_vi`` and ``pyro-vi --help`` do not pay for torch, Pyro, ArviZ or
matplotlib until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "fit": "training", "FitResult": "training",
    "elbo": "evaluate", "log_marginal": "evaluate",
    "psis_khat": "diagnostics", "to_inference_data": "diagnostics", "loo": "diagnostics",
    "sbc": "calibration", "amortization_gaps": "gaps", "SVI": "svi",
    "PerDatapointGuide": "guides", "SemiAmortizedELBO": "guides", "fit_local": "guides",
}  # fmt: skip
_SUBMODULES = (
    "atomic", "calibration", "capture", "checkpoint", "cli", "corpus", "data", "diagnostic_plots",
    "diagnostics", "distributed", "em", "estimators", "evaluate", "flows", "gaps", "guides",
    "models", "plots", "runs", "svi", "training",
)  # fmt: skip

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # what static tools see; at run time these load lazily
    from . import data, diagnostics, flows, models  # noqa: F401
    from .calibration import sbc  # noqa: F401
    from .diagnostics import loo, psis_khat, to_inference_data  # noqa: F401
    from .evaluate import elbo, log_marginal  # noqa: F401
    from .gaps import amortization_gaps  # noqa: F401
    from .guides import PerDatapointGuide, SemiAmortizedELBO, fit_local  # noqa: F401
    from .svi import SVI  # noqa: F401
    from .training import FitResult, fit  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'pyro_vi' has no attribute {name!r}")
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
