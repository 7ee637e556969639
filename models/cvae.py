r"""The conditional VAE of Sohn et al. (2015) as a Pyro model/guide pair.

An input :math:`x` (visible quadrants of an image, or a one-hot class label) and a target
:math:`y` (the masked quadrants, or the whole image). Model:
:math:`z \sim p_\theta(z \mid x) = \mathcal N(\mu_\theta(x, \hat y), \mathrm{diag}\,\sigma^2_\theta
(x, \hat y))` (prior network) and :math:`y \mid x, z \sim \mathrm{Bernoulli}(\sigma(g_\theta(z,
x)))` (generation network); only :math:`y` is observed. Guide: the recognition network
:math:`q_\phi(z \mid x, y) = \mathcal N(\mu_\phi(x, y), \mathrm{diag}\,\sigma^2_\phi(x, y))`.
The ELBO is :math:`\mathbb E_q[\log p(y \mid x, z) + \log p(z \mid x)] + \mathrm H(q) \le
\log p(y \mid x)`, and ``pyro_vi.log_marginal`` with K samples from :math:`q` estimates the
conditional log-likelihood :math:`\log \frac1K \sum_k p(y \mid x, z_k) p(z_k \mid x) /
q(z_k \mid x, y)`. The baseline network :math:`\hat y = \sigma(b(x))` (a deterministic MLP with
the factorized Bernoulli likelihood :math:`\prod_j \mathrm{Bernoulli}(y_j; \hat y_j)`) is trained
on its own by :meth:`CVAE.fit_baseline`; its prediction, held fixed, feeds the prior network.

Quadrant task: with ``quadrants=q`` the first q of bottom-left, top-left, bottom-right are
visible. Label task: the library passes class labels as ``y=`` (the math's :math:`x`); the image
is the target. Example::

    data = load("digits", binarize="dynamic")
    cvae = CVAE.from_data(data, task="quadrant", quadrants=2, z_dim=8, hidden=(128,))
    fit(cvae.model, cvae.guide, data, epochs=20)
    x = data.test.evaluation_x()
    cll = log_marginal(cvae.model, cvae.guide, x, num_samples=1000)   # log p(y | x) per image
    nll_nn = cvae.baseline_nll(x)                                    # -log p_NN(y | x)
    images = cvae.complete(x[:4], num_samples=6)                     # (6, 4, 64)
"""

from __future__ import annotations

import math
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vi.data import Dataset, Split, data_plate
from pyro_vi.layers import mlp
from pyro_vi.protocol import Images, Item, Model, PositiveInt, register

from .vae import Activation

QUADRANTS = ("bottom-left", "top-left", "bottom-right", "top-right")  # visible in this order


class CVAEError(ValueError):
    """Options or data this CVAE cannot take; the message names the problem and the fix."""


