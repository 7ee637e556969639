r"""``pyro_vi.fit``: stochastic variational inference for any Pyro model/guide pair.

Each step draws a batch by index and maximizes an unbiased estimate of the full-data ELBO

.. math:: \mathcal L(\theta, \phi) = \sum_{i=1}^N \mathbb E_{q_\phi(z_i \mid x_i)}
          [\log p_\theta(x_i, z_i) - \log q_\phi(z_i \mid x_i)]
          \approx \frac{N}{B} \sum_{i \in \text{batch}} \ldots

(or whichever Pyro objective is chosen), with one torch optimizer over every parameter in Pyro's
param store. The model and guide are called as ``model(x, idx=idx, size=N)`` (plus ``y=labels`` when
their signature has ``y``) so that local latents can live in ``pyro.plate("data", N,
subsample=idx)``: see :func:`pyro_vi.data.data_plate`. Example::

    vae = VAE(x_dim=64)
    result = fit(vae.model, vae.guide, load("digits", binarize="dynamic"), epochs=20)
    print(result.history[-1]["valid_elbo"])

KL annealing multiplies the log densities of the latent sites (model and guide alike) by
:math:`\beta_t`, rising linearly from ``anneal_start`` > 0 to 1 over ``anneal_epochs`` epochs, so
the objective is :math:`\mathbb E_q[\log p(x \mid z)] - \beta_t\,\mathrm{KL}`.

Per-step overhead is kept low by general means: Pyro's validation runs on the first step only
(``validate="first"``), where a module's parameters are also verified to be the param store's
own, one optimizer steps all parameters, the data stay on the device, and where it pays each
step is replayed from a graph of its loss and gradients captured once per batch shape
(:mod:`pyro_vi.infer.capture`; ``capture=False`` keeps every step eager, ``"auto"`` captures where
the timed eager steps say it pays; ``FitResult.step`` tells which ran).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.infer
import pyro.optim
import pyro.primitives
import torch

from pyro_vi.atomic import remove_partial
from pyro_vi.data import Dataset, Split
from pyro_vi.infer.callbacks import EarlyStopping, ProgressBar, Validation
from pyro_vi.infer.calling import Calling, Plan, plan
from pyro_vi.infer.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_params,
    rng_state,
    save_atomic,
    set_rng_state,
)
from pyro_vi.infer.distributed import DataParallel
from pyro_vi.infer.distributed import setup as setup_distributed
from pyro_vi.infer.schedule import Schedule
from pyro_vi.infer.svi import SVI

__all__ = ["fit", "FitResult", "FitError", "LOSSES", "resolve_device"]

LOSSES = ("elbo", "meanfield", "iwae", "tracegraph", "enum")
CHECKPOINT = "checkpoint.pt"


class FitError(ValueError):
    """A fit cannot start or cannot go on; the message names the problem and the fix."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and how the run went."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_epoch: int | None = None
    stopped_early: bool = False
    #: how steps ran: "captured (torchscript)", "captured (fx)" or "eager (reason)"
    step: str = "eager"
    device: str = "cpu"
    config: dict = field(default_factory=dict)

    @property
    def train_elbo(self) -> list[float]:
        return [h["train_elbo"] for h in self.history]

    @property
    def valid_elbo(self) -> list[float | None]:
        return [h.get("valid_elbo") for h in self.history]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitError("device 'cuda' was asked for but CUDA is not available: use cpu or auto")
    return device


