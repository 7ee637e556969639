r"""``pyro_vi.SVI``: Pyro's :class:`~pyro.infer.SVI`, with captured steps, for any training loop.

Same constructor and calls as ``pyro.infer.SVI``: ``SVI(model, guide, optim, loss)``, then
``svi.step(*args, **kwargs) -> float`` (one gradient step on the loss, e.g. the negative ELBO
:math:`-\mathcal L(\theta, \phi)`) and ``svi.evaluate_loss(*args, **kwargs) -> float``. A step
whose inputs have a signature seen before (shapes, dtypes and devices of the tensor arguments,
values of the plain ones) replays a graph of its loss and gradients captured once
(:class:`pyro_vi.infer.capture.CapturedStep`, checked against the eager step on the capture batch);
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
factory, :attr:`SVI.optimizer` is the one torch optimizer over every dense parameter (available
after :meth:`SVI.init` or the first step, e.g. for a ``torch.optim.lr_scheduler``), and
parameters with sparse gradients (per-datapoint tables read with ``F.embedding(...,
sparse=True)``) get torch's ``SparseAdam`` with the same learning rate and betas
(:class:`ParamOptimizer`). :attr:`SVI.beta` weights the latent sites' log densities (KL warm-up;
1 is the ELBO).

A step is :meth:`SVI.loss_and_grads` (the loss; gradients left on the parameters) followed by
:meth:`SVI.update` (the optimizer step): a data-parallel loop all-reduces the gradients in
between (:meth:`pyro_vi.infer.distributed.DataParallel.step`). :meth:`SVI.state_dict` and
:meth:`SVI.load_state_dict` carry the optimizer state (moments, step counts) for checkpoints.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pyro
import pyro.infer
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger

from pyro_vi.infer.capture import CapturedStep

__all__ = ["SVI", "ScaleLatents", "ParamOptimizer", "Payoff"]


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


class ParamOptimizer:
    """One torch optimizer for the dense parameters of Pyro's param store, and torch's
    ``SparseAdam`` (lazy Adam: rows absent from a batch keep their values and moments) for those
    whose gradients are sparse, with the dense one's learning rate and betas. Parameters are
    grouped by their param-store names in the order they appeared, which is also the layout of
    :meth:`state_dict`::

        opt = ParamOptimizer(functools.partial(torch.optim.Adam, lr=1e-3))
        opt.add(["loc", "scale"])      # after a backward pass: sparse or dense by the gradient
        opt.step()                     # steps and drops the gradients
    """

    def __init__(self, factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer]):
        self.factory = factory
        self.groups: dict[str, list[list[str]]] = {"dense": [], "sparse": []}
        self.opts: dict[str, torch.optim.Optimizer] = {}

    def __len__(self) -> int:
        return sum(len(g) for groups in self.groups.values() for g in groups)

    def names(self) -> list[str]:
        """Param-store names of every parameter taken in, dense first."""
        return [nm for groups in self.groups.values() for g in groups for nm in g]

    def _sparse(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        dense = self.opts.get("dense") or self.factory([torch.zeros(1, requires_grad=True)])
        lr, betas = dense.defaults.get("lr", 1e-3), dense.defaults.get("betas", (0.9, 0.999))
        return torch.optim.SparseAdam(params, lr=lr, betas=betas)

    def add(self, names: list[str], kind: str | None = None) -> None:
        """Take in the store's parameters ``names``; ``kind`` "dense" or "sparse", or None to
        tell by their gradients (sparse if the gradient is)."""
        if kind is None:
            store = pyro.get_param_store()
            grads = {nm: store.get_param(nm).unconstrained().grad for nm in names}
            sparse = [nm for nm in names if grads[nm] is not None and grads[nm].is_sparse]
            self.add(sparse, "sparse")
            self.add([nm for nm in names if nm not in sparse], "dense")
            return
        if not names:
            return
        store = pyro.get_param_store()
        params = [store.get_param(nm).unconstrained() for nm in names]
        if kind in self.opts:
            self.opts[kind].add_param_group({"params": params})
        else:
            self.opts[kind] = (self._sparse if kind == "sparse" else self.factory)(params)
        self.groups[kind].append(list(names))

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for opt in self.opts.values():
            for g in opt.param_groups:
                g["lr"] = lr

    def step(self) -> None:
        """Step every optimizer, then drop the gradients (None)."""
        for opt in self.opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """``{"groups": {"dense": [[names]], "sparse": [[names]]}, "dense": .., "sparse": ..}``."""
        return {"groups": self.groups, **{k: o.state_dict() for k, o in self.opts.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Take in the groups of ``state`` (the store must hold those names) and their moments."""
        for kind in ("dense", "sparse"):
            for names in state["groups"][kind]:
                self.add(names, kind)
            if kind in self.opts:
                self.opts[kind].load_state_dict(state[kind])


