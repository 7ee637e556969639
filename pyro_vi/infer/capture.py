r"""Captured SVI steps: trace one step's loss and gradients into a flat graph, then replay it.

An eager SVI step runs the model and the guide through Pyro's effect handlers, builds two traces,
turns every site into log-densities, and lets autograd record and replay the whole computation.
For a model whose structure does not depend on the values of its data, all of that produces the
same sequence of tensor operations every step; only the inputs change: the parameters
:math:`\theta, \phi`, the batch :math:`x_B` (and its indices and labels), the KL-annealing factor
:math:`\beta` and the Monte-Carlo noise :math:`\epsilon`. :class:`CapturedStep` records that
sequence once per input signature (shapes, dtypes, device, non-tensor arguments) with
``torch.fx``'s ``make_fx``, forward pass *and* backward pass, so that

.. math:: (\theta, \phi, x_B, \beta) \mapsto \big(\hat{\mathcal L},\;
          \nabla_{\theta,\phi} \hat{\mathcal L}\big)

becomes one graph of ATen operations with the random draws inside it. Replaying the graph
skips Pyro's Python and autograd's bookkeeping; the random draws come from torch's generators as
in the eager step, so one seed still drives the run. The graph is run by TorchScript's executor
(the lowest per-operation cost on small networks; deprecated by PyTorch but present in the pinned
2.14) or, where that fails, by the ``fx`` module's own Python code.

Capture is refused, and the step stays eager, when the objective cannot be replayed faithfully:
data-dependent Python control flow (``make_fx`` raises when a traced value is read as a Python
number), a step that writes into a tensor outside itself (e.g. BatchNorm's running statistics),
non-tensor arguments that are not plain constants, or a replay that disagrees with the eager step
on the capture batch with the same random state (loss and every gradient, to float tolerance).
Example::

    params = [store.get_param(name).unconstrained() for name in store]  # store: the param store
    step = CapturedStep(Trace_ELBO(), vae.model, vae.guide, lambda: params, lambda b: nullcontext())
    loss = step((x,), {"idx": idx, "size": n})  # gradients are now in p.grad
    if loss is None:  # not capturable (step.failure says why): run the eager step
        ...
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pyro
import pyro.infer.util
import pyro.util
import torch
from torch import fx

from pyro_vi.infer import static_dice

__all__ = ["CapturedStep", "traceable_pyro", "trace", "script"]

_PLAIN = (bool, int, float, str, type(None))


@contextmanager
def traceable_pyro():
    """Let ``make_fx`` trace Pyro's ELBOs: ``torch_item`` keeps tensors (detached) instead of
    reading Python numbers, ``warn_if_nan`` and the support check of a distribution built
    while validation was on (e.g. a ``PyroSample`` prior; data-dependent checks) are skipped,
    and enumerated ELBOs take their expectation without a branch on values
    (:mod:`pyro_vi.infer.static_dice`); the caller checks the loss it gets back, and the eager
    first step validated."""
    originals = {"torch_item": pyro.infer.util.torch_item, "warn_if_nan": pyro.util.warn_if_nan}
    replacements = {
        "torch_item": lambda x: x.detach() if torch.is_tensor(x) else x,
        "warn_if_nan": lambda value, *args, **kwargs: value,
    }
    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyro" or name.startswith("pyro.")):
            continue
        for attr, fn in originals.items():
            if getattr(module, attr, None) is fn:
                setattr(module, attr, replacements[attr])
                patched.append((module, attr, fn))
    dist = torch.distributions.Distribution
    patched.append((dist, "_validate_sample", dist._validate_sample))
    dist._validate_sample = lambda self, value: None
    if static_dice.SUPPORTED:  # enumerated ELBOs: the masked sum without a branch on values
        dice = pyro.infer.util.Dice
        patched.append((dice, "compute_expectation", dice.compute_expectation))
        dice.compute_expectation = static_dice.compute_expectation
    try:
        yield
    finally:
        for module, attr, fn in patched:
            setattr(module, attr, fn)


def _writes_outside(gm: fx.GraphModule) -> str | None:
    """Name of an in-place operation on a graph input or constant (or a view of one), if any."""
    base: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            base[node] = node
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            schema = node.target._schema
            for arg, spec in zip(node.args, schema.arguments, strict=False):
                if not isinstance(arg, fx.Node) or spec.alias_info is None:
                    continue
                if spec.alias_info.is_write and arg in base:
                    return str(node.target)
                if not spec.alias_info.is_write and arg in base and schema.returns:
                    ret = schema.returns[0].alias_info
                    if ret is not None and not ret.is_write:  # a view of an outside tensor
                        base[node] = base[arg]
    return None


def _dynamic_shape(gm: fx.GraphModule) -> str | None:
    """Name of an operation whose output shape depends on its input's values (``nonzero``,
    ``masked_select``, boolean indexing), if any: the trace fixed that shape to the capture
    batch's, which a replay on other values would not match."""
    for node in gm.graph.nodes:
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or not (
            torch.Tag.dynamic_output_shape in target.tags
            or torch.Tag.data_dependent_output in target.tags
        ):
            continue
        if target.overloadpacket in _INDEXING and not _bool_index(node):
            continue  # integer indices (gathers, Vindex): the output's shape is the indices'
        return str(target)
    return None


