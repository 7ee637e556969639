r"""The mixture density network (Bishop 1994) as a Pyro model/guide pair.

Rows are ``[x, y]``: the first ``x_dim`` columns are the input, the last ``y_dim`` the target.
One MLP maps :math:`x` to the weights, means and scales of K diagonal Gaussians:
:math:`z \mid x \sim \mathrm{Categorical}(\pi(x))` and
:math:`y \mid x, z = k \sim \mathcal N(\mu_k(x), \mathrm{diag}\,\sigma_k^2(x))`, so

.. math:: \log p(y \mid x) = \log \sum_{k=1}^K \pi_k(x)\, \mathcal N(y; \mu_k(x), \sigma_k^2(x)).

The guide is the exact posterior :math:`q(z = k \mid x, y) = r_k \propto \pi_k(x)\,\mathcal N(y;
\mu_k(x), \sigma_k^2(x))` (the E-step of EM, computed without gradient). Then
:math:`\log p(y, z \mid x) - \log q(z \mid x, y) = \log p(y \mid x)` for every :math:`z`: the ELBO
is tight, ``pyro_vi.elbo`` and ``pyro_vi.log_marginal`` return the exact log-likelihood, and the
ELBO's gradient :math:`\sum_k r_k \nabla \log p(y, k \mid x)` is :math:`\nabla \log p(y \mid x)`
(Fisher's identity). ``mode="enum"`` enumerates z in the guide (``loss="enum"``, TraceEnum_ELBO:
exact sums over k; the model's site is marked for enumeration too, so an empty guide also works);
``mode="map"`` puts the guide's mass on the most probable component (hard EM, ``loss="elbo"``;
the ELBO :math:`\log p(y, \hat z \mid x)` is then a lower bound and :meth:`MDN.log_likelihood`
gives the exact value). ``components=1`` is the unimodal Gaussian regression network (mean and
variance as functions of x); :meth:`MDN.unimodal` builds that twin of an MDN under its own
parameter names (each MDN registers as its ``name`` in Pyro's param store). The network sees
columns standardized by ``loc``/``scale`` (``from_data``: the training split's moments); densities
are in the data's units::

    data = load("inverse-sine")
    mdn = MDN.from_data(data, components=5, hidden=(32, 32))
    uni = mdn.unimodal()
    for m in (mdn, uni):
        fit(m.model, m.guide, data, loss="enum", epochs=200, lr=5e-3, lr_decay=0.99)
    print(mdn.log_likelihood(data.test.x).mean(), uni.log_likelihood(data.test.x).mean())
    p = mdn.density(torch.linspace(0, 1, 100)[:, None], torch.linspace(0, 1, 80)[:, None])
"""

from __future__ import annotations

from typing import Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.ops.indexing import Vindex
from torch import nn

from pyro_vi.data import Dataset, data_plate
from pyro_vi.layers import mlp
from pyro_vi.protocol import Density, Item, Model, PositiveInt, Scatter, register

from .vae import Activation

MODES = ("enum", "map")


class MDNError(ValueError):
    """Options or data this MDN cannot take; the message names the problem and the fix."""


