r"""The two-stochastic-layer VAE of the VampPrior paper (Tomczak & Welling 2018) as a Pyro pair.

Model: :math:`z_2 \sim p(z_2)` (:math:`\mathcal N(0, I)` or the VampPrior),
:math:`z_1 \mid z_2 \sim \mathcal N(\mu(z_2), \mathrm{diag}\,\sigma^2(z_2))`,
:math:`x \mid z_1, z_2 \sim \mathrm{Bernoulli}(\sigma(f(z_1, z_2)))`. Guide, top down:
:math:`q(z_2 \mid x)\, q(z_1 \mid x, z_2)`, both diagonal Gaussians. Every network is made of
gated dense layers of width ``hidden``; two inputs enter through one gated layer each and are
joined by a third. The ELBO is
:math:`\mathbb E_q[\log p(x \mid z_1, z_2) + \log p(z_1 \mid z_2) + \log p(z_2)
- \log q(z_1 \mid x, z_2) - \log q(z_2 \mid x)]`::

    hvae = HVAE(784, z_dim=40, hidden=300, prior="vampprior")
    fit(hvae.model, hvae.guide, load("fashion-mnist", binarize="dynamic"), anneal_epochs=100)

A latent code is ``[z1, z2]`` and the decoder takes it whole, so the VAE's likelihood,
``decode`` and reports work unchanged.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vi.data import Dataset, data_plate
from pyro_vi.layers import GatedDense, GaussianHead, gated_mlp
from pyro_vi.priors import VampPrior
from pyro_vi.protocol import PositiveInt, register

from .vae import VAE, PriorKind, check_prior


class Joint(nn.Module):
    """``f([a, b])`` of a concatenated input: a gated layer for each part, concatenated, a gated
    layer, a linear one."""

    def __init__(self, a: int, b: int, hidden: int, out: int):
        super().__init__()
        self.sizes = [a, b]
        self.a, self.b = GatedDense(a, hidden), GatedDense(b, hidden)
        self.joint = gated_mlp([2 * hidden, hidden, out])

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        a, b = ab.split(self.sizes, -1)
        return self.joint(torch.cat([self.a(a), self.b(b)], -1))


@register("hvae")
class HVAE(VAE):
    """Two-stochastic-layer VAE, z2 -> z1 -> x with q(z2 | x) q(z1 | x, z2); see the module."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 40,
        hidden: int = 300,
        likelihood: str = "bernoulli",
        log_var_clamp: tuple[float, float] | None = (-6.0, 2.0),
        prior: str = "gaussian",
        pseudo_inputs: int = 500,
        name: str = "hvae",
    ):
        nn.Module.__init__(self)
        check_prior(prior)
        if likelihood not in ("bernoulli", "normal"):
            raise ValueError(f"likelihood {likelihood!r}: use 'bernoulli' or 'normal'")
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=hidden, likelihood=likelihood,
                           log_var_clamp=log_var_clamp and list(log_var_clamp), prior=prior,
                           pseudo_inputs=pseudo_inputs, name=name)  # fmt: skip
        self.name, self.x_dim, self.z_dim, self.likelihood = name, x_dim, z_dim, likelihood
        self.context, self.guide_flow, self.prior_flow = 0, None, None
        self.encoder = gated_mlp([x_dim, hidden, hidden, 2 * z_dim])  # q(z2 | x)
        self.head = GaussianHead(z_dim, log_var_clamp)
        self.q_z1 = Joint(x_dim, z_dim, hidden, 2 * z_dim)  # q(z1 | x, z2)
        self.p_z1 = gated_mlp([z_dim, hidden, hidden, 2 * z_dim])  # p(z1 | z2)
        self.decoder = Joint(z_dim, z_dim, hidden, x_dim)  # p(x | z1, z2), z = [z1, z2]
        if likelihood == "normal":
            self.x_log_scale = nn.Parameter(torch.zeros(x_dim))
        self.vampprior = VampPrior(x_dim, pseudo_inputs) if prior == "vampprior" else None

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        z_dim: PositiveInt = 40,
        hidden: tuple[PositiveInt, ...] = (300,),
        likelihood: str | None = None,
        log_var_clamp: tuple[float, ...] | None = (-6.0, 2.0),
        prior: PriorKind = "gaussian",
        pseudo_inputs: PositiveInt = 500,
        *,
        name: str = "hvae",
    ) -> HVAE:
        """An HVAE sized for ``data``; ``hidden`` is one width (all networks use it).

        :param z_dim: latent dimension
        :param hidden: hidden widths of the networks
        :param likelihood: p(x | z); by default bernoulli for binarized images, normal otherwise
        :param log_var_clamp: clamp the encoder's log-variance to LOW HIGH (e.g. -6 2)
        :param prior: p(z): gaussian N(0, I) or vampprior (a mixture of q at pseudo-inputs)
        :param pseudo_inputs: learned pseudo-inputs of the VampPrior
        :param name: the ``pyro.module`` name (two VAEs in one param store need two)
        """
        if len(hidden) != 1:
            raise ValueError(f"hidden={tuple(hidden)}: the HVAE takes one width, e.g. --hidden 300")
        return cls(data.dim, z_dim, hidden[0], likelihood or data.likelihood, log_var_clamp,
                   prior, pseudo_inputs, name)  # fmt: skip

    def z1_prior(self, z2: torch.Tensor) -> dist.Distribution:
        """p(z1 | z2)."""
        return dist.Normal(*self.head(self.p_z1(z2))).to_event(1)

    def z1_posterior(self, x: torch.Tensor, z2: torch.Tensor) -> dist.Distribution:
        """q(z1 | x, z2)."""
        x = x.expand(*z2.shape[:-1], x.shape[-1])  # particles of z2 lead x's batch
        return dist.Normal(*self.head(self.q_z1(torch.cat([x, z2], -1)))).to_event(1)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            z2 = pyro.sample("z2", self.prior(x.shape[0], x))
            z1 = pyro.sample("z1", self.z1_prior(z2))
            pyro.sample("x", self.likelihood_dist(torch.cat([z1, z2], -1)), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            z2 = pyro.sample("z2", self.posterior(x))
            pyro.sample("z1", self.z1_posterior(x, z2))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[z1, z2]``: the mean of q(z2 | x), then the mean of q(z1 | x, z2) there."""
        z2 = self.head(self.encoder(x))[0]
        return torch.cat([self.z1_posterior(x, z2).mean, z2], -1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x | z1, z2) for ``n`` ancestral draws z2 ~ p(z2), z1 ~ p(z1 | z2)."""
        z2 = self.prior(n, next(self.parameters())).sample()
        return self.decode(torch.cat([self.z1_prior(z2).sample(), z2], -1))
