r"""Density estimation with a normalizing flow, trained by maximum likelihood through ``fit``.

Model: :math:`\mathbf x = f(\mathbf z)`, :math:`\mathbf z \sim p_Z` (standard Normal or standard
Logistic), :math:`f` a flow from :mod:`pyro_vi.flows`, so

.. math:: \log p(\mathbf x) = \log p_Z(f^{-1}(\mathbf x)) - \log|\det J_f(f^{-1}(\mathbf x))|.

The pair is a model with one observed site ``"x"`` in the plate ``"data"`` and an empty guide,
so the ELBO that :func:`pyro_vi.fit` maximizes is the log-likelihood itself::

    density = FlowDensity(realnvp(2, num_layers=8, hidden_dims=(64, 64)))
    fit(density.model, density.guide, load("moons"), epochs=50)
    nll = -density.log_prob(x_test).mean()

Images (``images=True``) are 8-bit pixels :math:`k \in \{0..255\}^D`, given as ``x = k / 255``.
Training sees uniformly dequantized values :math:`v = k + u`, :math:`u \sim U[0,1)^D`, in
:math:`[0, 256)^D`, mapped to the flow's space by the logit transform

.. math:: y = \operatorname{logit}(p), \qquad p = \alpha + (1 - 2\alpha)\, v / 256 .

The preprocessing is part of the distribution (a sigmoid and an affine transform after the
flow), so the density scored is that of :math:`v` and the Jacobian is exact:

.. math:: \log p_V(\mathbf v) = \log p_Y(\mathbf y)
          + \sum_{d=1}^D \log\frac{1 - 2\alpha}{256\, p_d (1 - p_d)} .

Because the bins :math:`k + [0,1)^D` have unit volume, :math:`P(\mathbf k) = \int p_V(\mathbf k +
\mathbf u)\,d\mathbf u` is a distribution over the discrete images and, by Jensen,
:math:`\log P(\mathbf k) \ge \mathbb E_u \log p_V(\mathbf k + \mathbf u)`. The bits per dimension
reported by :meth:`FlowDensity.bits_per_dim` are this bound's

.. math:: \text{bits/dim} = \frac{-\mathbb E_u \log p_V(\mathbf k + \mathbf u)}{D \ln 2}
          = \frac{\mathbb E_u\big[-\log p_Y(\mathbf y)
            - \sum_d \log\frac{1-2\alpha}{p_d(1-p_d)}\big]}{D \ln 2} + 8 ,

an upper bound on the discrete model's code length (the :math:`+8 = \log_2 256` converts a
density on :math:`[0,1)^D` to one on :math:`[0,256)^D`). The model draws :math:`u` with torch's
generator at every call, so the training objective is this bound's unbiased estimate.

Two-dimensional test sets (two moons are ``pyro_vi.data.load("moons")``) come from
:func:`toy_2d`. :class:`NICEDensity` and :class:`RealNVPDensity` are the CLI's models ``nice`` and
``realnvp`` (their ``config`` rebuilds the flow)::

    pyro-vi fit realnvp --dataset moons --num-layers 8 --hidden 64 64 --epochs 50 --out runs/rnvp
    pyro-vi fit nice --dataset fashion-mnist --binarize none --out runs/nice
    pyro-vi sample runs/rnvp -n 1000
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import AffineTransform, SigmoidTransform
from torch import nn

from pyro_vi.data import Dataset, data_plate
from pyro_vi.flows import nice, realnvp
from pyro_vi.protocol import Images, Item, Model, PositiveInt, Scatter, register

__all__ = ["FlowDensity", "NICEDensity", "RealNVPDensity", "FlowDensityError", "toy_2d", "TOY_2D"]

TOY_2D = ("moons", "8gaussians", "checkerboard")


class FlowDensityError(ValueError):
    """Data a flow density cannot take; the message names the problem and the fix."""


class FlowDensity(nn.Module):
    """A flow density :math:`p(x)` as a Pyro model with an empty guide; see the module docstring.

    :param flow: a :class:`~pyro.distributions.TransformModule` on vectors (base → data), e.g.
        :func:`pyro_vi.flows.realnvp`.
    :param dim: number of features; read from the flow's first part when it has one.
    :param base: ``"normal"`` or ``"logistic"`` (NICE's prior), standard and independent.
    :param images: treat data as 8-bit images in [0, 1]: dequantize and logit-transform.
    :param alpha: :math:`\\alpha` of the logit transform (Real-NVP used 0.05).
    :param name: the name under which ``pyro.module`` registers the parameters.
    """

    def __init__(
        self,
        flow: TransformModule,
        dim: int | None = None,
        base: str = "normal",
        images: bool = False,
        alpha: float = 0.05,
        name: str = "flow_density",
    ) -> None:
        super().__init__()
        if base not in ("normal", "logistic"):
            raise FlowDensityError(f"base={base!r} is not known: use 'normal' or 'logistic'")
        if not 0.0 <= alpha < 0.5:
            raise FlowDensityError(f"alpha={alpha} must lie in [0, 0.5), e.g. 0.05")
        self.flow = flow
        self.dim = dim if dim is not None else _flow_dim(flow)
        self.base, self.images, self.alpha, self.name = base, images, alpha, name
        self.config = dict(dim=self.dim, base=base, images=images, alpha=alpha)

    @classmethod
    def from_data(
        cls,
        data,
        flow: str = "realnvp",
        num_layers: int = 4,
        hidden_dims: tuple[int, ...] | None = None,
        base: str = "normal",
        alpha: float = 0.05,
        **_,
    ) -> FlowDensity:
        """A NICE or Real-NVP density for ``data`` (a Dataset); images if it has an image shape."""
        builders = {"nice": nice, "realnvp": realnvp}
        if flow not in builders:
            raise FlowDensityError(f"flow={flow!r} is not known: use 'nice' or 'realnvp'")
        f = builders[flow](data.dim, num_layers=num_layers, hidden_dims=hidden_dims)
        return cls(f, data.dim, base=base, images=len(data.shape) > 1, alpha=alpha)

    # ------------------------------------------------------------------ distributions

    def base_dist(self, like: torch.Tensor) -> dist.Distribution:
        """:math:`p_Z` on ``like``'s device and dtype, event dimension 1."""
        zero, one = like.new_zeros(self.dim), like.new_ones(self.dim)
        d = dist.Normal(zero, one) if self.base == "normal" else dist.Logistic(zero, one)
        return d.to_event(1)

    def distribution(self, like: torch.Tensor) -> dist.TransformedDistribution:
        """The density of the data: of :math:`x` itself, or of dequantized pixels :math:`v`."""
        transforms = [self.flow]
        if self.images:
            a, levels = self.alpha, 256.0
            transforms += [
                SigmoidTransform(),
                AffineTransform(-levels * a / (1 - 2 * a), levels / (1 - 2 * a), event_dim=1),
            ]
        return dist.TransformedDistribution(self.base_dist(like), transforms)

    # ------------------------------------------------------------------ model / guide

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take."""
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise FlowDensityError(
                f"data of shape {tuple(x.shape)} do not fit this flow (dim={self.dim}): "
                "flatten rows to (N, dim) or build the flow for this width"
            )
        if self.images and bool(((x < 0) | (x > 1)).any()):
            raise FlowDensityError(
                f"image values lie in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside "
                "[0, 1]: pass pixels / 255 before dequantization"
            )

    def dequantize(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """:math:`v = k + u` with :math:`k = \\mathrm{round}(255 x)`, :math:`u \\sim U[0,1)^D`."""
        self.check(x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.round(x * 255.0) + u

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        obs = self.dequantize(x) if self.images else x
        with data_plate(x, idx, size):
            pyro.sample("x", self.distribution(x), obs=obs)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """Empty: the model has no latent variables."""

    # ------------------------------------------------------------------ evaluation

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row log density: of x, or (images) of one dequantized draw v (in nats)."""
        obs = self.dequantize(x, generator) if self.images else x
        if not self.images:
            self.check(x)
        return self.distribution(x).log_prob(obs)

    @torch.no_grad()
    def bits_per_dim(
        self, x: torch.Tensor, num_samples: int = 1, seed: int = 0, batch_size: int = 1000
    ) -> torch.Tensor:
        """Per-image bits/dim of 8-bit images ``x`` (values k/255), averaged over
        ``num_samples`` dequantization draws (see the module docstring)."""
        if not self.images:
            raise FlowDensityError("bits_per_dim is for images: build with images=True")
        g = torch.Generator(device=x.device).manual_seed(seed)
        out = []
        for xb in x.split(batch_size):
            lp = torch.stack([self.log_prob(xb, g) for _ in range(num_samples)]).mean(0)
            out.append(-lp / (self.dim * math.log(2.0)))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws; images come back as pixel values k/255 (floor of v, clipped)."""
        ref = next(self.parameters(), None)
        like = torch.zeros(()) if ref is None else ref.new_zeros(())
        x = self.distribution(like).sample((n,))
        if self.images:
            x = torch.floor(x).clamp(0, 255) / 255.0
        return x


class _BuiltFlowDensity(FlowDensity, Model):
    """A :class:`FlowDensity` whose flow is built from options, so that ``config`` rebuilds it."""

    builder: ClassVar = staticmethod(realnvp)

    def __init__(
        self,
        dim: int,
        num_layers: int = 4,
        hidden: tuple[int, ...] | list[int] | None = None,
        base: str = "normal",
        images: bool = False,
        alpha: float = 0.05,
        name: str = "flow_density",
    ) -> None:
        hidden = None if hidden is None else tuple(hidden)
        flow = type(self).builder(dim, num_layers=num_layers, hidden_dims=hidden)
        super().__init__(flow, dim, base=base, images=images, alpha=alpha, name=name)
        self.config = dict(dim=dim, num_layers=num_layers, hidden=hidden and list(hidden),
                           base=base, images=images, alpha=alpha, name=name)  # fmt: skip

    @classmethod
    def _for(cls, data: Dataset, num_layers, hidden, base, alpha) -> _BuiltFlowDensity:
        if data.train.binarize is not None:
            raise FlowDensityError(
                f"{data.name} is binarized ({data.train.binarize}): a flow density models the "
                "8-bit pixels, pass --binarize none"
            )
        return cls(data.dim, num_layers, hidden, base, len(data.shape) > 1, alpha)

    @torch.no_grad()
    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``density``: the test rows' mean log-density (images: and bits/dim of one
        dequantization draw); ``samples``: draws from the flow."""
        x = data.test.x
        g = torch.Generator(device=x.device).manual_seed(seed)
        lp = torch.cat([self.log_prob(xb, g) for xb in x.split(1000)])
        out: dict = {"test_log_density": float(lp.mean()), "rows": len(x)}
        if self.images:
            out["test_bits_per_dim"] = float(self.bits_per_dim(x, seed=seed).mean())
        return {"density": out, "samples": self.samples(64 if self.images else 1000, data)}

    def samples(self, n: int, data: Dataset) -> Item:
        """``n`` draws: an image grid for images, else a scatter."""
        x = self.sample(n)
        if self.images:
            return Images(x, tuple(data.shape))
        return Scatter(x, title=f"{n} draws from the flow")


@register("nice", dataset="moons")
class NICEDensity(_BuiltFlowDensity):
    """NICE density: additive couplings and a diagonal scaling on a logistic base (Dinh, Krueger
    and Bengio 2014); see the module."""

    builder = staticmethod(nice)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        num_layers: PositiveInt = 4,
        hidden: tuple[PositiveInt, ...] | None = None,
        base: Literal["normal", "logistic"] = "logistic",
        alpha: float = 0.05,
    ) -> NICEDensity:
        """A NICE density for ``data``; 8-bit images (values k/255) if it has an image shape.

        :param num_layers: coupling layers of the flow
        :param hidden: hidden widths of each coupling's network (default: two of max(64, D))
        :param base: the flow's base distribution, standard and independent
        :param alpha: images: the logit transform's alpha, in [0, 0.5)
        """
        return cls._for(data, num_layers, hidden, base, alpha)


