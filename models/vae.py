r"""The variational autoencoder (Kingma & Welling 2014) as a Pyro model/guide pair.

Model: :math:`z_i \sim \mathcal N(0, I)` and
:math:`x_i \mid z_i \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_i)))` for binary data, or
:math:`\mathcal N(f_\theta(z_i), \mathrm{diag}(s^2))` with a learned per-dimension scale :math:`s`
for continuous data. Guide (amortized):
:math:`q_\phi(z_i \mid x_i) = \mathcal N(\mu_\phi(x_i), \mathrm{diag}\,\exp(\ell_\phi(x_i)))`, an
encoder MLP giving the mean and the log-variance. ``pyro_vi.fit`` maximizes the ELBO
:math:`\log p(x) - \mathrm{KL}(q(z\mid x)\,\|\,p(z \mid x))` with the reparameterization trick::

    vae = VAE(x_dim=64, z_dim=8, hidden=(128,))
    fit(vae.model, vae.guide, load("digits", binarize="dynamic"), epochs=30)
    images = vae.sample(16)

Flows (Rezende & Mohamed 2015). ``guide_flow="nice"|"realnvp"``: the encoder also emits a
context :math:`h_\phi(x)` and :math:`q(z \mid x)` is the base Gaussian pushed through
``flow_layers`` coupling layers conditioned on it, :math:`z = f_K \circ \dots \circ f_1(z_0; h)`,
:math:`\log q(z \mid x) = \log q_0(z_0 \mid x) - \sum_k \log|\det J_{f_k}|`.
``prior_flow=...``: :math:`p(z)` is :math:`\mathcal N(0, I)` pushed through an unconditional
flow, so the prior is learned too. ``prior="vampprior"``: :math:`p(z)` is the VampPrior
:math:`\frac1K\sum_k q(z \mid u_k)` at ``pseudo_inputs`` learned pseudo-inputs
(:mod:`pyro_vi.priors`). ``gated=True`` builds both networks from gated dense layers and
``log_var_clamp=(-6, 2)`` clamps the encoder's log-variance (:mod:`pyro_vi.layers`), the networks
of the published VampPrior/Exemplar-VAE density table (``benchmarks/density_table.py``).
"""

from __future__ import annotations

import functools
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vi import flows
from pyro_vi.data import Dataset, data_plate
from pyro_vi.layers import GaussianHead, gated_mlp, mlp
from pyro_vi.priors import VampPrior
from pyro_vi.protocol import Images, Item, Model, PositiveInt, Scatter, register

Activation = Literal["relu", "tanh", "softplus", "elu"]  # the keys of pyro_vi.layers.ACTIVATIONS
FlowKind = Literal["nice", "realnvp"]
PriorKind = Literal["gaussian", "vampprior"]


def check_prior(prior: str, *flows_: str | None) -> None:
    """A one-line error for an unknown prior or a VampPrior beside a flow."""
    if prior not in ("gaussian", "vampprior"):
        raise ValueError(f"prior={prior!r} is not known: use 'gaussian' or 'vampprior'")
    if prior == "vampprior" and any(flows_):
        raise ValueError("prior='vampprior' mixes the encoder's Gaussians: drop the flows")