def make_loss(
    loss: str | pyro.infer.ELBO,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    jit: bool = False,
    max_plate_nesting: int | None = None,
) -> pyro.infer.ELBO:
    """A Pyro ELBO from its name: elbo, meanfield, iwae (Rényi α=0), tracegraph, enum."""
    if isinstance(loss, pyro.infer.ELBO):
        return loss
    # one particle needs no particle plate: vectorizing it only adds a plate to every site
    kw = dict(
        num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1
    )
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    infer = pyro.infer
    table = {
        "elbo": (infer.Trace_ELBO, infer.JitTrace_ELBO),
        "meanfield": (infer.TraceMeanField_ELBO, infer.JitTraceMeanField_ELBO),
        "iwae": (infer.RenyiELBO, None),
        "tracegraph": (infer.TraceGraph_ELBO, infer.JitTraceGraph_ELBO),
        "enum": (infer.TraceEnum_ELBO, infer.JitTraceEnum_ELBO),
    }
    if loss not in table:
        raise FitError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    plain, jitted = table[loss]
    if jit and jitted is None:
        raise FitError(f"loss {loss!r} has no JIT variant in Pyro: drop jit")
    if loss == "iwae":
        if num_particles < 2:
            raise FitError("loss 'iwae' needs num_particles >= 2 (the K of IWAE-K)")
        kw["alpha"] = 0.0
    if loss == "tracegraph":
        kw.pop("vectorize_particles")
    return (jitted if jit else plain)(**kw)


@contextmanager
def stale_modules() -> Iterator[list[str]]:
    """Watch ``pyro.module`` calls for a module whose tensors are *not* the param store's (a
    second model registered under a name an earlier one left in the store): the optimizer steps
    the store's tensors, so such a module would silently never train. Yields the list of
    one-line messages, one per such module, for ``fit`` to raise after its first step (raising
    inside the call, Pyro would wrap the error)."""
    original = pyro.primitives.module
    store = pyro.get_param_store()
    problems: list[str] = []

    def module(name, nn_module, update_module_params=False):
        out = original(name, nn_module, update_module_params)
        prefix = name + "$$$"
        stale = [
            n
            for n, p in out.named_parameters()
            if p.requires_grad and prefix + n in store
            and store.get_param(prefix + n).unconstrained() is not p
        ]  # fmt: skip
        if stale:
            problems.append(
                f"pyro.module({name!r}): the param store holds other tensors for "
                f"{prefix}{stale[0]} (from an earlier module of that name), so this module "
                "would never train: call pyro.clear_param_store() before fitting a new model, "
                "or register it under another name"
            )
        return out

    pyro.module = pyro.primitives.module = module
    try:
        yield problems
    finally:
        pyro.module = pyro.primitives.module = original


def _module_of(fn) -> torch.nn.Module | None:
    """The torch module a model or guide is, or whose method it is (through a partial)."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _unregistered(owners, svi: SVI, args, kwargs) -> str | None:
    """After the first step: a one-line error if a module whose method is the model or guide has
    parameters that take part in the loss but are not in Pyro's param store (they would never
    train), else None. Parameters the loss does not reach are left alone. Pyro back-propagates
    only through param sites, so when none of them got a gradient the loss is differentiated
    once more (random state forked) to see which it reaches."""
    store = pyro.get_param_store()
    held = {id(store.get_param(nm).unconstrained()) for nm in store.keys()}
    free = [(o, n, p) for o in owners for n, p in o.named_parameters()
            if p.requires_grad and id(p) not in held]  # fmt: skip
    if not free:
        return None
    used = [p.grad is not None for _, _, p in free]
    if not any(used) and callable(getattr(svi.loss, "differentiable_loss", None)):
        devices = [p.device for _, _, p in free if p.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            loss = svi.loss.differentiable_loss(svi.model, svi.guide, *args, **kwargs)
            grads = torch.autograd.grad(loss, [p for *_, p in free], allow_unused=True)
        used = [g is not None for g in grads]
    names = [(o, n) for (o, n, _), u in zip(free, used, strict=True) if u]
    if not names:
        return None
    owner, name = names[0]
    return (
        f"{len(names)} parameters of {type(owner).__name__} (e.g. {name!r}) take part in the "
        "loss but are not in Pyro's param store, so fit would never train them: register the "
        "module with pyro.module(name, self) in the model or guide, or set requires_grad=False "
        "on parameters meant to stay fixed"
    )


def _splits(data, valid, device, y=None, fields=None, model=None) -> tuple[Split, Split | None]:
    """The training split (with labels ``y`` and per-datapoint ``fields`` where given, which
    ``model`` must take) and the monitored one, on ``device``, checked to be finite."""
    Calling.of(model, fields or {})  # a misspelt option of fit is no keyword of the model
    train, valid_default = _as_split(data, device, y, fields or {})
    valid = valid_default if valid is None else _as_split(valid, device)[0]
    check_finite(train, "training")
    if valid is not None:
        check_finite(valid, "validation")
    return train, valid


def _as_split(data, device, y=None, fields=None) -> tuple[Split, Split | None]:
    if isinstance(data, Dataset):
        if y is not None or fields:
            raise FitError("a Dataset brings its own labels: pass y= and data keywords with a "
                           "tensor or Split of x")  # fmt: skip
        return data.train.to(device), data.valid.to(device)
    if isinstance(data, Split):
        if y is not None and data.y is not None:
            raise FitError("labels twice: the Split has y already; drop fit's y= or the Split's")
        y = data.y if y is None else y
        fields = {**data.fields, **(fields or {})}
        return Split(data.x, y, data.binarize, fields, data.row_end).to(device), None
    if torch.is_tensor(data):
        return Split(data, y, fields=dict(fields or {})).to(device), None
    raise FitError(f"data of type {type(data).__name__}: pass a Dataset, a Split or a tensor")


def _valid_kwargs(calling: Calling, valid: Split) -> dict:
    """The keywords of the validation split's calls: the fields the training data pass."""
    missing = [
        k for k in calling.keywords if (valid.y if k == "y" else valid.fields.get(k)) is None
    ]
    if missing:
        raise FitError(
            f"the validation split has no {missing[0]!r}: pass valid as a Split with the same "
            "fields as the training data"
        )
    return calling.whole(valid)


