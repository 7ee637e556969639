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
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vi.data import data_plate

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


class VAE(nn.Module):
    """Bernoulli or Gaussian VAE with an MLP encoder and decoder; see the module docstring."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 20,
        hidden: tuple[int, ...] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if likelihood not in ("bernoulli", "normal"):
            raise ValueError(f"likelihood {likelihood!r}: use 'bernoulli' or 'normal'")
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=list(hidden), activation=activation,
                           likelihood=likelihood)  # fmt: skip
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.encoder = mlp([x_dim, *hidden, 2 * z_dim], activation)
        self.decoder = mlp([z_dim, *reversed(hidden), x_dim], activation)
        if likelihood == "normal":
            self.x_log_scale = nn.Parameter(torch.zeros(x_dim))

    @classmethod
    def from_data(
        cls, data, z_dim=20, hidden=(400,), activation="relu", likelihood=None, **_
    ) -> VAE:
        """A VAE sized for ``data`` (a :class:`pyro_vi.data.Dataset`)."""
        return cls(data.dim, z_dim, tuple(hidden), activation, likelihood or data.likelihood)

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

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module("vae", self)
        with data_plate(x, idx, size):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module("vae", self)
        with data_plate(x, idx, size):
            loc, log_var = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, (0.5 * log_var).exp()).to_event(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of z for each row of x."""
        return self.encoder(x)[..., : self.z_dim]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): pixel probabilities or Gaussian means."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x | z) for ``n`` draws z ~ p(z)."""
        ref = next(self.parameters())
        return self.decode(torch.randn(n, self.z_dim, device=ref.device, dtype=ref.dtype))

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
