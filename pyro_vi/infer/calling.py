r"""How :func:`pyro_vi.fit` calls a model/guide pair on a batch, read off the model's signature.

Pyro pairs come in several signatures, and ``fit`` takes each unchanged. The signature is that of
the model as called: a module's ``forward`` (a ``PyroModule`` instance), what a
``functools.partial`` leaves open, a bound method's without ``self``. The guide is called with
the same arguments, as Pyro's SVI does.

- ``model(x, idx=None, size=None, ...)``: each step passes a batch's rows, their dataset indices
  and the data set's size; the model subsamples by them (:func:`pyro_vi.data.data_plate`), so the
  batch's log-likelihood is scaled by :math:`N/B`.
- ``model(x)`` or ``model(x, y=None)`` with ``pyro.plate("data", len(x), subsample_size=B)``
  (Pyro's tutorial idiom): the model subsamples itself, so each step passes the whole data and
  the plate draws the batch; an epoch is :math:`\lceil N/B \rceil` such steps.
- ``model(x)`` that does not subsample: full-batch steps (``batch_size >= N``); with a smaller
  batch the ELBO would be a batch's, not the data set's, and ``fit`` says so in one line.

Keywords the model takes besides ``idx``/``size`` (``y`` and any other) are per-datapoint
tensors, batched with ``x``: ``fit(model, guide, x, y=labels)``. Example::

    calling = Calling.of(model, labels=True)  # model(x, y=None, idx=None, size=None)
    calling.kwargs(batch)  # {"y": batch.y, "idx": batch.idx, "size": batch.size}
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from pyro.infer.autoguide import AutoContinuous, AutoGuide, AutoGuideList

from pyro_vi.data import Batch, Split, data_plate
from pyro_vi.evaluate.bounds import plate_nesting_of, trace_pair
from pyro_vi.evaluate.weights import DATA_PLATE, is_subsample_site

__all__ = [
    "Calling",
    "CallingError",
    "Plan",
    "plan",
    "check_guide_plates",
    "signature_of",
    "SIGNATURES",
]

SIGNATURES = "model(x), model(x, y=None), model(x, idx=None, size=None) or a module's forward"


class CallingError(TypeError):
    """A model/guide pair fit cannot call; the message names the signatures that work."""


def signature_of(fn: Callable) -> inspect.Signature | None:
    """The signature a call of ``fn`` binds against, or None where Python cannot tell: a torch
    module's ``forward`` (``Module.__call__`` takes ``*args, **kwargs``), the parameters a
    ``functools.partial`` leaves open, a bound method's without ``self``."""
    if isinstance(fn, functools.partial):
        inner = signature_of(fn.func)
        if inner is None:
            return None
        bound = len(fn.args)
        params = [p for p in inner.parameters.values() if p.name not in fn.keywords]
        positional = [p for p in params if p.kind in _POSITIONAL][:bound]
        return inner.replace(parameters=[p for p in params if p not in positional])
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _accepts(sig: inspect.Signature | None, name: str) -> bool:
    """Whether a call with ``sig`` takes the keyword ``name``: a parameter of that name, or
    ``**kwargs`` for a data keyword (never for the plate's ``idx``/``size``, which a model must
    name to use)."""
    if sig is None:
        return False
    p = sig.parameters.get(name)
    if p is not None:
        return p.kind != inspect.Parameter.POSITIONAL_ONLY
    var_kw = any(q.kind == inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values())
    return var_kw and name not in ("idx", "size")