def _check_options(epochs, batch_size, lr, anneal_start, num_particles, capture, optimizer,
                   lr_decay):  # fmt: skip
    if not isinstance(epochs, int) or epochs <= 0:
        raise FitError(f"epochs={epochs}: use a whole number > 0")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise FitError(f"batch size {batch_size}: use a whole number > 0")
    if not lr > 0:
        raise FitError(f"learning rate {lr}: use a number > 0")
    if not 0 < anneal_start <= 1:
        raise FitError(f"anneal_start={anneal_start}: use a value in (0, 1]")
    if num_particles < 1:
        raise FitError(f"num_particles={num_particles}: use at least 1")
    if capture not in (True, False, "auto"):
        raise FitError(f"capture={capture!r}: use True, False or 'auto'")
    if isinstance(optimizer, pyro.optim.PyroOptim) and lr_decay != 1.0:
        raise FitError(
            "lr_decay with a pyro.optim optimizer: use a pyro.optim scheduler (e.g. "
            "pyro.optim.ExponentialLR) or a torch optimizer name/factory with lr_decay"
        )


def check_finite(split: Split, what: str = "training") -> None:
    """A one-line FitError when ``split`` holds NaN or Inf."""
    if not bool(torch.isfinite(split.x).all()):
        raise FitError(f"{what} data contain NaN or Inf: clean or impute them before fitting")


def optimizer_factory(
    name: str | Callable, lr: float = 1e-3, betas=(0.9, 0.999), clip_norm: float = 10.0
) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """``params -> torch.optim.Optimizer`` for ``"adam"``, ``"clippedadam"`` (Pyro's, clipping
    at ``clip_norm``) or ``"sgd"`` (momentum 0.9); a callable is returned as it is."""
    if callable(name):
        return name
    if name == "adam":
        return functools.partial(torch.optim.Adam, lr=lr, betas=betas)
    if name == "clippedadam":
        from pyro.optim.clipped_adam import ClippedAdam

        return functools.partial(ClippedAdam, lr=lr, betas=betas, clip_norm=clip_norm)
    if name == "sgd":
        return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9)
    raise FitError(f"unknown optimizer {name!r}: choose adam, clippedadam or sgd")


def _first_step_problem(stale: list[str], owners, svi: SVI, args, kwargs) -> str | None:
    """After the first step: a module shadowed in the param store, or one whose parameters are
    not in it (both would silently never train)."""
    return stale[0] if stale else _unregistered(owners, svi, args, kwargs)


