r"""Coupling normalizing flows (NICE and Real-NVP) as Pyro transforms.

A coupling layer splits :math:`\mathbf{x} = (\mathbf{x}_{1:d}, \mathbf{x}_{d+1:D})`, keeps the
first block and moves the second by a function of the first:

    NICE (additive):   :math:`\mathbf{y}_{d+1:D} = \mathbf{x}_{d+1:D} + m(\mathbf{x}_{1:d})`,
    :math:`\log|\det J| = 0`;

    Real-NVP (affine): :math:`\mathbf{y}_{d+1:D} = \mathbf{x}_{d+1:D} \odot e^{s(\mathbf{x}_{1:d})}
    + t(\mathbf{x}_{1:d})`, :math:`\log|\det J| = \sum_i s_i`,

with :math:`s = b \tanh(\tilde s / b)` a smoothly bounded log-scale (no hard clipping inside the
working range, so gradients never vanish). Stacks of couplings alternate which block is kept with
:class:`Permutation` layers whose index vectors are buffers, so they travel in ``state_dict``
(Pyro's :class:`~pyro.distributions.transforms.Permute` keeps its permutation outside it). NICE
ends in a diagonal :class:`Scaling` layer, :math:`\log|\det J| = \sum_i s_i`, its only source
of volume change.

The builders return one :class:`Flow`, a :class:`~pyro.distributions.TransformModule` that maps
base samples to data and computes each inverse together with its log-Jacobian in one pass::

    flow = realnvp(2)
    pyro.module("flow", flow)
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    d.log_prob(torch.randn(5, 2))  # shape (5,)

Conditional builders return a :class:`ConditionalFlow`; ``.condition(context)`` gives a
:class:`Flow` whose hypernetworks also read the context vector (e.g. encoder features for a
flow posterior q(z | x))::

    cflow = conditional_nice(4, context_dim=3)
    q = dist.TransformedDistribution(base, [cflow.condition(h)])  # h: (..., 3)

References: Dinh, Krueger, Bengio, NICE: Non-linear Independent Components Estimation (2014);
Dinh, Sohl-Dickstein, Bengio, Density estimation using Real NVP (ICLR 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransform, ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import AffineCoupling, BatchNorm, ConditionalAffineCoupling
from pyro.nn import ConditionalDenseNN, DenseNN
from torch import nn
from torch.distributions.utils import _sum_rightmost

__all__ = [
    "AdditiveCoupling",
    "ConditionalAdditiveCoupling",
    "RealNVPCoupling",
    "ConditionalRealNVPCoupling",
    "Scaling",
    "Permutation",
    "Flow",
    "ConditionalFlow",
    "FlowError",
    "nice",
    "realnvp",
    "conditional_nice",
    "conditional_realnvp",
]


class FlowError(ValueError):
    """A flow cannot be built or applied as asked; the message names the problem and the fix."""


def _check_split(dim: int, split_dim: int) -> None:
    if dim < 2:
        raise FlowError(
            f"a coupling layer needs dim >= 2 (got dim={dim}): a 1-D variable has nothing to "
            "condition on; use an elementwise transform instead"
        )
    if not 0 < split_dim < dim:
        raise FlowError(f"split_dim={split_dim} must lie in [1, {dim - 1}] for dim={dim}")


def _zero_last(net: nn.Module) -> nn.Module:
    """Zero the output layer of a hypernetwork, so that its coupling starts as the identity."""
    last = net.layers[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


# ----------------------------------------------------------------------------- NICE coupling


class _VolumePreserving:
    """log|det J| = 0: the Jacobian terms of a volume-preserving transform (mixed in first)."""

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])

    def forward_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call(x), x.new_zeros(x.shape[:-1])

    def inverse_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inverse(y), y.new_zeros(y.shape[:-1])


class AdditiveCoupling(_VolumePreserving, TransformModule):
    r"""The additive coupling layer of NICE (Dinh et al., 2014):

        :math:`\mathbf{y}_{1:d} = \mathbf{x}_{1:d}`, :math:`\;
        \mathbf{y}_{d+1:D} = \mathbf{x}_{d+1:D} + m(\mathbf{x}_{1:d})`,

    volume preserving, :math:`\log|\det \partial\mathbf{y}/\partial\mathbf{x}| = 0`, with the
    inverse :math:`\mathbf{x}_{d+1:D} = \mathbf{y}_{d+1:D} - m(\mathbf{y}_{1:d})`.

    >>> t = AdditiveCoupling(1, DenseNN(1, [32], [1]))
    >>> x = torch.randn(5, 2)
    >>> torch.allclose(t.inv(t(x)), x)
    True

    :param split_dim: :math:`d`, the size of the block that is kept.
    :param hypernet: a network from the first block (width ``split_dim``) to the shift
        :math:`m` (width ``D - split_dim``).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, split_dim: int, hypernet) -> None:
        super().__init__(cache_size=1)
        if split_dim < 1:
            raise FlowError(f"split_dim={split_dim} must be at least 1")
        self.split_dim = split_dim
        self.nn = hypernet

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : self.split_dim], x[..., self.split_dim :]
        return torch.cat([x1, x2 + self.nn(x1)], dim=-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., : self.split_dim], y[..., self.split_dim :]
        return torch.cat([y1, y2 - self.nn(y1)], dim=-1)