@dataclass(frozen=True)
class Calling:
    """Which of a batch's fields go into the model and guide.

    ``indexed``: the model takes ``idx`` and ``size`` (it subsamples by the batch's indices);
    ``keywords``: the per-datapoint keywords passed (``y`` and others), batched with ``x``."""

    indexed: bool
    keywords: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: Callable, fields: Iterable[str] = (), labels: bool = False) -> Calling:
        """The calling convention of ``model`` for a split with extra per-datapoint ``fields``
        and (``labels``) a ``y``: ``y`` goes in where the model takes it, every other field must
        be taken (else a one-line :class:`CallingError`)."""
        sig = signature_of(model)
        fields = tuple(fields)
        refused = [k for k in fields if not _accepts(sig, k)]
        if refused:
            raise CallingError(
                f"the model does not take the keyword {refused[0]!r}: add it to the model's "
                f"signature ({SIGNATURES}) or leave it out of the data"
            )
        y = ("y",) if labels and _accepts(sig, "y") and "y" not in fields else ()
        return cls(_accepts(sig, "idx") and _accepts(sig, "size"), y + fields)

    def kwargs(self, batch: Batch) -> dict:
        """The keyword arguments of one call on ``batch``."""
        kw = {k: batch.y if k == "y" else batch.fields[k] for k in self.keywords}
        if self.indexed:
            kw.update(idx=batch.idx, size=batch.size)
        return kw

    def whole(self, split: Split) -> dict:
        """The keyword arguments of one call on the whole of ``split`` (no indices: the model's
        data plate covers every row)."""
        return {k: split.y if k == "y" else split.fields[k] for k in self.keywords}


@dataclass
class Plan:
    """How a fit feeds its pair: the :class:`Calling`, ``batches(generator)`` (one epoch's
    batches), the steps per epoch and the plate nesting, all from the one probe trace."""

    calling: Calling
    batches: Callable[[torch.Generator | None], Iterator[Batch]]
    steps_per_epoch: int
    nesting: int


def plan(model: Callable, guide: Callable, train: Split, batch_size: int, *,
         max_plate_nesting: int | None = None, distributed: bool = False) -> Plan:  # fmt: skip
    """Trace the pair once on a first batch (or, for a model that takes no indices, on the whole
    split) and choose the batching: by index for ``model(x, idx, size)``, the whole data for a
    model that subsamples itself or takes one full batch. Wires or refuses an autoguide that
    would subsample on its own (see :func:`check_guide_plates`)."""
    calling = Calling.of(model, train.fields, labels=train.y is not None)
    if calling.indexed:
        first = next(train.batches(min(batch_size, len(train)), shuffle=False))
        gt, mt = check_guide_plates(model, guide, first, calling)
        if len(first.x) < len(train) and (problem := unscaled_batch(mt, first)):
            warnings.warn(problem, UserWarning, stacklevel=3)
        batches = functools.partial(train.batches, batch_size)
        steps = math.ceil(len(train) / batch_size)
    else:
        every = train.batch(torch.arange(len(train), device=train.device))
        gt, mt = check_guide_plates(model, guide, every, calling)
        drawn = _self_subsample(mt)
        if drawn is None and batch_size < len(train):
            raise CallingError(
                f"the model takes no idx/size and does not subsample itself, so a batch of "
                f"{batch_size} of {len(train)} rows would be fitted as the whole data set: add "
                "idx=None, size=None to its signature and use pyro_vi.data.data_plate(x, idx, "
                "size), subsample in it with pyro.plate('data', len(x), subsample_size=B), or "
                f"pass batch_size >= {len(train)}"
            )
        if distributed:
            raise CallingError(
                "a distributed fit shards batches by index: give the model idx=None, size=None "
                "and pyro_vi.data.data_plate(x, idx, size)"
            )
        steps = math.ceil(len(train) / drawn) if drawn else 1

        def batches(generator=None):
            return (train.batch(every.idx, generator) for _ in range(steps))

    nesting = plate_nesting_of(gt, mt) if max_plate_nesting is None else max_plate_nesting
    return Plan(calling, batches, steps, nesting)


def _self_subsample(mt) -> int | None:
    """The batch size a plate of the model draws on its own (``subsample_size``), or None."""
    sizes = [len(s["value"]) for s in mt.nodes.values()
             if is_subsample_site(s) and len(s["value"]) < s["fn"].size]  # fmt: skip
    return sizes[0] if sizes else None


