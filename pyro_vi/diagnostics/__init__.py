"""Diagnostics of a fitted guide: PSIS k-hat, PSIS-LOO, ArviZ InferenceData, SBC.

:mod:`~pyro_vi.diagnostics.importance` (k-hat, LOO, draws for ArviZ) weighs the guide's draws
with the evaluation engine; :mod:`~pyro_vi.diagnostics.calibration` is simulation-based
calibration. The figures (:mod:`~pyro_vi.diagnostics.plots`, :mod:`~pyro_vi.diagnostics.figures`)
import matplotlib and are imported from their modules, not from here. The names below load on
first use, so importing a figure module does not import the PSIS engine, Pyro or ArviZ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_vi._lazy import attach

_EXPORTS = {
    "psis_khat": "importance", "psis": "importance", "loo": "importance",
    "to_inference_data": "importance", "draw": "importance", "PSISResult": "importance",
    "DiagnosticsError": "importance", "sbc": "calibration", "SBCResult": "calibration",
}  # fmt: skip
__all__ = list(_EXPORTS)
__getattr__, __dir__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time these load lazily
    from .calibration import SBCResult, sbc  # noqa: F401
    from .importance import (  # noqa: F401
        DiagnosticsError,
        PSISResult,
        draw,
        loo,
        psis,
        psis_khat,
        to_inference_data,
    )
