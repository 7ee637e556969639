"""Studies that compare inference choices on one model: the amortization gap
(:mod:`~pyro_vi.studies.gaps`) and the variance of gradient estimators
(:mod:`~pyro_vi.studies.estimators`). They fit and evaluate, so they sit above both stages.
"""

from pyro_vi.studies.estimators import gradient_stats, score_function, variance_ratio
from pyro_vi.studies.gaps import amortization_gaps

__all__ = ["amortization_gaps", "gradient_stats", "score_function", "variance_ratio"]