@register("cvae")
class CVAE(nn.Module, Model):
    """Conditional VAE with prior, recognition, generation and baseline MLPs; see the module."""

    def __init__(
        self,
        shape: tuple[int, int] = (28, 28),
        task: str = "quadrant",
        quadrants: int = 1,
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: tuple[int, ...] = (400,),
        activation: str = "relu",
        use_baseline: bool = True,
        name: str = "cvae",
    ):
        super().__init__()
        if task not in ("quadrant", "label"):
            raise CVAEError(f"task {task!r}: use 'quadrant' or 'label'")
        if len(shape) != 2:
            raise CVAEError(f"item shape {tuple(shape)}: the CVAE needs 2-D images")
        h, w = shape
        if task == "quadrant":
            if quadrants not in (1, 2, 3) or isinstance(quadrants, bool):
                raise CVAEError(f"quadrants={quadrants!r}: give 1, 2 or 3 visible quadrants")
            if h % 2 or w % 2 or h < 2 or w < 2:
                raise CVAEError(f"{h}x{w} images do not split into quadrants: use even sides")
            top, left = slice(0, h // 2), slice(0, w // 2)
            bottom, right = slice(h // 2, h), slice(w // 2, w)
            where = {"bottom-left": (bottom, left), "top-left": (top, left),
                     "bottom-right": (bottom, right)}  # fmt: skip
            visible = torch.zeros(h, w, dtype=torch.bool)
            for quadrant in QUADRANTS[:quadrants]:
                visible[where[quadrant]] = True
            self.register_buffer("inputs_at", visible.flatten().nonzero()[:, 0], persistent=False)
            self.register_buffer("targets_at", (~visible).flatten().nonzero()[:, 0], False)
            in_dim, out_dim = len(self.inputs_at), len(self.targets_at)
        else:
            if num_classes < 2:
                raise CVAEError(f"num_classes={num_classes}: the label task needs >= 2 classes")
            in_dim, out_dim = num_classes, h * w
        self.config = dict(shape=[h, w], task=task, quadrants=quadrants, num_classes=num_classes,
                           z_dim=z_dim, hidden=list(hidden), activation=activation,
                           use_baseline=use_baseline, name=name)  # fmt: skip
        self.name = name  # the pyro.module name: two CVAEs fitted in one param store need two
        self.shape, self.task, self.num_classes = (h, w), task, num_classes
        self.z_dim, self.use_baseline = z_dim, use_baseline
        self.baseline = mlp([in_dim, *hidden, out_dim], activation)
        self.prior_net = mlp([in_dim + out_dim * use_baseline, *hidden, 2 * z_dim], activation)
        self.recognition_net = mlp([in_dim + out_dim, *hidden, 2 * z_dim], activation)
        self.generation_net = mlp([z_dim + in_dim, *reversed(hidden), out_dim], activation)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        task: Literal["quadrant", "label"] = "quadrant",
        quadrants: Literal[1, 2, 3] = 1,
        z_dim: PositiveInt = 20,
        hidden: tuple[PositiveInt, ...] = (400,),
        activation: Activation = "relu",
        likelihood: Literal["bernoulli", "normal"] | None = None,
        use_baseline: bool = True,
        baseline_epochs: int = 10,
        *,
        name: str = "cvae",
    ) -> CVAE:
        """A CVAE for ``data`` (a binarized image Dataset), its baseline trained on the train split
        for ``baseline_epochs`` epochs (torch's global seed drives it).

        :param task: complete the masked quadrants of an image, or draw an image of a label
        :param quadrants: visible quadrants (of bottom-left, top-left, bottom-right)
        :param z_dim: latent dimension
        :param hidden: hidden widths of the networks
        :param activation: nonlinearity between the layers
        :param likelihood: p(x | z); by default bernoulli for binarized images, normal otherwise
        :param use_baseline: feed the baseline network's prediction to the prior network
        :param baseline_epochs: epochs of the baseline network's training before the fit
        :param name: the ``pyro.module`` name (two CVAEs in one param store need two)
        """
        if (likelihood or data.likelihood) != "bernoulli":
            raise CVAEError("the CVAE has a Bernoulli likelihood: binarize the images")
        if len(data.shape) != 2:
            raise CVAEError(f"{data.name} items have shape {data.shape}: the CVAE needs images")
        if task == "label" and (data.num_classes < 2 or data.train.y is None):
            raise CVAEError(f"{data.name} has no class labels: the label task needs them")
        model = cls(tuple(data.shape), task or "quadrant", quadrants or 1, data.num_classes or 10,
                    z_dim, tuple(hidden), activation, use_baseline, name)  # fmt: skip
        if baseline_epochs:
            model.to(data.train.device).fit_baseline(data.train, epochs=baseline_epochs)
        return model

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take."""
        if x.dim() != 2 or x.shape[-1] != math.prod(self.shape):
            raise CVAEError(f"data of shape {tuple(x.shape)} do not fit {self.shape} images")
        if not bool(((x == 0) | (x == 1)).all()):
            raise CVAEError("non-binary data for a Bernoulli likelihood: binarize the images")

    def split(self, x: torch.Tensor | None, y: torch.Tensor | None = None):
        """``(input, target)`` of a batch: visible and masked pixels, or one-hot label and image."""
        if self.task == "quadrant":
            return x[..., self.inputs_at], x[..., self.targets_at]
        if y is None:
            raise CVAEError("the label task needs class labels: pass y= (a labelled data set)")
        if bool(((y < 0) | (y >= self.num_classes)).any()):
            raise CVAEError(f"labels {y.min()}..{y.max()} out of range 0..{self.num_classes - 1}")
        return F.one_hot(y.long(), self.num_classes).to(x.dtype), x

    def prior(self, inp: torch.Tensor) -> dist.Distribution:
        """p(z | x), fed the baseline's (fixed) prediction when ``use_baseline``."""
        if self.use_baseline:
            inp = torch.cat([inp, torch.sigmoid(self.baseline(inp)).detach()], -1)
        loc, log_var = self.prior_net(inp).chunk(2, -1)
        return dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)

    def generation(self, z: torch.Tensor, inp: torch.Tensor) -> dist.Distribution:
        """p(y | x, z), Bernoulli with event dimension 1 (z may carry extra batch dims)."""
        inp = inp.expand(*z.shape[:-1], inp.shape[-1])
        return dist.Bernoulli(logits=self.generation_net(torch.cat([z, inp], -1))).to_event(1)

    def model(self, x, idx: torch.Tensor | None = None, size: int | None = None, y=None):
        pyro.module(self.name, self)
        inp, target = self.split(x, y)
        with data_plate(target, idx, size):
            z = pyro.sample("z", self.prior(inp))
            pyro.sample("target", self.generation(z, inp), obs=target)

    def guide(self, x, idx: torch.Tensor | None = None, size: int | None = None, y=None):
        pyro.module(self.name, self)
        inp, target = self.split(x, y)
        with data_plate(target, idx, size):
            loc, log_var = self.recognition_net(torch.cat([inp, target], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, (0.5 * log_var).exp()).to_event(1))

    def baseline_nll(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-datapoint :math:`-\\log p_{NN}(y \\mid x)` of the baseline's Bernoulli prediction."""
        inp, target = self.split(x, y)
        bce = F.binary_cross_entropy_with_logits(self.baseline(inp), target, reduction="none")
        return bce.sum(-1)

    def fit_baseline(
        self, split: Split, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3
    ) -> list[float]:
        """Train the baseline alone by maximum likelihood (Adam); returns the NLL of each epoch."""
        opt = torch.optim.Adam(self.baseline.parameters(), lr=lr)
        gen = torch.Generator(split.device).manual_seed(int(torch.randint(2**31, ())))
        history = []
        for _ in range(epochs):
            total = 0.0
            for batch in split.batches(batch_size, generator=gen):
                loss = self.baseline_nll(batch.x, batch.y).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(batch.idx)
            history.append(total / len(split))
        return history

    def assemble(self, x: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """Whole images: the visible pixels of ``x`` with ``target`` in the masked positions."""
        if self.task == "label":
            return target
        out = x.expand(*target.shape[:-1], x.shape[-1]).clone()
        out[..., self.targets_at] = target
        return out

    @torch.no_grad()
    def complete(
        self, x: torch.Tensor | None, y: torch.Tensor | None = None, num_samples: int = 1
    ) -> torch.Tensor:
        """Images of shape (num_samples, N, D): z ~ p(z | x), target = mean of p(y | x, z)."""
        if x is None:  # label task: the labels alone are the input
            x = next(self.parameters()).new_zeros(len(y), math.prod(self.shape))
        inp, _ = self.split(x, y)
        z = self.prior(inp).sample((num_samples,))
        return self.assemble(x, self.generation(z, inp).mean)

    @torch.no_grad()
    def sample_grid(self, n: int, data) -> tuple[torch.Tensor, int]:
        """About ``n`` images in rows of 8: per test input (quadrants: the truth, the input with
        the masked part grey, the baseline, 5 completions; labels: baseline, 7 samples)."""
        rows = max(1, math.ceil(n / 8))
        x = data.test.evaluation_x(0)[:rows]
        y = None if data.test.y is None else data.test.y[:rows]
        if self.task == "label":
            y = torch.arange(rows, device=x.device) % self.num_classes
            x = x.new_zeros(rows, x.shape[-1])
            cols = [self.assemble(x, torch.sigmoid(self.baseline(self.split(x, y)[0])))]
            cols += list(self.complete(x, y, num_samples=7))
        else:
            inp, target = self.split(x, y)
            cols = [x, self.assemble(x, torch.full_like(target, 0.5))]
            cols += [self.assemble(x, torch.sigmoid(self.baseline(inp)))]
            cols += list(self.complete(x, y, num_samples=5))
        return torch.stack(cols, 1).reshape(-1, x.shape[-1]), 8

    @torch.no_grad()
    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``completions`` (several z per input, :meth:`sample_grid`) and ``baseline`` (the
        baseline network's test NLL)."""
        images, nrow = self.sample_grid(64, data)
        title = "baseline | 7 samples per class" if self.task == "label" else (
            "truth | input | baseline | 5 completions (z ~ p(z|x))")  # fmt: skip
        nll = self.baseline_nll(data.test.evaluation_x(seed), data.test.y).mean()
        return {
            "completions": Images(images, self.shape, nrow, title),
            "baseline": {"test_nll_baseline": float(nll)},
        }

    def samples(self, n: int, data: Dataset) -> Item:
        """About ``n`` images: :meth:`sample_grid`."""
        images, nrow = self.sample_grid(n, data)
        return Images(images, self.shape, nrow)
