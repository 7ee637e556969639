r"""``pyro_vi.SVI``: Pyro's :class:`~pyro.infer.SVI`, with captured steps, for any training loop.

Same constructor and calls as ``pyro.infer.SVI``: ``SVI(model, guide, optim, loss)``, then
``svi.step(*args, **kwargs) -> float`` (one gradient step on the loss, e.g. the negative ELBO
:math:`-\mathcal L(\theta, \phi)`) and ``svi.evaluate_loss(*args, **kwargs) -> float``. A step
whose inputs have a signature seen before (shapes, dtypes and devices of the tensor arguments,
values of the plain ones) replays a graph of its loss and gradients captured once
(:class:`pyro_vi.capture.CapturedStep`, checked against the eager step on the capture batch);
the first step of every signature, and every step of an objective that cannot be captured, runs
eagerly exactly as Pyro's SVI runs it. :attr:`SVI.mode` says which ran and why::

    svi = pyro_vi.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for epoch in range(100):
        for batch in data.train.batches(128):
            loss = svi.step(batch.x, idx=batch.idx, size=batch.size)
    svi.mode   # "captured (torchscript)", or "eager (the reason)"

``optim`` is a Pyro optimizer (``pyro.optim.Adam``, ``ClippedAdam``, the ``pyro.optim``
learning-rate schedulers, which wrap ``torch.optim.lr_scheduler``) or a factory
``params -> torch.optim.Optimizer`` (``functools.partial(torch.optim.Adam, lr=1e-3)``); with a
factory, :attr:`SVI.optimizer` is the one torch optimizer over every parameter (available after
:meth:`SVI.init` or the first step, e.g. for a ``torch.optim.lr_scheduler``). :attr:`SVI.beta`
weights the latent sites' log densities (KL warm-up; 1 is the ELBO).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import pyro
import pyro.infer
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger

from .capture import CapturedStep

__all__ = ["SVI", "ScaleLatents"]


class ScaleLatents(Messenger):
    """Multiply the log density of every latent (unobserved) sample site by ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def _refusal(loss: pyro.infer.ELBO) -> str | None:
    """Why steps of ``loss`` cannot be captured, or None."""
    if not callable(getattr(loss, "differentiable_loss", None)):
        return f"{type(loss).__name__} has no differentiable_loss"
    if type(loss).__name__.startswith("Jit"):
        return f"{type(loss).__name__} compiles its own graph"
    return None


class SVI:
    """Stochastic variational inference with captured steps.

    Args:
        model, guide: Pyro callables with the same signature.
        optim: a ``pyro.optim`` optimizer, or a factory ``params -> torch.optim.Optimizer``.
        loss: a Pyro ELBO instance (``Trace_ELBO()``, ``TraceMeanField_ELBO()``,
            ``TraceEnum_ELBO(...)``, ...).
        capture: replay captured steps where the objective allows (True) or never (False).
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: pyro.optim.PyroOptim | Callable[[list[torch.Tensor]], torch.optim.Optimizer],
        loss: pyro.infer.ELBO,
        *,
        capture: bool = True,
    ):
        if isinstance(optim, torch.optim.Optimizer) or not callable(optim):
            raise TypeError(
                f"optim={type(optim).__name__}: pass a Pyro optimizer (pyro.optim.Adam({{'lr': "
                "1e-3}})) or a factory params -> torch.optim.Optimizer (functools.partial("
                "torch.optim.Adam, lr=1e-3)); the parameters do not exist before the first step"
            )
        if not isinstance(loss, pyro.infer.ELBO):
            raise TypeError(f"loss={loss!r}: pass a Pyro ELBO instance such as Trace_ELBO()")
        self.model, self.guide, self.optim, self.loss = model, guide, optim, loss
        self.beta = 1.0
        self.optimizer: torch.optim.Optimizer | None = None  # with a torch factory
        self.params: dict[str, torch.Tensor] = {}  # name -> unconstrained tensor, first seen first
        self._seen: set = set()
        self._captured: CapturedStep | None = None
        refused = None if capture else "capture off"
        refused = refused or _refusal(loss)
        if refused is None:
            self._captured = CapturedStep(
                loss, model, guide, lambda: list(self.params.values()), ScaleLatents
            )
        self._refused = refused
        self.captured_steps = 0

    @property
    def mode(self) -> str:
        """How the last steps ran: "captured (torchscript)", "captured (fx)" or "eager (why)"."""
        if self._refused is not None:
            return f"eager ({self._refused})"
        if self.captured_steps and self._captured.runner:
            return f"captured ({self._captured.runner})"
        return "eager (no step repeated an input signature yet)"

    def _scaled(self):
        return ScaleLatents(self.beta) if self.beta != 1.0 else nullcontext()

    def _take(self, trace) -> None:
        """Adopt the param sites of ``trace`` not seen before (and give a torch optimizer them)."""
        new = {
            name: site["value"].unconstrained()
            for name, site in trace.nodes.items()
            if name not in self.params
        }
        new = {k: p for k, p in new.items() if p.requires_grad}
        if not new:
            return
        self.params.update(new)
        if isinstance(self.optim, pyro.optim.PyroOptim):
            return
        if self.optimizer is None:
            self.optimizer = self.optim(list(new.values()))
        else:
            self.optimizer.add_param_group({"params": list(new.values())})

    def init(self, *args, **kwargs) -> SVI:
        """Create the parameters (one trace of guide and model, no step) and, for a torch factory,
        the optimizer; ``step`` does this itself on its first call."""
        with poutine.trace(param_only=True) as params, torch.no_grad():
            self.loss.loss(self.model, self.guide, *args, **kwargs)
        self._take(params.trace)
        return self

    def _update(self) -> None:
        """Step the parameters that have a gradient, then drop every gradient (None, so that
        parameters a later step does not reach are not stepped with a zero gradient)."""
        params = [p for p in self.params.values() if p.grad is not None]
        if isinstance(self.optim, pyro.optim.PyroOptim):
            self.optim(params)
        else:
            self.optimizer.step()
        for p in params:
            p.grad = None

    def step(self, *args, **kwargs) -> float:
        """One gradient step on the loss of ``model``/``guide`` at these arguments; the loss."""
        if self._captured is not None and self._captured.failure is not None:
            self._refused, self._captured = self._captured.failure, None
        key = None if self._captured is None else self._captured.signature(args, kwargs, self.beta)
        if key is not None and key in self._seen:
            loss = self._captured(args, kwargs, self.beta)
            if loss is not None:
                self._update()
                self.captured_steps += 1
                return torch_item(loss)
            self._refused, self._captured = self._captured.failure, None
        # eager, as pyro.infer.SVI.step: the first step of each input signature
        with poutine.trace(param_only=True) as param_capture, self._scaled():
            loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
        self._take(param_capture.trace)
        self._update()
        if self._captured is not None:
            key = self._captured.signature(args, kwargs, self.beta)
            if key is None:
                self._refused, self._captured = "a non-tensor argument is not a constant", None
            else:
                self._seen.add(key)
        return torch_item(loss)

    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss at these arguments, without gradients or a step (as Pyro's SVI)."""
        with torch.no_grad(), self._scaled():
            return torch_item(self.loss.loss(self.model, self.guide, *args, **kwargs))