_INDEXING = (torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_,
             torch.ops.aten._index_put_impl_)  # fmt: skip


def _bool_index(node: fx.Node) -> bool:
    """Whether an indexing node indexes by a boolean mask computed from the step's inputs (or
    cannot be told); a mask made of constants alone (``arange(n) < k``) has a fixed count."""
    indices = node.args[1] if len(node.args) > 1 else ()
    for index in indices or ():
        if isinstance(index, fx.Node):
            metas = (index.meta.get("val"), index.meta.get("tensor_meta"))
            dtype = next((m.dtype for m in metas if m is not None), None)
            if dtype is None or (dtype in (torch.bool, torch.uint8) and _from_inputs(index)):
                return True
    return False


def _from_inputs(node: fx.Node) -> bool:
    """Whether ``node`` depends on a placeholder (an input of the graph)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return True
        todo.extend(n.all_input_nodes)
    return False


def trace(fn: Callable, inputs: tuple) -> fx.GraphModule:
    """The ATen graph of ``fn(*inputs)`` (forward and any autograd inside it), dead code removed."""
    from torch.fx.experimental import proxy_tensor

    # oneDNN's fused RNN layers leave their backward's workspace undefined in a traced graph:
    # traced without them, recurrent layers record their cells' plain operations
    with torch.enable_grad(), _light_meta(proxy_tensor), _without_onednn():
        gm = proxy_tensor.make_fx(fn)(*inputs)
    gm.graph.eliminate_dead_code(is_impure_node=_draws_or_impure)
    # unused draws also become outputs, after the real ones: TorchScript's executor would
    # otherwise drop them as dead code (callers read only the leading outputs)
    unused = [
        n for n in gm.graph.nodes if n.op == "call_function" and not n.users and _draws_or_impure(n)
    ]
    if unused:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = ([*out.args[0], *unused],)
    gm.recompile()
    return gm


@contextmanager
def _without_onednn():
    """oneDNN off for the block (``torch.backends.mkldnn.flags`` would also reset TF32 and warn)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


@contextmanager
def _light_meta(proxy_tensor):
    """While tracing, skip the fake-tensor copy ``make_fx`` keeps of every real intermediate as
    ``node.meta["val"]`` (a new FakeTensorMode each: about half the time of a trace); nothing
    here reads it, and ``node.meta["tensor_meta"]`` still records shapes and dtypes."""
    original = getattr(proxy_tensor, "extract_val", None)
    if original is None:  # another torch: trace as it is
        yield
        return

    def extract_val(val, include_real=False):
        if isinstance(val, torch.Tensor) and not proxy_tensor.is_fake(val):
            return None
        return original(val, include_real)

    proxy_tensor.extract_val = extract_val
    try:
        yield
    finally:
        proxy_tensor.extract_val = original