def _train_epoch(svi: SVI, batches, schedule: Schedule, step: int, kwargs_of, ddp, owners,
                 validate, where: tuple[str, str]) -> tuple[float, int]:  # fmt: skip
    """One epoch of steps; the summed loss and the step count after it."""
    total = 0.0
    for batch in batches:
        weight = 1.0
        if ddp is not None:  # this rank's slice of the global batch
            batch, weight = ddp.shard(batch)
        svi.beta = schedule.beta(step)
        first = svi.steps == 0
        check = validate is True or (validate == "first" and first)
        with pyro.validation_enabled(bool(check)), stale_modules() if first else nullcontext(
            []
        ) as stale:  # fmt: skip
            value = svi.loss_and_grads(batch.x, **kwargs_of(batch))
        if first and (
            problem := _first_step_problem(stale, owners, svi, (batch.x,), kwargs_of(batch))
        ):
            raise FitError(problem)
        if ddp is not None:  # gradients and loss of the global batch
            value = ddp.all_reduce_gradients(value, weight, svi.param_groups())
        if not math.isfinite(value):
            raise FitError(
                f"loss became {value} at {where[0]}, step {step + 1}: lower the learning rate or "
                f"check the model's scales{where[1]}"
            )
        svi.update()
        total += value
        step += 1
    return total, step


def _save(path: Path, svi: SVI, result: FitResult, epoch: int, step: int, gen, stopping, ddp,
          run_info) -> None:  # fmt: skip
    """The run's checkpoint (rank 0 writes, the others wait for it)."""
    store = pyro.get_param_store()
    params = {nm: store.get_param(nm).unconstrained().detach() for nm in svi.params}
    if not all(bool(torch.isfinite(v).all()) for v in params.values()):
        raise FitError(
            f"parameters became NaN/Inf in epoch {epoch}: lower the learning rate; the last good "
            f"checkpoint ({path}) is intact"
        )
    if ddp is None or ddp.is_writer:
        save_atomic(
            dict(
                params=params, optimizer=svi.state_dict(), epoch=epoch, step=step,
                history=result.history, rng=rng_state(gen), config=result.config,
                run_info=run_info or {}, **(stopping.state_dict() if stopping else {}),
            ),
            path,
        )  # fmt: skip
    if ddp is not None:
        ddp.barrier()  # returns once rank 0 has written the checkpoint


def _resume(path: Path | None, svi: SVI, result: FitResult, gen, stopping, ddp) -> tuple[int, int]:
    """Restore a checkpoint written by :func:`_save`; the epoch and step it ends at."""
    if path is None:
        raise CheckpointError("nothing to resume: pass checkpoint_dir with resume=True")
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: no {CHECKPOINT} in {path.parent}")
    # on the CPU: parameters and optimizer moments are copied to their tensors' device, while
    # Adam's step counts stay CPU scalars (on the GPU each would sync every step)
    state = load_checkpoint(path, map_location="cpu")
    if ddp is None or ddp.is_writer:
        remove_partial(path.parent)  # temporaries of a writer killed mid-write
    restore_params(state["params"], path)
    svi.load_state_dict(state["optimizer"])
    if stopping is not None:
        stopping.load_state_dict(state)
    result.history = list(state["history"])
    set_rng_state(state["rng"], gen)
    return state["epoch"], state["step"]