class ConditionalAdditiveCoupling(ConditionalTransformModule):
    r"""NICE's additive coupling with a context :math:`\mathbf{c}` fed to the shift network:
    :math:`\mathbf{y}_{d+1:D} = \mathbf{x}_{d+1:D} + m(\mathbf{x}_{1:d}, \mathbf{c})`.

    >>> t = ConditionalAdditiveCoupling(1, ConditionalDenseNN(1, 3, [32], [1]))
    >>> t.condition(torch.randn(3))(torch.randn(5, 2)).shape
    torch.Size([5, 2])

    :param split_dim: :math:`d`, the size of the block that is kept.
    :param hypernet: a network called as ``hypernet(x1, context=c)``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, split_dim: int, hypernet) -> None:
        super().__init__()
        self.split_dim = split_dim
        self.nn = hypernet

    def condition(self, context: torch.Tensor) -> AdditiveCoupling:
        return AdditiveCoupling(self.split_dim, partial(self.nn, context=context))


def additive_coupling(
    dim: int, hidden_dims: Sequence[int] = (64, 64), split_dim: int | None = None
) -> AdditiveCoupling:
    """An :class:`AdditiveCoupling` on ``dim`` features with a ReLU MLP shift network.

    The MLP keeps PyTorch's default initialization (not the identity start of
    :func:`realnvp_coupling`): volume-preserving couplings can only fold space, and starting
    them at the identity measurably slowed NICE on multi-modal data (8 Gaussians, 20 epochs:
    test NLL 3.60 vs 3.33 nats).
    """
    split_dim = dim // 2 if split_dim is None else split_dim
    _check_split(dim, split_dim)
    net = DenseNN(split_dim, list(hidden_dims), [dim - split_dim])
    return AdditiveCoupling(split_dim, net)


def conditional_additive_coupling(
    dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    split_dim: int | None = None,
) -> ConditionalAdditiveCoupling:
    """A :class:`ConditionalAdditiveCoupling`; the shift MLP reads ``[context, x1]``."""
    split_dim = dim // 2 if split_dim is None else split_dim
    _check_split(dim, split_dim)
    net = ConditionalDenseNN(split_dim, context_dim, list(hidden_dims), [dim - split_dim])
    return ConditionalAdditiveCoupling(split_dim, net)


# ------------------------------------------------------------------------- Real-NVP coupling


class _BoundedAffineNet(nn.Module):
    r"""Wraps a hypernetwork returning ``(shift, raw)`` into ``(shift, b * tanh(raw / b))``."""

    def __init__(self, net: nn.Module, bound: float) -> None:
        super().__init__()
        self.net = net
        self.bound = bound

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = self.net(x)
        return shift, self.bound * torch.tanh(raw / self.bound)


class RealNVPCoupling(AffineCoupling):
    r"""Real-NVP's affine coupling: Pyro's
    :class:`~pyro.distributions.transforms.AffineCoupling`,

        :math:`\mathbf{y}_{d+1:D} = \mathbf{x}_{d+1:D} \odot e^{s} + t`,
        :math:`\log|\det J| = \sum_i s_i`,

    whose hypernetwork bounds the log-scale smoothly, :math:`s = b\tanh(\tilde s/b)`, so Pyro's
    hard clip at :math:`\pm b` never binds. It adds :meth:`forward_and_ladj` and
    :meth:`inverse_and_ladj` so that a :class:`Flow` gets both in one network call.

    >>> t = RealNVPCoupling(1, DenseNN(1, [32], [1, 1]))
    >>> x = torch.randn(5, 2)
    >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
    True

    :param split_dim: :math:`d`, the size of the block that is kept.
    :param hypernet: a network returning ``(t, s_raw)``, each of width ``D - split_dim``.
    :param log_scale_bound: :math:`b`.
    """

    def __init__(self, split_dim: int, hypernet, log_scale_bound: float = 3.0) -> None:
        if split_dim < 1:
            raise FlowError(f"split_dim={split_dim} must be at least 1")
        super().__init__(
            split_dim,
            _BoundedAffineNet(hypernet, log_scale_bound),
            log_scale_min_clip=-log_scale_bound,
            log_scale_max_clip=log_scale_bound,
        )

    def forward_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self._call(x)
        return y, self._cached_log_scale.sum(-1)

    def inverse_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._inverse(y)
        return x, self._cached_log_scale.sum(-1)


class ConditionalRealNVPCoupling(ConditionalAffineCoupling):
    r"""Pyro's :class:`~pyro.distributions.transforms.ConditionalAffineCoupling` with the
    bounded log-scale of :class:`RealNVPCoupling`: :math:`(t, s)` are functions of
    :math:`(\mathbf{x}_{1:d}, \mathbf{c})`. ``.condition(c)`` gives a :class:`RealNVPCoupling`.

    >>> t = ConditionalRealNVPCoupling(1, ConditionalDenseNN(1, 3, [32], [1, 1]))
    >>> t.condition(torch.randn(3))(torch.randn(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(self, split_dim: int, hypernet, log_scale_bound: float = 3.0) -> None:
        super().__init__(split_dim, hypernet)
        self.log_scale_bound = log_scale_bound

    def condition(self, context: torch.Tensor) -> RealNVPCoupling:
        net = partial(self.nn, context=context)  # bounded by the RealNVPCoupling
        return RealNVPCoupling(self.split_dim, net, log_scale_bound=self.log_scale_bound)


def realnvp_coupling(
    dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    split_dim: int | None = None,
    log_scale_bound: float = 3.0,
) -> RealNVPCoupling:
    """A :class:`RealNVPCoupling` on ``dim`` features with a ReLU MLP for ``(t, s)``."""
    split_dim = dim // 2 if split_dim is None else split_dim
    _check_split(dim, split_dim)
    k = dim - split_dim
    net = _zero_last(DenseNN(split_dim, list(hidden_dims), [k, k]))
    return RealNVPCoupling(split_dim, net, log_scale_bound)


def conditional_realnvp_coupling(
    dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (64, 64),
    split_dim: int | None = None,
    log_scale_bound: float = 3.0,
) -> ConditionalRealNVPCoupling:
    """A :class:`ConditionalRealNVPCoupling`; the MLP reads ``[context, x1]``."""
    split_dim = dim // 2 if split_dim is None else split_dim
    _check_split(dim, split_dim)
    k = dim - split_dim
    net = _zero_last(ConditionalDenseNN(split_dim, context_dim, list(hidden_dims), [k, k]))
    return ConditionalRealNVPCoupling(split_dim, net, log_scale_bound)


# ----------------------------------------------------------------- permutation and scaling


class Permutation(_VolumePreserving, TransformModule):
    r"""Reorders features, :math:`y_i = x_{\pi(i)}`, :math:`\log|\det J| = 0`.

    Unlike Pyro's :class:`~pyro.distributions.transforms.Permute`, :math:`\pi` and its inverse
    are buffers: they are saved in ``state_dict``, restored by ``load_state_dict`` and moved by
    ``.to(device)``.

    >>> t = Permutation(torch.tensor([2, 0, 1]))
    >>> t(torch.tensor([10.0, 11.0, 12.0]))
    tensor([12., 10., 11.])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__(cache_size=1)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        n = permutation.numel()
        if permutation.dim() != 1 or not torch.equal(
            permutation.sort().values, torch.arange(n, device=permutation.device)
        ):
            raise FlowError(
                "permutation must be a 1-D reordering of 0..n-1, e.g. torch.randperm(n)"
            )
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.permutation)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.index_select(-1, self.inverse_permutation)


class Scaling(TransformModule):
    r"""NICE's diagonal scaling layer, :math:`\mathbf{y} = e^{\mathbf{s}} \odot \mathbf{x}`,
    :math:`\log|\det J| = \sum_i s_i`, with a learned :math:`\mathbf{s}` (zero at start).

    >>> Scaling(3).log_abs_det_jacobian(torch.zeros(4, 3), None)
    tensor([0., 0., 0., 0.], grad_fn=<ExpandBackward0>)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, dim: int) -> None:
        super().__init__(cache_size=1)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp()

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_scale.sum().expand(x.shape[:-1])

    def forward_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call(x), self.log_scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inverse(y), self.log_scale.sum().expand(y.shape[:-1])


# --------------------------------------------------------------------------------- the stack


def _part_and_ladj(
    part, x: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``part`` (or its inverse) applied to ``x`` and its log|det J| summed over features, or
    None for a volume-preserving part (nothing to add)."""
    if getattr(part, "volume_preserving", False):
        return (part._inverse(x) if inverse else part._call(x)), None
    if inverse and hasattr(part, "inverse_and_ladj"):
        return part.inverse_and_ladj(x)
    if not inverse and hasattr(part, "forward_and_ladj"):
        return part.forward_and_ladj(x)
    # Any other Pyro transform (e.g. BatchNorm): the public calls, summed to one value per row.
    if inverse:
        y, x = x, part.inv(x)
    else:
        y = part(x)
    ladj = _sum_rightmost(part.log_abs_det_jacobian(x, y), 1 - part.domain.event_dim)
    return (x if inverse else y), ladj


class Flow(TransformModule):
    r"""A stack of transforms :math:`f = f_K \circ \dots \circ f_1` (base to data) as one
    :class:`~pyro.distributions.TransformModule`:
    :math:`\log|\det J_f(\mathbf{z})| = \sum_k \log|\det J_{f_k}|`.

    Each direction runs once through the stack and keeps its log-Jacobian, which
    :meth:`log_abs_det_jacobian` returns for the same ``(x, y)`` pair, so scoring data with
    :class:`~pyro.distributions.TransformedDistribution` costs one pass. Results are never
    reused across calls (no stale values after a parameter update).

    >>> flow = Flow([Permutation(torch.tensor([1, 0])), additive_coupling(2), Scaling(2)])
    >>> z = torch.randn(4, 2)
    >>> torch.allclose(flow.inv(flow(z)), z, atol=1e-6)
    True

    :param parts: transforms on vectors, in the order base → data.
    :param dim: the number of features, when known (the builders set it).
    :param cache_size: 1 makes ``inv(y)`` of the last ``y`` this flow produced return its ``x``
        without a pass (torch's transform cache); for flows used once after being built, as
        :meth:`ConditionalFlow.condition` gives, where no parameter update can intervene.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, parts: Sequence, dim: int | None = None, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.parts = nn.ModuleList(parts)
        self.dim = dim
        self._memo: tuple | None = None

    def __hash__(self) -> int:
        return super(nn.Module, self).__hash__()

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)

    def _run(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        parts = reversed(self.parts) if inverse else self.parts
        ladj = None
        out = x
        for part in parts:
            out, part_ladj = _part_and_ladj(part, out, inverse)
            if part_ladj is not None:
                ladj = part_ladj if ladj is None else ladj + part_ladj
        if ladj is None:
            ladj = x.new_zeros(x.shape[:-1])
        # the ladj is of the forward map at the base point, whatever the direction we ran
        self._memo = (x, out, ladj) if not inverse else (out, x, ladj)
        return out

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, inverse=False)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._run(y, inverse=True)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._memo is not None and self._memo[0] is x and self._memo[1] is y:
            return self._memo[2]
        self._call(x)
        return self._memo[2]

    def forward_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self._call(x)
        return y, self._memo[2]

    def inverse_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._inverse(y)
        return x, self._memo[2]


class ConditionalFlow(ConditionalTransformModule):
    """A stack of conditional and plain transforms; ``.condition(c)`` gives a :class:`Flow`.

    Plain parts (permutations, scalings) are shared by every conditioned flow; conditional parts
    are conditioned on ``c`` of shape ``(..., context_dim)``, broadcast against the batch. The
    conditioned flow caches its last ``(x, y)``, so a sample is scored without an inverse pass.

    :param parts: transforms in the order base → data.
    :param context_dim: the width the context must have.
    :param dim: the number of features, when known (the builders set it).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, parts: Sequence, context_dim: int, dim: int | None = None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.context_dim = context_dim
        self.dim = dim

    def condition(self, context: torch.Tensor) -> Flow:
        if context.dim() == 0 or context.shape[-1] != self.context_dim:
            width = "a scalar" if context.dim() == 0 else f"width {context.shape[-1]}"
            raise FlowError(
                f"context has {width} but this flow was built with context_dim="
                f"{self.context_dim}: pass a tensor of shape (..., {self.context_dim})"
            )
        parts = [p.condition(context) if isinstance(p, ConditionalTransform) else p for p in self]
        # A conditioned flow lives for one guide call: a sample it drew is scored without the
        # inverse pass (its base point comes from the cache).
        return Flow(parts, self.dim, cache_size=1)

    def __iter__(self):
        return iter(self.parts)


# ---------------------------------------------------------------------------------- builders


def _orders(dim: int, num_layers: int, permutation: str) -> list[torch.Tensor]:
    """The feature order each coupling sees (kept block first), in the original coordinates."""
    if permutation == "alternate":  # checkerboard by index: even features, then odd; swapped
        even, odd = torch.arange(0, dim, 2), torch.arange(1, dim, 2)
        return [torch.cat([even, odd] if k % 2 == 0 else [odd, even]) for k in range(num_layers)]
    if permutation == "random":
        return [torch.randperm(dim) for _ in range(num_layers)]
    raise FlowError(f"permutation={permutation!r} is not known: use 'alternate' or 'random'")


def _stack(dim: int, num_layers: int, permutation: str, make_coupling) -> list:
    """Permutation and coupling layers, base → data; each coupling keeps its first ``split``."""
    if dim < 2:
        _check_split(dim, 1)
    if num_layers < 1:
        raise FlowError(f"num_layers={num_layers} must be at least 1")
    parts, current = [], torch.arange(dim)
    for k, order in enumerate(_orders(dim, num_layers, permutation)):
        # the permutation that maps the current order to the wanted one
        perm = torch.argsort(current)[order]
        if not torch.equal(perm, torch.arange(dim)):
            parts.append(Permutation(perm))
        split = (dim + 1) // 2 if permutation == "alternate" and k % 2 == 0 else dim // 2
        parts.append(make_coupling(split))
        current = order
    return parts


def _hidden(dim: int, hidden_dims: Sequence[int] | None) -> list[int]:
    return [max(64, dim)] * 2 if hidden_dims is None else list(hidden_dims)


def nice(
    dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    permutation: str = "alternate",
    scaling: bool = True,
) -> Flow:
    r"""NICE: ``num_layers`` additive couplings with alternating partitions and a final
    diagonal scaling (Dinh et al., 2014). :math:`\log|\det J| = \sum_i s_i`.

    :param dim: number of features (at least 2).
    :param num_layers: number of coupling layers (NICE used 4).
    :param hidden_dims: hidden widths of each shift MLP; default two layers of ``max(64, dim)``.
    :param permutation: ``"alternate"`` (even/odd features kept in turn) or ``"random"``
        (a fresh random order per layer, drawn from torch's global generator).
    :param scaling: add the diagonal scaling layer (the only volume change of NICE).
    """
    hidden = _hidden(dim, hidden_dims)
    parts = _stack(dim, num_layers, permutation, lambda s: additive_coupling(dim, hidden, s))
    return Flow(([Scaling(dim)] if scaling else []) + parts, dim)


def realnvp(
    dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    permutation: str = "alternate",
    batchnorm: bool = False,
    log_scale_bound: float = 3.0,
) -> Flow:
    r"""Real-NVP: ``num_layers`` affine couplings (Pyro's ``AffineCoupling``, log-scale bounded
    smoothly by ``log_scale_bound``) with alternating partitions (Dinh et al., 2017). Each
    coupling starts as the identity (zero output layer), so training starts from the base.

    :param dim: number of features (at least 2).
    :param num_layers: number of coupling layers.
    :param hidden_dims: hidden widths of each (t, s) MLP; default two layers of ``max(64, dim)``.
    :param permutation: ``"alternate"`` or ``"random"`` (see :func:`nice`).
    :param batchnorm: add Pyro's ``BatchNorm`` after every coupling but the last; it uses batch
        statistics in training mode, so call ``.eval()`` before evaluating or sampling.
    :param log_scale_bound: :math:`b` in :math:`s = b\tanh(\tilde s/b)`.
    """
    hidden = _hidden(dim, hidden_dims)
    parts = _stack(
        dim, num_layers, permutation, lambda s: realnvp_coupling(dim, hidden, s, log_scale_bound)
    )
    if batchnorm:
        parts = _with_batchnorm(parts, dim)
    return Flow(parts, dim)


def _with_batchnorm(parts: list, dim: int) -> list:
    out = []
    couplings = [i for i, p in enumerate(parts) if not isinstance(p, Permutation)]
    for i, p in enumerate(parts):
        out.append(p)
        if i in couplings[:-1]:
            out.append(BatchNorm(dim))
    return out


def conditional_nice(
    dim: int,
    context_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    permutation: str = "alternate",
    scaling: bool = True,
) -> ConditionalFlow:
    """:func:`nice` whose shift networks also read a context vector of width ``context_dim``.

    ``conditional_nice(d, c).condition(h)`` is a :class:`Flow`; the scaling is unconditional.
    """
    hidden = _hidden(dim, hidden_dims)
    parts = _stack(
        dim,
        num_layers,
        permutation,
        lambda s: conditional_additive_coupling(dim, context_dim, hidden, s),
    )
    return ConditionalFlow(([Scaling(dim)] if scaling else []) + parts, context_dim, dim)


def conditional_realnvp(
    dim: int,
    context_dim: int,
    num_layers: int = 4,
    hidden_dims: Sequence[int] | None = None,
    permutation: str = "alternate",
    log_scale_bound: float = 3.0,
) -> ConditionalFlow:
    """:func:`realnvp` whose (t, s) networks also read a context vector (Pyro's
    ``ConditionalAffineCoupling``); ``.condition(h)`` is a :class:`Flow`."""
    hidden = _hidden(dim, hidden_dims)
    parts = _stack(
        dim,
        num_layers,
        permutation,
        lambda s: conditional_realnvp_coupling(dim, context_dim, hidden, s, log_scale_bound),
    )
    return ConditionalFlow(parts, context_dim, dim)