def _autoguides(guide) -> list[AutoGuide]:
    """The autoguides in ``guide`` (itself, or the parts of an ``AutoGuideList``)."""
    if isinstance(guide, AutoGuideList):
        return [guide, *(p for part in guide for p in _autoguides(part))]
    return [guide] if isinstance(guide, AutoGuide) else []


def check_guide_plates(model: Callable, guide: Callable, batch: Batch, calling: Calling):
    """Trace the pair on ``batch`` and check that the guide's local latents follow the model's
    subsample; returns the traces ``(guide_trace, model_trace)``.

    An autoguide without ``create_plates`` draws a random subsample of its own for a plate it saw
    subsampled, which silently pairs the batch's rows with other rows' latents. Where the model
    takes the batch's indices (``calling.indexed``) and the plate is ``"data"``, the autoguide is
    wired: its ``create_plates`` becomes :func:`pyro_vi.data.data_plate`, which passes them on.
    Pyro's ``AutoContinuous`` guides (``AutoDiagonalNormal``, ``AutoMultivariateNormal``,
    ``AutoLowRankMultivariateNormal``, ``AutoIAFNormal``, ...) hold one latent vector of a fixed
    size and cannot follow a subsample: they get a one-line error."""
    kw = calling.kwargs(batch)
    gt, mt = trace_pair(model, guide, batch.x, **kw)
    for part in _autoguides(guide):
        frames = getattr(part, "_prototype_frames", {})
        sub = [f.name for f in frames.values() if (f.full_size or f.size) != f.size]
        if isinstance(part, AutoContinuous) and sub:
            raise CallingError(
                f"{type(part).__name__} cannot follow the subsampled plate {sub[0]!r} (it holds "
                "one latent vector for the whole data): use AutoNormal or AutoDelta (or an "
                "AutoGuideList of them), or full-batch steps"
            )
    if not calling.indexed:
        return gt, mt  # the model replays the indices its plate (or the guide's) draws
    wrong = _unfollowed(gt, batch)
    if (
        wrong
        and wrong == DATA_PLATE
        and (auto := _autoguides(guide))
        and auto[0].create_plates is None
    ):
        auto[0].create_plates = data_plate
        gt, mt = trace_pair(model, guide, batch.x, **kw)
        wrong = _unfollowed(gt, batch)
    if wrong:
        raise CallingError(
            f"the guide's plate {wrong!r} draws its own subsample instead of the batch's rows: "
            f"pass it the indices (pyro.plate({wrong!r}, size, subsample=idx); for an autoguide "
            f"create_plates=lambda x, idx=None, size=None, **kw: pyro.plate({wrong!r}, size, "
            "subsample=idx))"
        )
    return gt, mt


def _unfollowed(gt, batch: Batch) -> str | None:
    """The name of a plate over the data set's rows whose indices in the guide trace are not the
    batch's, or None."""
    for name, site in gt.nodes.items():
        if is_subsample_site(site) and site["fn"].size == batch.size:
            value = site["value"]
            if value.shape != batch.idx.shape or not bool((value == batch.idx).all()):
                return name
    return None


def unscaled_batch(mt, batch: Batch) -> str | None:
    """A warning if no observed site of the model trace ``mt`` of ``batch`` is scaled up from the
    batch to the data set.

    With ``B < N`` rows per batch, :func:`pyro_vi.data.data_plate` (a subsampled plate) scales the
    batch's log-likelihood by N/B, so the ELBO and its gradients estimate the full-data ones. A
    model whose observed sites all keep scale 1 has another objective (global latents then see
    the batch as the whole data set)."""
    scales = [
        site["scale"]
        for site in mt.nodes.values()
        if site["type"] == "sample" and site["is_observed"]
    ]
    if scales and all(float(torch.as_tensor(sc).max()) == 1.0 for sc in scales):
        return (
            f"the model's observations in a batch of {len(batch.x)} rows are not scaled to the "
            f"{batch.size} rows of the data set, so fit optimizes a batch's ELBO, not the data "
            "set's: put them in pyro_vi.data.data_plate(x, idx, size) (or pyro.plate('data', "
            "size, subsample=idx))"
        )
    return None