def fit(
    model: Callable, guide: Callable, data: Dataset | Split | torch.Tensor, *,
    epochs: int = 10, batch_size: int = 128, seed: int = 0, device: str | torch.device = "auto",
    loss: str | pyro.infer.ELBO = "elbo", num_particles: int = 1,
    vectorize_particles: bool = True, jit: bool = False, max_plate_nesting: int | None = None,
    optimizer: str | Callable = "adam", lr: float = 1e-3, lr_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999), clip_norm: float = 10.0,
    anneal_epochs: int = 0, anneal_start: float = 0.01,
    valid: Split | torch.Tensor | None = None, valid_particles: int = 1,
    early_stopping: int | None = None, progress: bool | None = None,
    validate: bool | str = "first", capture: bool | str = "auto",
    checkpoint_dir: str | Path | None = None, checkpoint_every: int = 1, resume: bool = False,
    distributed: bool = False, run_info: dict | None = None,
    callback: Callable[[dict], None] | None = None, y: torch.Tensor | None = None,
    **fields: torch.Tensor,
) -> FitResult:  # fmt: skip
    """Fit ``model``/``guide`` to ``data`` by SVI and return a :class:`FitResult`.

    A short loop over public parts, each usable alone: the step :class:`pyro_vi.SVI`, the
    :class:`~pyro_vi.infer.schedule.Schedule`, the callbacks of :mod:`pyro_vi.infer.callbacks`
    and :func:`~pyro_vi.infer.checkpoint.restore_params` (shared with run loading).

    Args:
        data: a :class:`~pyro_vi.data.Dataset` (train split fitted, valid split monitored), a
            :class:`~pyro_vi.data.Split` or a tensor whose rows are datapoints.
        loss: a name in :data:`LOSSES` or a Pyro ELBO; ``num_particles`` particles (vectorized
            unless ``vectorize_particles=False``); ``jit`` picks Pyro's JIT variant.
        optimizer: ``"adam"``, ``"clippedadam"`` (clipped at ``clip_norm``), ``"sgd"``, a factory
            ``params -> torch.optim.Optimizer`` (learning rate ``lr * lr_decay**epoch``) or a
            ``pyro.optim`` optimizer (its own rate and schedule).
        anneal_epochs: epochs of linear KL warm-up from ``anneal_start`` (> 0) to 1.
        valid: split whose per-datapoint ELBO is monitored each epoch; ``early_stopping`` is the
            patience in epochs, after which the best parameters are restored.
        seed: one seed for Pyro, torch, numpy, Python and the batch order.
        validate: Pyro's validation on every step (True), never (False) or the first (``"first"``).
        capture: replay steps from graphs captured per batch shape (:mod:`pyro_vi.infer.capture`):
            True, False or ``"auto"`` (where timed first steps say it pays); see ``FitResult.step``.
        checkpoint_dir: write ``checkpoint.pt`` there every ``checkpoint_every`` epochs
            (atomically); ``resume=True`` continues from it (``epochs`` is the total).
        distributed: data-parallel over the ranks a launcher started
            (:mod:`pyro_vi.infer.distributed`); ``batch_size`` is the global batch.
        run_info: JSON-able data stored in checkpoints; ``callback`` gets each epoch's record
            and stops the run by returning a true value.
    """
    _check_options(
        epochs, batch_size, lr, anneal_start, num_particles, capture, optimizer, lr_decay
    )
    ddp = _data_parallel(distributed, device)
    device = resolve_device(device) if ddp is None else ddp.device
    train, valid = _splits(data, valid, device, y, fields, model)
    owners = {_module_of(model), _module_of(guide)} - {None}
    for owner in owners:
        owner.to(device)
    p = plan(model, guide, train, batch_size, max_plate_nesting=max_plate_nesting,
             distributed=ddp is not None)  # fmt: skip
    elbo = make_loss(loss, num_particles, vectorize_particles, jit, p.nesting)
    svi = SVI(
        model, guide, optimizer_factory(optimizer, lr, betas, clip_norm), elbo, capture=capture
    )
    schedule = Schedule(lr, lr_decay, anneal_epochs * p.steps_per_epoch, anneal_start)
    result = FitResult(device=str(device), config=_config(
        epochs, batch_size, loss, num_particles, optimizer, lr, lr_decay, anneal_epochs,
        anneal_start, seed, device, capture, ddp))  # fmt: skip
    stopping = EarlyStopping(early_stopping) if valid is not None else None
    callbacks = [] if valid is None else [Validation(
        model, guide, valid, num_particles=valid_particles, nesting=p.nesting, seed=seed,
        kwargs=_valid_kwargs(p.calling, valid), mean_elbo=None if ddp is None else ddp.mean_elbo,
    ), stopping]  # fmt: skip
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    pyro.set_rng_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    start, step = 0, 0
    if resume:
        start, step = _resume(ckpt, svi, result, gen, stopping, ddp)
    svi.planned_steps = (epochs - start) * p.steps_per_epoch
    if ddp is not None:  # every rank starts from rank 0's parameters
        ddp.broadcast_parameters(model, guide)
    quiet = ddp is not None and not ddp.is_writer
    bar = ProgressBar(epochs, start, disable=quiet or (None if progress is None else not progress))
    callbacks += [bar] + ([callback] if callback is not None else [])
    save = ckpt and functools.partial(
        _save, ckpt, svi, result, gen=gen, stopping=stopping, ddp=ddp, run_info=run_info
    )
    t_run = time.perf_counter()
    try:
        step = _epochs(
            svi, p, len(train), schedule, result, callbacks, range(start, epochs), step, gen,
            seed=seed, ddp=ddp, owners=owners,
            validate=validate, save=save, checkpoint_every=checkpoint_every,
            where=f" ({ckpt} is intact)" if ckpt else "",
        )  # fmt: skip
    finally:
        bar.close()
    if stopping is not None and stopping.best is not None:
        result.best_epoch = stopping.best["epoch"]
        stopping.restore_best()
    result.step = "eager" if capture is False else svi.mode
    result.steps, result.seconds = step, time.perf_counter() - t_run
    return result