@register("mdn", dataset="inverse-sine", loss="enum")
class MDN(nn.Module, Model):
    """Mixture density network p(y | x) with K diagonal Gaussian components; see the module."""

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        components: int = 5,
        hidden: tuple[int, ...] = (32, 32),
        activation: str = "relu",
        mode: str = "enum",
        name: str = "mdn",
        loc: list[float] | None = None,
        scale: list[float] | None = None,
    ):
        super().__init__()
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise MDNError(
                f"components={components!r}: an MDN needs a whole number K >= 1 of mixture "
                "components (K = 1 is the unimodal Gaussian network)"
            )
        if x_dim < 1 or y_dim < 1:
            raise MDNError(f"x_dim={x_dim}, y_dim={y_dim}: the MDN needs both >= 1")
        if mode not in MODES:
            raise MDNError(f"mode {mode!r}: use 'enum' (z summed out exactly) or 'map' (hard EM)")
        width = x_dim + y_dim
        loc, scale = list(loc or [0.0] * width), list(scale or [1.0] * width)
        if len(loc) != width or len(scale) != width or min(scale) <= 0:
            raise MDNError(f"loc/scale need {width} entries each, scales > 0: one per column")
        self.config = dict(x_dim=x_dim, y_dim=y_dim, components=components, hidden=list(hidden),
                           activation=activation, mode=mode, name=name, loc=loc,
                           scale=scale)  # fmt: skip
        self.register_buffer("loc", torch.tensor(loc), persistent=False)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)
        self.x_dim, self.y_dim, self.components, self.mode, self.name = (
            x_dim, y_dim, components, mode, name)  # fmt: skip
        self.net = mlp([x_dim, *hidden, components * (1 + 2 * y_dim)], activation)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        components: int = 5,
        hidden: tuple[PositiveInt, ...] = (32, 32),
        activation: Activation = "relu",
        mode: Literal["enum", "map"] = "enum",
        y_dim: PositiveInt | None = None,
        *,
        name: str = "mdn",
    ) -> MDN:
        """An MDN for ``data``, standardized with its training split's moments.

        :param components: mixture components K (1: the unimodal Gaussian network)
        :param hidden: hidden widths of the networks
        :param activation: nonlinearity between the layers
        :param mode: z summed out exactly (with loss enum) or hard EM
        :param y_dim: the last Y_DIM columns of a row are y (default: the data set's, else 1)
        :param name: the ``pyro.module`` name (two MDNs in one param store need two)
        """
        y_dim = y_dim or data.info.get("y_dim", 1)
        if data.dim <= y_dim:
            raise MDNError(
                f"{data.name} rows have {data.dim} columns: the MDN needs input columns before "
                f"the y_dim={y_dim} target columns"
            )
        x = data.train.x.double()
        std = x.std(0) if len(x) > 1 else torch.ones_like(x[0])
        loc, scale = x.mean(0), torch.where(std > 0, std, 1.0)  # constant columns stay as they are
        return cls(data.dim - y_dim, y_dim, components, tuple(hidden), activation, mode, name,
                   loc=loc.tolist(), scale=scale.tolist())  # fmt: skip

    def unimodal(self) -> MDN:
        """The same network with K = 1 (a Gaussian regression net), named ``name + "-unimodal"``."""
        ref = next(self.parameters())
        config = {**self.config, "components": 1, "name": self.name + "-unimodal"}
        return MDN(**config).to(device=ref.device, dtype=ref.dtype)

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim + self.y_dim:
            raise MDNError(
                f"data of shape {tuple(x.shape)} do not fit this MDN: rows must be [x, y] with "
                f"{self.x_dim} + {self.y_dim} columns"
            )

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)``: the first ``x_dim`` and the last ``y_dim`` columns of the rows."""
        return x[..., : self.x_dim], x[..., self.x_dim :]

    def mixture(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of pi(x) (..., K), means and scales (..., K, y_dim) for inputs (..., x_dim)."""
        k, d, xd = self.components, self.y_dim, self.x_dim
        out = self.net((inp - self.loc[:xd]) / self.scale[:xd])
        logits, loc, log_scale = out.split([k, k * d, k * d], -1)
        shape = (*out.shape[:-1], k, d)
        y_loc, y_scale = self.loc[xd:], self.scale[xd:]  # back to the data's units
        return (
            logits,
            y_loc + y_scale * loc.reshape(shape),
            y_scale * log_scale.reshape(shape).exp(),
        )

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_k(x) + log N(y; mu_k(x), sigma_k(x)^2) for rows [x, y]: shape (N, K)."""
        inp, target = self.split(x)
        logits, loc, scale = self.mixture(inp)
        log_n = dist.Normal(loc, scale).log_prob(target.unsqueeze(-2)).sum(-1)
        return logits.log_softmax(-1) + log_n

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact per-row log p(y | x) = logsumexp_k of :meth:`joint_log_prob`: shape (N,)."""
        return self.joint_log_prob(x).logsumexp(-1)

    def density(self, inp: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """p(y | x) for inputs ``inp`` (A, x_dim) and targets ``ys`` (B, y_dim): shape (A, B)."""
        logits, loc, scale = self.mixture(inp)  # (A, K), (A, K, D)
        log_n = dist.Normal(loc[:, None], scale[:, None]).log_prob(ys[None, :, None]).sum(-1)
        return (logits.log_softmax(-1)[:, None] + log_n).logsumexp(-1).exp()

    def register(self) -> None:
        """``pyro.module(name, self)``, with a one-line error when Pyro's param store already holds
        another network's parameters under this name (they, not ours, would be trained)."""
        pyro.module(self.name, self)
        key, first = next(iter(self.named_parameters()))
        store, key = pyro.get_param_store(), f"{self.name}$$${key}"
        if key in store and store.get_param(key).unconstrained() is not first:
            raise MDNError(
                f"Pyro's param store holds another network under the name {self.name!r}: call "
                "pyro.clear_param_store() before fitting this MDN, or give it another name="
            )

    @torch.no_grad()
    def sample(self, n: int | torch.Tensor) -> torch.Tensor:
        """Rows [x, y] with z ~ pi(x), y ~ N(mu_z(x), sigma_z(x)^2), for the inputs ``n`` (a tensor
        (N, x_dim)) or for ``n`` inputs drawn from N(loc, scale^2) of the input columns (the MDN
        has no model of x; ``pyro-vi sample`` uses this)."""
        xd = self.x_dim
        if isinstance(n, int):
            n = self.loc[:xd] + self.scale[:xd] * torch.randn(n, xd, device=self.loc.device)
        logits, loc, scale = self.mixture(n)
        z = dist.Categorical(logits=logits).sample()
        y = dist.Normal(Vindex(loc)[..., z, :], Vindex(scale)[..., z, :]).sample()
        return torch.cat([n, y], -1)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        self.register()
        inp, target = self.split(x)
        logits, loc, scale = self.mixture(inp)
        with data_plate(target, idx, size):
            z = pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            y_dist = dist.Normal(Vindex(loc)[..., z, :], Vindex(scale)[..., z, :]).to_event(1)
            pyro.sample("y", y_dist, obs=target)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        self.register()
        with torch.no_grad():
            log_r = self.joint_log_prob(x)  # the exact posterior, up to its normalizer
        with data_plate(x, idx, size):
            if self.mode == "map":
                hard = F.one_hot(log_r.argmax(-1), self.components).to(log_r.dtype)
                pyro.sample("z", dist.Categorical(probs=hard))
            else:
                pyro.sample("z", dist.Categorical(logits=log_r), infer={"enumerate": "parallel"})

    @torch.no_grad()
    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``loglik`` (the exact test log p(y|x) per row) and, for 1-D x and y, ``density``
        (p(y|x) as an image, the test rows on top)."""
        x = data.test.x
        out: dict[str, Item] = {
            "loglik": {"test_loglik": float(self.log_likelihood(x).mean()), "rows": len(x)}
        }
        if self.x_dim == 1 and self.y_dim == 1:
            out["density"] = Density({f"K = {self.components}": self}, x)
        return out

    def samples(self, n: int, data: Dataset) -> Item:
        """``n`` rows [x, y ~ p(y | x)] with x ~ N(loc, scale^2), as a scatter."""
        return Scatter(self.sample(n))


def __getattr__(name: str):
    """``density_figure`` moved to :mod:`pyro_vi.diagnostics.plots` (figures belong to the run
    layer); ``from pyro_vi.models.mdn import density_figure`` keeps working without loading
    matplotlib on import."""
    if name == "density_figure":  # it moved to the figures module; this name keeps working
        from pyro_vi.diagnostics.plots import density_figure

        return density_figure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
