r"""Pyro's DiCE expectation with a data-independent branch, so enumerated ELBOs can be captured.

``TraceEnum_ELBO`` sums a discrete latent out exactly: for every cost term :math:`c` with
marginal probabilities :math:`p` (from the sum-product contraction of the enumerated factors),
``pyro.infer.util.Dice.compute_expectation`` adds

.. math:: \sum_{j:\,p_j > 0} p_j\, c_j ,

and decides with ``if not (p > 0).all()`` whether to select the positive entries first (so that a
:math:`0 \cdot \infty` never meets the sum). That Python ``if`` reads a tensor's value, which a
captured graph cannot replay. :func:`compute_expectation` computes the same sum without the branch,

.. math:: \sum_j \operatorname{where}(p_j > 0, p_j, 0)\, \operatorname{where}(p_j > 0, c_j, 0),

equal in value and gradient to both of Pyro's branches. :func:`pyro_vi.infer.capture.traceable_pyro`
puts it in place of Pyro's method while a step is traced, for the Pyro versions it was written
against (1.9; elsewhere enumerated ELBOs stay eager); eager steps always run Pyro's own.
"""

from __future__ import annotations

import math

import pyro
import torch
from opt_einsum import shared_intermediates
from pyro.ops import packed
from pyro.ops.einsum.adjoint import require_backward
from pyro.ops.rings import MarginalRing

__all__ = ["compute_expectation", "SUPPORTED"]

SUPPORTED = pyro.__version__.startswith("1.9.")
"""Whether this Pyro's ``Dice.compute_expectation`` is the one :func:`compute_expectation`
mirrors."""


def compute_expectation(self, costs: dict) -> torch.Tensor | float:
    """``Dice.compute_expectation`` of Pyro 1.9 (``self`` a ``pyro.infer.util.Dice``, ``costs``
    ordinal -> cost tensors) with the masked sum written without a data-dependent branch."""
    with shared_intermediates() as cache:
        ring = MarginalRing(cache=cache)
        expected_cost = 0.0
        for ordinal, cost_terms in costs.items():
            log_factors = self._get_log_factors(ordinal)
            scale = math.exp(sum(x for x in log_factors if not isinstance(x, torch.Tensor)))
            log_factors = [x for x in log_factors if isinstance(x, torch.Tensor)]
            # a marginal query for every cost term's dimensions
            queries = {frozenset(cost._pyro_dims): None for cost in cost_terms}
            for log_factor in log_factors:
                key = frozenset(log_factor._pyro_dims)
                if queries.get(key, False) is None:
                    queries[key] = log_factor
            for cost in cost_terms:
                key = frozenset(cost._pyro_dims)
                if queries[key] is None:
                    query = torch.zeros_like(cost)
                    query._pyro_dims = cost._pyro_dims
                    log_factors.append(query)
                    queries[key] = query
            sum_dims = set().union(*(x._pyro_dims for x in log_factors)) - ordinal
            for query in queries.values():
                require_backward(query)
            root = ring.sumproduct(log_factors, sum_dims)
            root._pyro_backward()
            probs = {key: query._pyro_backward_result.exp() for key, query in queries.items()}
            for cost in cost_terms:
                key = frozenset(cost._pyro_dims)
                prob = probs[key]
                prob._pyro_dims = queries[key]._pyro_dims
                mask = prob > 0
                mask._pyro_dims = prob._pyro_dims
                cost, prob, mask = packed.broadcast_all(cost, prob, mask)
                prob, cost = prob.where(mask, 0.0), cost.where(mask, 0.0)
                dot = prob * cost if prob.dim() == 0 else torch.tensordot(prob, cost, prob.dim())
                expected_cost = expected_cost + scale * dot
    return expected_cost