def _draws_or_impure(node: fx.Node) -> bool:
    """Kept although unused: a random draw (a plate's unused subsample, say) advances the
    generator, so dropping it would shift every later draw away from the eager run's."""
    target = node.target
    if (
        isinstance(target, torch._ops.OpOverload)
        and torch.Tag.nondeterministic_seeded in target.tags
    ):
        return True
    return node.is_impure()


def script(gm: fx.GraphModule, inputs: tuple) -> Callable | None:
    """``gm`` for TorchScript's executor (None where TorchScript is absent or cannot take it)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit.trace is marked deprecated
            return torch.jit.trace(gm, inputs, check_trace=False)
    except Exception:
        return None


def _inputs(args, kwargs, beta, device) -> list:
    """The graph's data inputs: tensor arguments (positional, then keywords by name) and beta."""
    values = [a for a in args if torch.is_tensor(a)]
    values += [kwargs[k] for k in sorted(kwargs) if torch.is_tensor(kwargs[k])]
    beta_t = (
        torch.tensor(float(beta), dtype=torch.float64, device=device) if beta != 1.0 else _EMPTY
    )
    return [*values, beta_t]


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _same_rng(state, device: torch.device) -> bool:
    """The generators stand where ``state`` left them: the replay drew as many numbers as the
    eager step, so the steps after it draw the same noise too."""
    now = _rng_state(device)
    return torch.equal(now[0], state[0]) and (state[1] is None or torch.equal(now[1], state[1]))


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 * float(b.detach().abs().max()) + 1e-6 if b.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=tol, equal_nan=True))