@register("vae")
class VAE(nn.Module, Model):
    """Bernoulli or Gaussian VAE with an MLP encoder and decoder; see the module docstring."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 20,
        hidden: tuple[int, ...] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        guide_flow: str | None = None,
        prior_flow: str | None = None,
        flow_layers: int = 4,
        flow_context: int = 32,
        name: str = "vae",
        gated: bool = False,
        log_var_clamp: tuple[float, float] | None = None,
        prior: str = "gaussian",
        pseudo_inputs: int = 500,
    ):
        super().__init__()
        check_prior(prior, guide_flow, prior_flow)
        if likelihood not in ("bernoulli", "normal"):
            raise ValueError(f"likelihood {likelihood!r}: use 'bernoulli' or 'normal'")
        for option, kind in (("guide_flow", guide_flow), ("prior_flow", prior_flow)):
            if kind not in (None, "nice", "realnvp"):
                raise ValueError(f"{option}={kind!r} is not known: use None, 'nice' or 'realnvp'")
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=list(hidden), activation=activation,
                           likelihood=likelihood, guide_flow=guide_flow, prior_flow=prior_flow,
                           flow_layers=flow_layers, flow_context=flow_context, name=name,
                           gated=gated, log_var_clamp=log_var_clamp and list(log_var_clamp),
                           prior=prior, pseudo_inputs=pseudo_inputs)  # fmt: skip
        self.name = name  # the pyro.module name: two VAEs fitted in one param store need two
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.context = flow_context if guide_flow else 0
        net = gated_mlp if gated else functools.partial(mlp, activation=activation)
        self.encoder = net([x_dim, *hidden, 2 * z_dim + self.context])
        self.head = GaussianHead(z_dim, log_var_clamp, self.context)
        self.decoder = net([z_dim, *reversed(hidden), x_dim])
        self.vampprior = VampPrior(x_dim, pseudo_inputs) if prior == "vampprior" else None
        if likelihood == "normal":
            self.x_log_scale = nn.Parameter(torch.zeros(x_dim))
        self.guide_flow = guide_flow and getattr(flows, f"conditional_{guide_flow}")(
            z_dim, flow_context, flow_layers
        )
        self.prior_flow = prior_flow and getattr(flows, prior_flow)(z_dim, flow_layers)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        z_dim: PositiveInt = 20,
        hidden: tuple[PositiveInt, ...] = (400,),
        activation: Activation = "relu",
        likelihood: Literal["bernoulli", "normal"] | None = None,
        guide_flow: FlowKind | None = None,
        prior_flow: FlowKind | None = None,
        flow_layers: PositiveInt = 4,
        flow_context: PositiveInt = 32,
        gated: bool = False,
        log_var_clamp: tuple[float, ...] | None = None,
        prior: PriorKind = "gaussian",
        pseudo_inputs: PositiveInt = 500,
        *,
        name: str = "vae",
    ) -> VAE:
        """A VAE sized for ``data`` (a :class:`pyro_vi.data.Dataset`).

        :param z_dim: latent dimension
        :param hidden: hidden widths of the networks
        :param activation: nonlinearity between the layers
        :param likelihood: p(x | z); by default bernoulli for binarized images, normal otherwise
        :param guide_flow: q(z|x) = the encoder's Gaussian through conditional couplings
        :param prior_flow: p(z) = N(0, I) through a learned flow
        :param flow_layers: coupling layers of each flow
        :param flow_context: width of the context the encoder gives the guide flow
        :param gated: gated dense layers, (W1 x + b1) * sigmoid(W2 x + b2), instead of the MLP
        :param log_var_clamp: clamp the encoder's log-variance to LOW HIGH (e.g. -6 2)
        :param prior: p(z): gaussian N(0, I) or vampprior (a mixture of q at pseudo-inputs)
        :param pseudo_inputs: learned pseudo-inputs of the VampPrior
        :param name: the ``pyro.module`` name (two VAEs in one param store need two)
        """
        return cls(data.dim, z_dim, tuple(hidden), activation, likelihood or data.likelihood,
                   guide_flow, prior_flow, flow_layers, flow_context, name, gated,
                   log_var_clamp, prior, pseudo_inputs)  # fmt: skip

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"data of shape {tuple(x.shape)} do not fit this VAE (x_dim={self.x_dim}): "
                "flatten rows or build the model for this data"
            )
        if self.likelihood == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                "non-binary data for a Bernoulli likelihood: binarize them (binarize='static' or "
                "'dynamic') or use likelihood='normal'"
            )

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) with event dimension 1."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.x_log_scale.exp()).to_event(1)

    def prior(self, n: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) for ``n`` rows, on the device and dtype of ``like``."""
        if self.vampprior is not None:
            return self.vampprior(lambda u: self.head(self.encoder(u))[:2], n)
        p = dist.Normal(like.new_zeros(n, self.z_dim), 1.0).to_event(1)
        return p if self.prior_flow is None else dist.TransformedDistribution(p, [self.prior_flow])

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x): the encoder's Gaussian, pushed through the guide flow if there is one."""
        loc, scale, *h = self.head(self.encoder(x))
        q = dist.Normal(loc, scale).to_event(1)
        return (
            q
            if self.guide_flow is None
            else dist.TransformedDistribution(q, [self.guide_flow.condition(h[0])])
        )

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            pyro.sample("z", self.posterior(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A point summary of q(z | x) per row of x: the encoder's mean, through the guide flow
        if there is one (the posterior mean itself for the plain Gaussian)."""
        loc, _, *h = self.head(self.encoder(x))
        return loc if self.guide_flow is None else self.guide_flow.condition(h[0])(loc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): pixel probabilities or Gaussian means."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x | z) for ``n`` draws z ~ p(z)."""
        return self.decode(self.prior(n, next(self.parameters())).sample())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each row of x."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` codes on the line between the posterior means of x_a and x_b."""
        za, zb = self.encode(x_a), self.encode(x_b)
        t = torch.linspace(0, 1, steps, device=za.device, dtype=za.dtype)
        t = t.reshape((steps,) + (1,) * za.dim())
        return self.decode(za + t * (zb - za))

    @torch.no_grad()
    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """For images: samples, reconstructions, interpolations and the test set's encoder means
        by label (a PCA of them beyond 2-D); nothing for other data."""
        if len(data.shape) != 2:
            return {}
        x = data.test.evaluation_x(seed)
        pairs = torch.stack([x[:16], self.reconstruct(x[:16])], 1).reshape(32, -1)
        path = self.interpolate(x[:4], x[4:8], steps=8)  # (steps, 4, D)
        return {
            "samples": Images(self.sample(64), data.shape, 8, "samples"),
            "reconstructions": Images(pairs, data.shape, 8, "data | reconstruction"),
            "interpolation": Images(
                path.transpose(0, 1).reshape(-1, data.dim), data.shape, 8, "interpolation"
            ),  # fmt: skip
            "latent": Scatter(self.encode(x), data.test.y, "encoder means of the test set"),
        }

    def samples(self, n: int, data: Dataset) -> Item:
        """``n`` draws of the mean of p(x | z): an image grid for images, else a scatter."""
        x = self.sample(n)
        return Images(x, data.shape) if len(data.shape) == 2 else Scatter(x)