class Payoff:
    r"""Whether capturing pays over a run, from what this process has measured.

    A capture costs about ``cost_ratio`` eager steps (tracing replays the step under ``make_fx``,
    TorchScript compiles it, and a check runs it eagerly and replayed once more) and turns a step
    of :math:`t_e` seconds into about ``speedup`` :math:`\cdot t_e`. Both start from priors
    measured on this project's pairs and are replaced by the medians of what captures in this
    process actually cost and saved (:meth:`record`). Over :math:`n` remaining steps capture
    pays when :math:`n\,t_e\,(1 - \text{speedup}) > \text{margin} \cdot \text{cost}`."""

    #: priors, from what Payoff recorded in 60-epoch fits of the 64-16-2 digits VAE and the
    #: 2-10-1 toy (batch 128, one thread, 2026-12-03): a capture cost 55-81 eager steps, a
    #: captured step 0.20-0.37 of an eager one
    COST_RATIO, SPEEDUP, MARGIN = 60.0, 0.3, 2.0
    costs: list[float] = []  # capture seconds / eager step seconds, this process
    speedups: list[float] = []  # captured / eager step seconds, this process

    @classmethod
    def record(cls, *, cost_ratio: float | None = None, speedup: float | None = None) -> None:
        """Add one capture's measured cost (in eager steps) or speed-up to this process's."""
        if cost_ratio is not None:
            cls.costs.append(cost_ratio)
        if speedup is not None:
            cls.speedups.append(speedup)

    @classmethod
    def estimate(cls, step_seconds: float, remaining: int) -> tuple[bool, str]:
        """(capture?, why) for ``remaining`` steps of ``step_seconds`` each."""
        cost = step_seconds * (statistics.median(cls.costs) if cls.costs else cls.COST_RATIO)
        speedup = statistics.median(cls.speedups) if cls.speedups else cls.SPEEDUP
        saved = remaining * step_seconds * (1.0 - speedup)
        why = (
            f"≈{saved:.2f} s saved over {remaining} steps of {1e3 * step_seconds:.2f} ms against "
            f"≈{cost:.2f} s to capture"
        )
        return saved > cls.MARGIN * cost, why


