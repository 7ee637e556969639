r"""The networks of the model/guide pairs: plain MLPs, gated MLPs and Gaussian heads.

A gated dense layer (Dauphin et al. 2017; the VampPrior and Exemplar-VAE networks) is

.. math:: h = (W_1 x + b_1) \odot \sigma(W_2 x + b_2),

one matrix product of width :math:`2 b` split in two. :func:`mlp` and :func:`gated_mlp` end in a
plain linear layer; :class:`GaussianHead` turns a network's output into the mean and scale of a
diagonal Gaussian, its log-variance optionally clamped to ``[low, high]`` (Hardtanh)::

    net = gated_mlp([784, 300, 300, 2 * 40])
    loc, scale = GaussianHead(40, log_var_clamp=(-6.0, 2.0))(net(x))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "mlp", "GatedDense", "gated_mlp", "GaussianHead", "check_clamp"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (none after the last)."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GatedDense(nn.Module):
    r""":math:`(W_1 x + b_1) \odot \sigma(W_2 x + b_2)` from ``in_features`` to ``out_features``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


def gated_mlp(sizes: list[int]) -> nn.Sequential:
    """Gated dense layers of the given widths, the last one a plain linear layer."""
    layers: list[nn.Module] = [
        GatedDense(a, b) for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)
    ]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


def check_clamp(log_var_clamp) -> tuple[float, float] | None:
    """``(low, high)`` as floats, or None; a one-line error unless low < high."""
    if log_var_clamp is None:
        return None
    if len(log_var_clamp) != 2 or not float(log_var_clamp[0]) < float(log_var_clamp[1]):
        raise ValueError(
            f"log_var_clamp={tuple(log_var_clamp)}: give two numbers low < high, e.g. (-6, 2)"
        )
    return float(log_var_clamp[0]), float(log_var_clamp[1])


class GaussianHead(nn.Module):
    """Splits ``(..., 2 * dim [+ extra])`` into the mean and scale of a diagonal Gaussian (the
    second block is the log-variance, clamped when ``log_var_clamp`` is given) and the extra."""

    def __init__(self, dim: int, log_var_clamp: tuple[float, float] | None = None, extra: int = 0):
        super().__init__()
        self.dim, self.extra, self.clamp = dim, extra, check_clamp(log_var_clamp)

    def forward(self, out: torch.Tensor):
        loc, log_var, h = out.split([self.dim, self.dim, self.extra], -1)
        if self.clamp is not None:
            log_var = F.hardtanh(log_var, *self.clamp)
        scale = (0.5 * log_var).exp()
        return (loc, scale, h) if self.extra else (loc, scale)
