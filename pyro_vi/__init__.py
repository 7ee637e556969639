"""pyro-vi: latent-variable models and variational inference for Pyro.

The path data take, one subpackage per stage: :mod:`pyro_vi.data` → a model/guide pair
(:mod:`pyro_vi.models`, built from :mod:`~pyro_vi.layers`, :mod:`~pyro_vi.priors`,
:mod:`~pyro_vi.flows`) → :mod:`pyro_vi.infer` (:func:`fit`, :class:`SVI`) →
:mod:`pyro_vi.evaluate` (:func:`elbo`, :func:`log_marginal`) → :mod:`pyro_vi.diagnostics`;
:mod:`pyro_vi.studies` compare inference choices and :mod:`pyro_vi.cli` is the command.

``import pyro_vi`` reaches the whole public API the way ``import pyro`` reaches ``pyro.infer``:
``pyro_vi.fit``, ``pyro_vi.flows.nice(6)``, ``pyro_vi.data.load("digits")``,
``pyro_vi.models.VAE``, ``pyro_vi.diagnostics.loo``. Submodules and the names below load on
first use (PEP 562), so ``import pyro_vi`` and ``pyro-vi --help`` do not pay for torch, Pyro, ArviZ
or matplotlib until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_vi._lazy import attach

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "fit": "infer.training", "FitResult": "infer.training", "SVI": "infer.svi",
    "PerDatapointGuide": "infer.guides", "SemiAmortizedELBO": "infer.guides",
    "fit_local": "infer.guides", "elbo": "evaluate.bounds", "log_marginal": "evaluate.bounds",
    "psis_khat": "diagnostics.importance", "to_inference_data": "diagnostics.importance",
    "loo": "diagnostics.importance", "sbc": "diagnostics.calibration",
    "amortization_gaps": "studies.gaps",
}  # fmt: skip
# the stages of the path (subpackages) and the pieces models are built from
_SUBMODULES = (
    "data", "models", "layers", "priors", "flows", "protocol", "infer", "evaluate", "diagnostics",
    "studies", "cli", "atomic",
)  # fmt: skip
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # what static tools see; at run time these load lazily
    from . import data, diagnostics, evaluate, flows, infer, models, studies  # noqa: F401
    from .diagnostics.calibration import sbc  # noqa: F401
    from .diagnostics.importance import loo, psis_khat, to_inference_data  # noqa: F401
    from .evaluate.bounds import elbo, log_marginal  # noqa: F401
    from .infer.guides import PerDatapointGuide, SemiAmortizedELBO, fit_local  # noqa: F401
    from .infer.svi import SVI  # noqa: F401
    from .infer.training import FitResult, fit  # noqa: F401
    from .studies.gaps import amortization_gaps  # noqa: F401

__getattr__, __dir__ = attach(__name__, _EXPORTS, _SUBMODULES)