class SVI:
    """Stochastic variational inference with captured steps.

    Args:
        model, guide: Pyro callables with the same signature.
        optim: a ``pyro.optim`` optimizer, or a factory ``params -> torch.optim.Optimizer``.
        loss: a Pyro ELBO instance (``Trace_ELBO()``, ``TraceMeanField_ELBO()``,
            ``TraceEnum_ELBO(...)``, ...).
        capture: replay captured steps where the objective allows (True), never (False), or
            where it pays (``"auto"``): the first :attr:`MEASURED` repeated steps run eagerly and
            are timed, then :class:`Payoff` decides from them and :attr:`planned_steps` (the
            steps the loop will make in all; None: an open-ended loop, which captures). Once
            captured, :attr:`MEASURED` replays after the first :attr:`WARMUP` are timed too, and
            if their median is not below the eager steps' median the capture is dropped and the
            rest of the run is eager (steps dominated by large matrix products gain nothing).
    """

    #: eager steps timed before ``capture="auto"`` decides (and replays timed after it)
    MEASURED = 8
    #: replays not timed (the capture itself, TorchScript's first optimizing runs)
    WARMUP = 4

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: pyro.optim.PyroOptim | Callable[[list[torch.Tensor]], torch.optim.Optimizer],
        loss: pyro.infer.ELBO,
        *,
        capture: bool | str = True,
        planned_steps: int | None = None,
    ):
        if capture not in (True, False, "auto"):
            raise ValueError(f"capture={capture!r}: use True, False or 'auto'")
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
        #: with a torch factory: the dense and sparse optimizers over the store's parameters
        self.optimizers = None if isinstance(optim, pyro.optim.PyroOptim) else ParamOptimizer(optim)
        self.params: dict[str, torch.Tensor] = {}  # name -> unconstrained tensor, first seen first
        self._seen: set = set()
        self._captured: CapturedStep | None = None
        self._refused = None if capture else "capture off"
        self._refused = self._refused or _refusal(loss)
        if self._refused is None:
            self._captured = CapturedStep(
                loss, model, guide, lambda: list(self.params.values()), ScaleLatents
            )
        self.captured_steps = 0
        self.steps = 0  # calls of loss_and_grads (steps begun)
        self.auto = capture == "auto"
        self._check_replays = capture == "auto"  # compare replayed with eager step times
        self._replay_timings: list[float] = []
        self.planned_steps = planned_steps
        self._timings: list[float] = []  # seconds of the eager steps of a seen signature

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """With a torch factory, the torch optimizer over the dense parameters (None before the
        first step or :meth:`init`, and with a Pyro optimizer)."""
        return None if self.optimizers is None else self.optimizers.opts.get("dense")

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

    def _refuse(self, reason: str) -> None:
        self._refused, self._captured = reason, None

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
        if self.optimizers is not None:
            self.optimizers.add(list(new))
            if self.optimizers.groups["sparse"] and self._captured is not None:
                self._refuse("sparse gradients")

    def init(self, *args, **kwargs) -> SVI:
        """Create the parameters (one trace of guide and model, no step) and, for a torch factory,
        the optimizer; ``step`` does this itself on its first call."""
        with poutine.trace(param_only=True) as params, torch.no_grad():
            self.loss.loss(self.model, self.guide, *args, **kwargs)
        self._take(params.trace)
        return self

    def param_groups(self) -> dict[str, list[list[str]]]:
        """Param-store names of the parameters stepped, by kind ("dense", "sparse")."""
        if self.optimizers is not None:
            return self.optimizers.groups
        return {"dense": [list(self.params)], "sparse": []}

    def loss_and_grads(self, *args, **kwargs) -> float:
        """The loss at these arguments, with its gradients left on the parameters (no step)."""
        if self._captured is not None and self._captured.failure is not None:
            self._refuse(self._captured.failure)
        self.steps += 1
        key = None if self._captured is None else self._captured.signature(args, kwargs, self.beta)
        if key is not None and key in self._seen and not (self.auto and self._undecided()):
            loss = self._replay(args, kwargs, fresh=key not in self._captured.graphs)
            if loss is not None:
                return loss
        return self._eager(args, kwargs)

    def _eager(self, args, kwargs) -> float:
        """Exactly as ``pyro.infer.SVI.step``: the first step of each input signature, and with
        ``capture="auto"`` the steps timed before deciding."""
        t0 = time.perf_counter()
        with poutine.trace(param_only=True) as param_capture, self._scaled():
            loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
        self._take(param_capture.trace)
        loss = torch_item(loss)
        if self._captured is not None:
            key = self._captured.signature(args, kwargs, self.beta)  # the parameters now known
            if key is None:
                self._refuse("a non-tensor argument is not a constant")
            elif key in self._seen:
                self._timings.append(time.perf_counter() - t0)
            else:
                self._seen.add(key)
        return loss

    def _undecided(self) -> bool:
        """With capture="auto": True while eager steps are being timed (or when capture would
        not pay, which refuses it); False once capture is on."""
        remaining = None if self.planned_steps is None else max(self.planned_steps - self.steps, 0)
        if remaining is not None and len(self._timings) + remaining < self.MEASURED:
            self._refuse(
                f"capture would not pay: {self.planned_steps} steps planned, too few to time "
                "and capture"
            )
            return True
        if len(self._timings) < self.MEASURED:
            return True
        self.auto = False
        if remaining is not None:
            step_seconds = statistics.median(self._timings) if self._timings else 0.0
            pays, why = Payoff.estimate(step_seconds, remaining + 1)
            if not pays:
                self._refuse(f"capture would not pay: {why}")
                return True
        return False

    def _replay(self, args, kwargs, fresh: bool) -> float | None:
        """A captured step (capturing this signature first if ``fresh``), timed for
        :class:`Payoff`; None (capture refused from here on) where it cannot be captured."""
        eager = statistics.median(self._timings) if self._timings else None
        t0 = time.perf_counter()
        loss = self._captured(args, kwargs, self.beta)
        if loss is None:
            self._refuse(self._captured.failure)
            return None
        loss = torch_item(loss)
        seconds = time.perf_counter() - t0
        self.captured_steps += 1
        if eager:
            if fresh:
                Payoff.record(cost_ratio=seconds / eager)
            elif self.captured_steps == 4:  # past TorchScript's first optimizing runs
                Payoff.record(speedup=seconds / eager)
            if self._check_replays and not fresh and self.captured_steps > self.WARMUP:
                self._judge_replays(seconds, eager)
        return loss

    def _judge_replays(self, seconds: float, eager: float) -> None:
        """capture="auto": once :attr:`MEASURED` replays are timed, drop a capture that is not
        faster than the eager step (the next steps run eagerly)."""
        self._replay_timings.append(seconds)
        if len(self._replay_timings) < self.MEASURED:
            return
        self._check_replays = False
        replayed = statistics.median(self._replay_timings)
        if replayed >= eager:
            self._refuse(
                f"captured steps were not faster: {1e3 * replayed:.2f} ms replayed against "
                f"{1e3 * eager:.2f} ms eager"
            )

    def update(self) -> None:
        """Step the parameters that have a gradient, then drop every gradient (None, so that
        parameters a later step does not reach are not stepped with a zero gradient)."""
        if self.optimizers is not None:
            self.optimizers.step()
            return
        params = [p for p in self.params.values() if p.grad is not None]
        self.optim(params)
        for p in params:
            p.grad = None

    def step(self, *args, **kwargs) -> float:
        """One gradient step on the loss of ``model``/``guide`` at these arguments; the loss."""
        loss = self.loss_and_grads(*args, **kwargs)
        self.update()
        return loss

    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss at these arguments, without gradients or a step (as Pyro's SVI)."""
        with torch.no_grad(), self._scaled():
            return torch_item(self.loss.loss(self.model, self.guide, *args, **kwargs))

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state: :meth:`ParamOptimizer.state_dict`, or a Pyro optimizer's
        ``get_state()``."""
        if self.optimizers is not None:
            return self.optimizers.state_dict()
        return self.optim.get_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a fresh SVI whose parameters are in the store."""
        if self.optimizers is None:
            self.optim.set_state(state)
            return
        self.optimizers.load_state_dict(state)
        store = pyro.get_param_store()
        for nm in self.optimizers.names():
            self.params.setdefault(nm, store.get_param(nm).unconstrained())
        if self.optimizers.groups["sparse"] and self._captured is not None:
            self._refuse("sparse gradients")