@register("realnvp", dataset="moons")
class RealNVPDensity(_BuiltFlowDensity):
    """Real-NVP density: affine couplings on a normal base (Dinh, Sohl-Dickstein and Bengio 2017);
    see the module."""

    builder = staticmethod(realnvp)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        num_layers: PositiveInt = 4,
        hidden: tuple[PositiveInt, ...] | None = None,
        base: Literal["normal", "logistic"] = "normal",
        alpha: float = 0.05,
    ) -> RealNVPDensity:
        """A Real-NVP density for ``data``; 8-bit images (values k/255) if it has an image shape.

        :param num_layers: coupling layers of the flow
        :param hidden: hidden widths of each coupling's network (default: two of max(64, D))
        :param base: the flow's base distribution, standard and independent
        :param alpha: images: the logit transform's alpha, in [0, 0.5)
        """
        return cls._for(data, num_layers, hidden, base, alpha)


def _flow_dim(flow) -> int:
    dim = getattr(flow, "dim", None)
    if not isinstance(dim, int):
        raise FlowDensityError("the flow does not state its width: pass dim= to FlowDensity")
    return dim


def toy_2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of a 2-D density-estimation benchmark (the FFJORD conventions).

    ``"8gaussians"``: eight Gaussians (std 0.5) on a circle of radius 4, scaled by 1/sqrt(2);
    ``"checkerboard"``: uniform on the dark squares of a 4x4 board on [-4, 4]^2;
    ``"moons"``: two moons (scikit-learn, noise 0.05), the set of ``pyro_vi.data.load``.
    """
    rng = np.random.default_rng(seed)
    if name == "8gaussians":
        angles = np.arange(8) * np.pi / 4
        centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
        x = (centers[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, 2))) / np.sqrt(2)
    elif name == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        x = 2.0 * np.stack([x1, x2], 1)
    elif name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05, random_state=seed)
    else:
        raise FlowDensityError(f"unknown 2-D set {name!r}: choose one of {', '.join(TOY_2D)}")
    return torch.as_tensor(x, dtype=torch.float32)
