r"""The VampPrior (Tomczak & Welling 2018): the prior a uniform mixture of the encoder's
posteriors at :math:`K` learned pseudo-inputs :math:`u_1, \dots, u_K`,

.. math:: p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k),

as a Pyro ``MixtureSameFamily`` of the encoder's diagonal Gaussians. The pseudo-inputs live in
the data's range [0, 1] (a Hardtanh of free parameters, initialised near ``init_mean``) and are
learned with the rest of the model; the encoder is evaluated at them on every call, so the prior
follows the encoder::

    vamp = VampPrior(x_dim=784, components=500)
    p_z = vamp(lambda u: (loc(u), scale(u)), n=x.shape[0])   # batch shape (n,), event (z_dim,)
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VampPrior"]


class VampPrior(nn.Module):
    """``components`` pseudo-inputs of dimension ``x_dim`` and the mixture they define."""

    def __init__(
        self, x_dim: int, components: int = 500, init_mean: float = 0.05, init_std: float = 0.01
    ):
        super().__init__()
        if int(components) <= 0:
            raise ValueError(f"pseudo_inputs={components}: the VampPrior needs at least one")
        self.weight = nn.Parameter(torch.randn(int(components), x_dim) * init_std + init_mean)

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs, in [0, 1]."""
        return F.hardtanh(self.weight, 0.0, 1.0)

    def forward(
        self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], n: int
    ) -> dist.Distribution:
        """``p(z)`` for ``n`` rows, ``encode(u) -> (loc, scale)`` being q's parameters."""
        loc, scale = encode(self.pseudo_inputs())
        mixture = dist.Categorical(logits=loc.new_zeros(loc.shape[0]))
        return dist.MixtureSameFamily(mixture, dist.Normal(loc, scale).to_event(1)).expand([n])
