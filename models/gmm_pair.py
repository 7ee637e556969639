r"""The Gaussian mixture of :mod:`.gmm` as a registered model/guide pair: ``pyro-vi fit gmm``.

The pair is :class:`~.gmm.MixtureModel` with the globals' guide of :func:`~.gmm.map_guide`
(``guide="map"``: point masses, the objective EM's plus the log prior) or
:func:`~.gmm.meanfield_guide` (``"meanfield"``), z summed out by ``TraceEnum_ELBO`` (the run's
default loss ``enum``), started at the k-means++ partition of the training rows drawn from torch's
seed (:func:`~.gmm.kmeans_init`). A run directory then shows the held-out log-likelihood at the
point estimate, the ARI against the data's labels where it has some, and the test points
coloured by their most probable component::

    pyro-vi fit gmm --dataset gmm --components 3 --epochs 100 --lr 0.05 --out runs/gmm
    pyro-vi evaluate runs/gmm
    pyro-vi sample runs/gmm -n 500

In Python, :class:`pyro_vi.models.GMM` (restarts, EM, scikit-learn's protocol) is the richer
face of the same pair.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pyro_vi.data import Dataset
from pyro_vi.protocol import Item, Model, Scatter, register

from .gmm import (
    GMMError,
    MixtureModel,
    Values,
    draw_mixture,
    kmeans_init,
    map_guide,
    meanfield_guide,
)

__all__ = ["GMMPair"]


@register("gmm", dataset="gmm", loss="enum")
class GMMPair(nn.Module, Model):
    """Gaussian mixture with K components, MAP or mean-field globals; see the module."""

    def __init__(
        self,
        dim: int,
        components: int = 3,
        covariance: str = "full",
        guide: str = "map",
        center: list[float] | None = None,
        spread: list[float] | None = None,
        concentration: float = 1.0,
        lkj_concentration: float = 1.0,
        init: Values | None = None,
    ):
        super().__init__()
        if guide not in ("map", "meanfield"):
            raise GMMError(f"guide={guide!r} is not known here: use 'map' or 'meanfield'")
        center = list(center or [0.0] * dim)
        spread = list(spread or [1.0] * dim)
        if len(center) != dim or len(spread) != dim or min(spread) <= 0:
            raise GMMError(f"center/spread need {dim} entries each, spreads > 0: one per column")
        self.config = dict(dim=dim, components=components, covariance=covariance, guide=guide,
                           center=center, spread=spread, concentration=concentration,
                           lkj_concentration=lkj_concentration)  # fmt: skip
        self.mixture = MixtureModel(components, torch.tensor(center), torch.tensor(spread),
                                    covariance, concentration, lkj_concentration)  # fmt: skip
        make = map_guide if guide == "map" else meanfield_guide
        self.auto = make(self.mixture, init)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        components: int = 3,
        covariance: Literal["full", "diag"] = "full",
        guide: Literal["map", "meanfield"] = "map",
        *,
        concentration: float = 1.0,
        lkj_concentration: float = 1.0,
    ) -> GMMPair:
        """A mixture for ``data``: the priors centred on its training rows, the globals started
        at their k-means++ partition (drawn from ``torch.initial_seed()``).

        :param components: mixture components K (a whole number >= 1)
        :param covariance: full (LKJ correlations times scales) or diagonal covariances
        :param guide: the globals' guide: point masses (MAP) or mean-field normal
        """
        x = data.train.x.double()
        if x.dim() != 2:
            raise GMMError(f"{data.name} rows have shape {tuple(x.shape[1:])}: a GMM takes vectors")
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise GMMError(f"components={components!r}: use a whole number K >= 1")
        if components > len(x):
            raise GMMError(f"components={components} exceeds the {len(x)} training rows: use fewer")
        base = MixtureModel.from_data(x, components, covariance=covariance)
        gen = torch.Generator(device=x.device).manual_seed(torch.initial_seed())
        init = {k: v.to(data.train.x.dtype) for k, v in kmeans_init(base, x, gen).items()}
        return cls(data.dim, components, covariance, guide, base.center.tolist(),
                   base.spread.tolist(), concentration, lkj_concentration, init)  # fmt: skip

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this mixture cannot take."""
        if x.dim() != 2 or x.shape[-1] != self.mixture.dim:
            raise GMMError(f"data of shape {tuple(x.shape)} do not fit this GMM: rows must have "
                           f"{self.mixture.dim} columns")  # fmt: skip

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        self.mixture(x, idx, size)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        self.auto(x, idx=idx, size=size)

    def point(self) -> Values:
        """The globals' point estimate: the guide's median (MAP: its point masses)."""
        like = self.mixture.center
        x = like.new_zeros(1, self.mixture.dim)
        return {k: v.detach() for k, v in self.auto.median(x).items()}

    @torch.no_grad()
    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x_i | mu_k, Sigma_k)`` (N, K) at the point estimate."""
        return self.mixture.log_joint(x, self.point())

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, z)``: ``n`` draws from the mixture at the point estimate, and their components."""
        return draw_mixture(*self.mixture.moments(self.point()), n)

    @torch.no_grad()
    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``mixture`` (test log-likelihood per row at the point estimate, ARI against the
        labels where the data have them) and ``clusters`` (test rows by their component)."""
        x = data.test.x
        joint = self.responsibilities(x.to(self.mixture.center.dtype))
        labels = joint.argmax(-1)
        out: dict = {"test_loglik": float(joint.logsumexp(-1).mean()), "rows": len(x)}
        if data.test.y is not None:
            from sklearn.metrics import adjusted_rand_score

            out["ari"] = float(adjusted_rand_score(data.test.y.cpu(), labels.cpu()))
        return {"mixture": out, "clusters": Scatter(x, labels, "test points by component")}

    def samples(self, n: int, data: Dataset) -> Item:
        """``n`` draws from the fitted mixture, coloured by their component."""
        x, z = self.sample(n)
        return Scatter(x, z, f"{n} draws from the mixture")
