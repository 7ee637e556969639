"""Inference: the stage from a model/guide pair to fitted parameters.

:class:`~pyro_vi.infer.svi.SVI` (Pyro's SVI with captured steps, :mod:`~pyro_vi.infer.capture`)
is the step; :func:`~pyro_vi.infer.training.fit` is a short loop over it, a
:class:`~pyro_vi.infer.schedule.Schedule`, the :mod:`~pyro_vi.infer.callbacks` and
:mod:`~pyro_vi.infer.checkpoint`; :mod:`~pyro_vi.infer.distributed` wraps the step for data
parallelism. :mod:`~pyro_vi.infer.guides` holds per-datapoint and semi-amortized guides and
:mod:`~pyro_vi.infer.em` the closed-form EM and CAVI of Gaussian mixtures.
"""

from pyro_vi.infer.callbacks import EarlyStopping, ProgressBar, Validation
from pyro_vi.infer.guides import PerDatapointGuide, SemiAmortizedELBO, fit_local
from pyro_vi.infer.schedule import Schedule
from pyro_vi.infer.svi import SVI
from pyro_vi.infer.training import FitError, FitResult, fit

__all__ = ["SVI", "fit", "FitResult", "FitError", "Schedule", "Validation", "EarlyStopping",
           "ProgressBar", "PerDatapointGuide", "SemiAmortizedELBO", "fit_local"]  # fmt: skip
