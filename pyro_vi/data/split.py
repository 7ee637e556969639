"""Data sets as device-resident tensors, batched by index.

Every data set is a :class:`Dataset` of three :class:`Split` s (train, valid, test). A split holds
the whole set as one tensor ``x`` (rows are datapoints) on the chosen device, optional labels ``y``,
and a binarization mode. Batches are drawn by index, so a batch knows the dataset indices of its
rows; models put their local latents in ``pyro.plate("data", size, subsample=idx)`` (see
:func:`data_plate`) and the ELBO of a batch is then an unbiased estimate of the full-data ELBO::

    ds = load("digits", binarize="dynamic")
    for batch in ds.train.batches(128, generator=torch.Generator().manual_seed(0)):
        loss = elbo.differentiable_loss(model, guide, batch.x, idx=batch.idx, size=batch.size)

Binarization: ``"static"`` draws x ~ Bernoulli(pixel intensity) once with a fixed seed;
``"dynamic"`` draws afresh for every batch (the convention of the published likelihood tables);
``None`` keeps intensities in [0, 1]. Synthetic sets come with their generating truth in ``info``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import pyro
import torch


class DataError(ValueError):
    """A data set cannot be loaded or does not fit; the message names the problem and the fix."""


def trim_rows(x: torch.Tensor, end: int) -> torch.Tensor:
    """``x`` without the trailing columns that follow the first ``end`` of every row (rows
    without ``end`` keep all columns)::

        trim_rows(torch.tensor([[5, 3, 0, 0], [4, 3, 0, 0]]), end=3)  # -> columns 0..1
    """
    if x.shape[-1] == 0:
        return x
    hit = x == end
    first = torch.where(hit.any(-1), hit.int().argmax(-1), x.shape[-1] - 1)
    return x[..., : int(first.max()) + 1]


class Batch(NamedTuple):
    """One batch: rows ``x``, labels ``y`` (or None), their dataset indices ``idx``, set size,
    and the rows of the split's other per-datapoint ``fields``."""

    x: torch.Tensor
    y: torch.Tensor | None
    idx: torch.Tensor
    size: int
    fields: Mapping[str, torch.Tensor] = MappingProxyType({})


@dataclass
class Split:
    """One split of a data set: the whole of it as one tensor on one device. ``fields`` are
    further per-datapoint tensors (one row per row of ``x``) that a model takes as keywords
    (``model(x, mask=None, ...)``); they are batched with ``x``. ``row_end`` is the token that
    closes each row of variable-length rows padded after it (a sentence's ``<eos>``): a batch
    then keeps the columns up to the latest first ``row_end`` among its rows (:func:`trim_rows`),
    so that models never trim by their data's values and their steps can be captured."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    binarize: str | None = None  # None | "static" (already applied) | "dynamic"
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    row_end: int | None = None

    def __post_init__(self) -> None:
        for name, value in {"y": self.y, **self.fields}.items():
            if value is not None and (
                not torch.is_tensor(value) or value.shape[:1] != self.x.shape[:1]
            ):
                rows = tuple(value.shape[:1]) if torch.is_tensor(value) else type(value).__name__
                raise DataError(
                    f"{name} has {rows} rows for {len(self.x)} rows of x: pass one row per "
                    "datapoint (a constant goes into the model by functools.partial)"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> Split:
        y = None if self.y is None else self.y.to(device)
        fields = {k: v.to(device) for k, v in self.fields.items()}
        return Split(self.x.to(device), y, self.binarize, fields, self.row_end)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches by index; ``generator`` (on the CPU) drives the order and binarization."""
        n = len(self)
        if shuffle:
            order = torch.randperm(
                n, generator=generator, device=_gen_device(generator, self.x)
            ).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield self.batch(idx, generator)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """The rows ``idx`` as a :class:`Batch` (x drawn by :meth:`sample_x`)."""
        fields = {k: v[idx] for k, v in self.fields.items()}
        x = self.sample_x(idx, generator)
        if self.row_end is not None:
            x = trim_rows(x, self.row_end)
        return Batch(x, self._y(idx), idx, len(self), fields)

    def sample_x(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows ``idx`` of x, with a fresh Bernoulli draw under dynamic binarization."""
        x = self.x[idx]
        if self.binarize == "dynamic":
            u = torch.rand(x.shape, generator=generator, device=_gen_device(generator, x))
            u = u.to(x.device)
            x = (u < x).to(x.dtype)
        return x

    def _y(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.y is None else self.y[idx]

    def evaluation_x(self, seed: int = 0) -> torch.Tensor:
        """The split for evaluation: dynamic binarization becomes a static draw with ``seed``."""
        if self.binarize != "dynamic":
            return self.x
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(self.x.shape, generator=g).to(self.x.device) < self.x).to(self.x.dtype)


@dataclass
class Dataset:
    """A named data set: train/valid/test splits, the shape of one item and its likelihood."""

    name: str
    train: Split
    valid: Split
    test: Split
    shape: tuple[int, ...]
    likelihood: str  # "bernoulli" for binary data, "normal" for continuous
    num_classes: int = 0
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            self.train.to(device),
            self.valid.to(device),
            self.test.to(device),
            self.shape,
            self.likelihood,
            self.num_classes,
            self.info,
        )


def data_plate(
    x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None, **_: object
):
    """``pyro.plate("data", ...)`` over the rows of ``x``.

    With ``idx`` (dataset indices of the rows) and ``size`` (rows in the full set) the plate
    subsamples, so log-densities inside it are scaled by ``size / len(idx)``; without them the
    rows are the whole set. The plate lives on ``x.device``. Other keywords (``y=``, ...) are
    ignored, so that it serves as an autoguide's ``create_plates``:
    ``AutoNormal(model, create_plates=data_plate)``.
    """
    if idx is None:
        return pyro.plate("data", x.shape[0], device=x.device)
    return pyro.plate(
        "data", size if size is not None else x.shape[0], subsample=idx, device=x.device
    )


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    """Draw on the generator's device (the data's device when there is no generator)."""
    return x.device if generator is None else generator.device