def _config(epochs, batch_size, loss, num_particles, optimizer, lr, lr_decay, anneal_epochs,
            anneal_start, seed, device, capture, ddp) -> dict:  # fmt: skip
    """The options of a fit as JSON-able data (``FitResult.config``, stored in checkpoints)."""
    return dict(
        epochs=epochs, batch_size=batch_size, loss=loss if isinstance(loss, str) else repr(loss),
        num_particles=num_particles,
        optimizer=optimizer if isinstance(optimizer, str) else "factory",
        lr=lr, lr_decay=lr_decay, anneal_epochs=anneal_epochs, anneal_start=anneal_start,
        seed=seed, device=str(device), capture=capture,
        **({} if ddp is None else {"world_size": ddp.world_size}),
    )  # fmt: skip


def _epochs(svi, p: Plan, n: int, schedule, result, callbacks, epochs, step, gen, *, seed, ddp,
            owners, validate, save, checkpoint_every, where) -> int:  # fmt: skip
    """Run ``epochs`` (a range) of :func:`fit`: the schedule's learning rate, one pass over the
    batches, the epoch's record to ``result.history`` and the callbacks (a true return value
    stops), a checkpoint every ``checkpoint_every`` epochs, at the last and at a stop (``save``).
    Returns the step count."""
    steps_per_epoch = p.steps_per_epoch
    for epoch in epochs:
        t0 = time.perf_counter()
        if svi.optimizers is not None:  # a pyro.optim optimizer keeps its own schedule
            svi.optimizers.set_lr(schedule.lr_at(epoch))
        if ddp is not None:
            ddp.seed_epoch(seed, epoch)
        total, step = _train_epoch(svi, p.batches(gen), schedule, step, p.calling.kwargs, ddp,
                                   owners, validate,
                                   (f"epoch {epoch + 1}", where))  # fmt: skip
        seconds = time.perf_counter() - t0
        record = dict(
            epoch=epoch + 1, train_elbo=-total / steps_per_epoch / n,
            lr=schedule.lr_at(epoch), beta=svi.beta, seconds=seconds, steps=step,
            steps_per_second=steps_per_epoch / seconds,
        )  # fmt: skip
        result.history.append(record)
        stop = any([bool(cb(record)) for cb in callbacks])
        last = epoch + 1 == epochs.stop
        if save is not None and ((epoch + 1) % checkpoint_every == 0 or last or stop):
            save(epoch + 1, step)
        if stop:
            result.stopped_early = True
            break
    return step


def _data_parallel(distributed, device) -> DataParallel | None:
    """The one data-parallel context of a fit: the one passed, or a new one (True), or None."""
    if isinstance(distributed, DataParallel):
        return distributed
    return setup_distributed(resolve_device(device)) if distributed else None