class CapturedStep:
    """Loss and gradients of ``elbo.differentiable_loss(model, guide, *args, **kwargs)``, captured
    once per input signature and replayed.

    Args:
        elbo: a Pyro ELBO with ``differentiable_loss`` (Trace_ELBO, TraceMeanField_ELBO,
            TraceEnum_ELBO, ...).
        params: returns the tensors to differentiate (Pyro's unconstrained parameters).
        scaled: context manager factory for the KL-annealing factor ``beta`` (a float or a
            0-d tensor); entered around the objective.

    Calling the step sets ``p.grad`` of the parameters that the objective reaches and returns the
    0-d loss, or returns None (gradients untouched) when the step cannot be captured; the reason
    is kept in :attr:`failure`.
    """

    def __init__(
        self,
        elbo: pyro.infer.ELBO,
        model: Callable,
        guide: Callable,
        params: Callable[[], list[torch.Tensor]],
        scaled: Callable[[Any], AbstractContextManager],
    ):
        self.elbo, self.model, self.guide = elbo, model, guide
        self.params, self.scaled = params, scaled
        self.graphs: dict[tuple, tuple[Callable, list[int]]] = {}
        self.failure: str | None = None
        self.runner: str | None = None

    def signature(self, args, kwargs, beta: float = 1.0) -> tuple | None:
        """The key a graph is captured under: parameter count, beta's use, and per argument its
        tensor's shape, dtype, device and requires_grad or its plain value (None: an argument
        that is neither, which cannot be captured)."""
        key: list = [beta != 1.0, len(self.params())]
        for k, v in [(None, a) for a in args] + sorted(kwargs.items()):
            if torch.is_tensor(v):
                key.append((k, tuple(v.shape), v.dtype, v.device, v.requires_grad))
            elif isinstance(v, _PLAIN):
                key.append((k, v))
            else:
                return None
        return tuple(key)

    def _objective(self, args, kwargs, tensor_keys):
        params = self.params()
        n = len(params)

        def run(*flat):
            *values, beta = flat[n:]
            call_args, call_kwargs = list(args), dict(kwargs)
            for key, value in zip(tensor_keys, values, strict=True):
                if isinstance(key, int):
                    call_args[key] = value
                else:
                    call_kwargs[key] = value
            with self.scaled(beta if beta.dim() == 0 and beta.numel() == 1 else 1.0):
                loss = self.elbo.differentiable_loss(
                    self.model, self.guide, *call_args, **call_kwargs
                )
            grads = torch.autograd.grad(loss, flat[:n], allow_unused=True)
            return [loss.detach()] + [g for g in grads if g is not None], [
                i for i, g in enumerate(grads) if g is not None
            ]

        return run, params

    def _capture(self, args, kwargs, beta, state, device) -> tuple[Callable, list[int], list] | str:
        """Trace, check and return (runner, used parameters, this step's outputs), or why not;
        ``state``: the random state this step starts from."""
        tensor_keys = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        tensor_keys += [k for k in sorted(kwargs) if torch.is_tensor(kwargs[k])]
        run, params = self._objective(args, kwargs, tensor_keys)
        flat = (*params, *_inputs(args, kwargs, beta, device))
        used: list[int] = []

        def outputs_only(*inputs):
            out, idx = run(*inputs)
            used[:] = idx
            return out

        try:
            with traceable_pyro(), pyro.validation_enabled(False):
                gm = trace(outputs_only, flat)
        except Exception as e:  # data-dependent control flow, untraceable operations
            return f"not traceable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        dynamic = _dynamic_shape(gm)
        if dynamic is not None:
            return f"shapes depend on the data's values ({dynamic})"
        mutated = _writes_outside(gm)
        if mutated is not None:
            return f"the step writes into a tensor outside it ({mutated})"
        scripted = script(gm, flat)  # else the fx module's own code
        runners = ([("torchscript", scripted)] if scripted is not None else []) + [("fx", gm)]
        _set_rng_state(state, device)  # tracing drew noise: this step's draws start again
        with pyro.validation_enabled(False), torch.enable_grad():
            eager, eager_used = run(*flat)
        after = _rng_state(device)
        if any(g.is_sparse for g in eager):
            return "sparse gradients"
        for name, runner in runners:
            _set_rng_state(state, device)
            try:
                with torch.no_grad():
                    replay = list(runner(*flat))[: len(eager)]
            except Exception:  # a graph this runner cannot run: try the next, else refuse
                continue
            if eager_used == used and len(replay) == len(eager) and _same_rng(after, device):
                if all(_agree(r, e) for r, e in zip(replay, eager, strict=True)):
                    self.runner = name
                    return runner, used, replay
        return "the replayed step disagrees with the eager one"

    def __call__(self, args: tuple, kwargs: dict, beta: float = 1.0) -> torch.Tensor | None:
        if self.failure is not None:
            return None
        key = self.signature(args, kwargs, beta)
        if key is None:
            self.failure = "a non-tensor argument is not a plain constant"
            return None
        params = self.params()
        device = params[0].device if params else torch.device("cpu")
        entry = self.graphs.get(key)
        if entry is None:  # the check replay of the capture is this step
            state = _rng_state(device)
            captured = self._capture(args, kwargs, beta, state, device)
            if isinstance(captured, str):  # the eager step draws this step's noise again
                _set_rng_state(state, device)
                self.failure = captured
                return None
            runner, used, (loss, *grads) = captured
            self.graphs[key] = (runner, used)
        else:
            runner, used = entry
            with torch.no_grad():
                loss, *grads = runner(*params, *_inputs(args, kwargs, beta, device))[
                    : len(used) + 1
                ]
        for i, g in zip(used, grads, strict=True):
            p = params[i]
            p.grad = g if p.grad is None else p.grad + g
        return loss


_EMPTY = torch.zeros(0)
