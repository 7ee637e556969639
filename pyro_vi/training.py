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
(``validate="first"``), ``pyro.module`` registrations are cached after the first step (the module's
parameters are verified to be the param store's own), one optimizer steps all parameters, the
data stay on the device, and from the second step on each step is replayed from a graph of its
loss and gradients captured once per batch shape (:mod:`pyro_vi.capture`; ``capture=False``
keeps every step eager, ``"auto"`` captures runs long enough to pay for it; ``FitResult.step``
tells which ran).
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.infer
import pyro.primitives
import torch

from .atomic import remove_partial
from .capture import CapturedStep
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from .data import Dataset, Split
from .distributed import setup as setup_distributed
from .evaluate import elbo as elbo_per_datapoint
from .evaluate import max_plate_nesting as plate_nesting
from .evaluate import plate_nesting_of, trace_pair
from .svi import ScaleLatents

__all__ = ["fit", "FitResult", "FitError", "LOSSES", "resolve_device"]

LOSSES = ("elbo", "meanfield", "iwae", "tracegraph", "enum")
#: ``capture="auto"`` captures runs of at least this many planned steps: a capture costs about
#: 0.2 s per batch shape (about 1.6 s more for the first in a process) and saved 0.9-2.4 ms per
#: step on the models measured (BENCHMARKS.md)
CAPTURE_MIN_STEPS = 500
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
def cached_modules(cache: bool = True) -> Iterator[list[str]]:
    """Skip re-registering an ``nn.Module`` whose parameters already are the param store's own.

    ``pyro.module`` walks every parameter through Pyro's effect stack on every call; once a
    module is registered and its tensors are the store's, the walk changes nothing, so the cached
    version returns at once. The cache is checked against the store's size on every call.

    Yields a list that collects a message for each module whose tensors are *not* the store's
    (a second model registered under a name an earlier one left in the store): the optimizer
    steps the store's tensors, so such a module would silently never train.

    ``cache=False`` only checks: Pyro's ``loss_and_grads`` of ``RenyiELBO`` (and of Trace_ELBO and
    TraceEnum_ELBO) back-propagates only when the traces hold ``param`` sites, which a cached
    registration does not leave.
    """
    original = pyro.primitives.module
    store = pyro.get_param_store()
    seen: dict[str, tuple[int, int]] = {}
    problems: list[str] = []

    def module(name, nn_module, update_module_params=False):
        key = seen.get(name)
        if cache and key is not None and key == (id(nn_module), len(store)):
            return nn_module
        out = original(name, nn_module, update_module_params)
        prefix = name + "$$$"
        stale = [
            n
            for n, p in out.named_parameters()
            if p.requires_grad and prefix + n in store
            and store.get_param(prefix + n).unconstrained() is not p
        ]  # fmt: skip
        if stale:  # reported by fit after the step (raising here, Pyro would wrap the error)
            problems.append(
                f"pyro.module({name!r}): the param store holds other tensors for "
                f"{prefix}{stale[0]} (from an earlier module of that name), so this module "
                "would never train: call pyro.clear_param_store() before fitting a new model, "
                "or register it under another name"
            )
        else:
            seen[name] = (id(nn_module), len(store))
        return out

    pyro.module = pyro.primitives.module = module
    try:
        yield problems
    finally:
        pyro.module = pyro.primitives.module = original


def _module_of(fn) -> torch.nn.Module | None:
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _unregistered(owners) -> str | None:
    """After the first backward pass: a one-line error if a module whose method is the model or
    guide has parameters that got a gradient but are not in Pyro's param store (``fit`` steps
    only the store's tensors, so they would never train), else None. Parameters the loss does not
    use (no gradient) are left alone."""
    store = pyro.get_param_store()
    held = {id(store.get_param(nm).unconstrained()) for nm in store.keys()}
    for owner in owners:
        names = [n for n, p in owner.named_parameters() if p.grad is not None and id(p) not in held]
        if names:
            return (
                f"{len(names)} parameters of {type(owner).__name__} (e.g. {names[0]!r}) take part "
                "in the loss but are not in Pyro's param store, so fit would never train them: "
                "register the module with pyro.module(name, self) in the model or guide, or set "
                "requires_grad=False on parameters meant to stay fixed"
            )
    return None


def _unscaled_batch(mt, batch) -> str | None:
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


def _takes_y(fn) -> bool:
    try:
        return "y" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _as_split(data, device) -> tuple[Split, Split | None]:
    if isinstance(data, Dataset):
        return data.train.to(device), data.valid.to(device)
    if isinstance(data, Split):
        return data.to(device), None
    if torch.is_tensor(data):
        return Split(data.to(device)), None
    raise FitError(f"data of type {type(data).__name__}: pass a Dataset, a Split or a tensor")


def _check_options(epochs, batch_size, lr, anneal_start, num_particles):
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


def check_finite(split: Split, what: str = "training") -> None:
    """A one-line FitError when ``split`` holds NaN or Inf."""
    if not bool(torch.isfinite(split.x).all()):
        raise FitError(f"{what} data contain NaN or Inf: clean or impute them before fitting")


def _make_optimizer(name, params, lr, betas, clip_norm):
    if callable(name):
        return name(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "clippedadam":
        from pyro.optim.clipped_adam import ClippedAdam

        return ClippedAdam(params, lr=lr, betas=betas, clip_norm=clip_norm)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise FitError(f"unknown optimizer {name!r}: choose adam, clippedadam or sgd")


class _Optimizers:
    """One optimizer for every dense parameter of the param store, and torch's SparseAdam (lazy
    Adam) for parameters whose gradients are sparse (per-datapoint tables read with
    ``F.embedding(idx, table, sparse=True)``): rows absent from a batch keep their values and
    their moments. Parameters are grouped by name in the order they appeared."""

    def __init__(self, name, lr, betas, clip_norm):
        self.spec = (name, lr, betas, clip_norm)
        self.groups: dict[str, list[list[str]]] = {"dense": [], "sparse": []}
        self.opts: dict[str, torch.optim.Optimizer] = {}

    def __len__(self) -> int:
        return sum(len(g) for groups in self.groups.values() for g in groups)

    def names(self) -> list[str]:
        return [nm for groups in self.groups.values() for g in groups for nm in g]

    def add(self, kind: str, names: list[str]) -> None:
        if not names:
            return
        store = pyro.get_param_store()
        params = [store.get_param(nm).unconstrained() for nm in names]
        name, lr, betas, clip_norm = self.spec
        if kind in self.opts:
            self.opts[kind].add_param_group({"params": params})
        elif kind == "sparse":
            self.opts[kind] = torch.optim.SparseAdam(params, lr=lr, betas=betas)
        else:
            self.opts[kind] = _make_optimizer(name, params, lr, betas, clip_norm)
        self.groups[kind].append(list(names))

    def discover(self) -> None:
        """Take in the store's parameters not seen yet, after a backward pass."""
        store = pyro.get_param_store()
        known = set(self.names())
        new = [nm for nm in store.keys() if nm not in known]
        sparse = [nm for nm in new if _grad_is_sparse(store.get_param(nm).unconstrained())]
        self.add("sparse", sparse)
        self.add("dense", [nm for nm in new if nm not in sparse])

    def set_lr(self, lr: float) -> None:
        for opt in self.opts.values():
            for g in opt.param_groups:
                g["lr"] = lr

    def step(self) -> None:
        for opt in self.opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"groups": self.groups, **{k: o.state_dict() for k, o in self.opts.items()}}

    def load_state_dict(self, state: dict) -> None:
        for kind in ("dense", "sparse"):
            for names in state["groups"][kind]:
                self.add(kind, names)
            if kind in self.opts:
                self.opts[kind].load_state_dict(state[kind])


def _grad_is_sparse(p: torch.Tensor) -> bool:
    return p.grad is not None and p.grad.is_sparse


def fit(
    model: Callable,
    guide: Callable,
    data: Dataset | Split | torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    loss: str | pyro.infer.ELBO = "elbo",
    num_particles: int = 1,
    vectorize_particles: bool = True,
    jit: bool = False,
    max_plate_nesting: int | None = None,
    optimizer: str | Callable = "adam",
    lr: float = 1e-3,
    lr_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    clip_norm: float = 10.0,
    anneal_epochs: int = 0,
    anneal_start: float = 0.01,
    valid: Split | torch.Tensor | None = None,
    valid_particles: int = 1,
    early_stopping: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool | None = None,
    validate: bool | str = "first",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    distributed: bool = False,
    capture: bool | str = "auto",
    run_info: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by SVI and return a :class:`FitResult`.

    Args:
        data: a :class:`~pyro_vi.data.Dataset` (its train split is fitted, its valid split
            monitored), a :class:`~pyro_vi.data.Split` or a tensor whose rows are datapoints.
        loss: a name in :data:`LOSSES` or a Pyro ELBO instance; ``num_particles`` particles,
            vectorized by default; ``jit`` picks Pyro's JIT variant.
        optimizer: ``"adam"``, ``"clippedadam"`` (gradient clipping at ``clip_norm``), ``"sgd"``
            or a factory ``params -> torch.optim.Optimizer``; the learning rate of epoch ``e`` is
            ``lr * lr_decay**e``.
        anneal_epochs: epochs of linear KL warm-up from ``anneal_start`` (> 0) to 1.
        valid: split monitored each epoch (per-datapoint ELBO); ``early_stopping`` = patience
            in epochs, after which the best parameters are restored.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``; data and the model's module move there once.
        seed: one seed for Pyro, torch, numpy, Python and the batch order.
        progress: tqdm bar (None: only on a terminal).
        validate: Pyro's validation on every step (True), never (False) or the first step only.
        checkpoint_dir: write ``checkpoint.pt`` there every ``checkpoint_every`` epochs
            (atomically); with ``resume=True`` continue from it (``epochs`` is the total).
        distributed: data-parallel over the ranks a launcher (``torchrun``) started, see
            :mod:`pyro_vi.distributed`: ``batch_size`` is the global batch, each rank fits its
            slice, gradients are all-reduced, only rank 0 writes checkpoints.
        capture: replay each step from a graph captured once per batch shape (see
            :mod:`pyro_vi.capture`) where the objective allows it: True, False, or ``"auto"``
            (runs of at least :data:`CAPTURE_MIN_STEPS` planned steps, where capture pays for
            itself); ``FitResult.step`` says which ran ("captured (torchscript)", "captured
            (fx)" or "eager (reason)").
        run_info: extra JSON-able data stored in checkpoints (e.g. the model's config).
        callback: called with each epoch's record.
    """
    _check_options(epochs, batch_size, lr, anneal_start, num_particles)
    device = resolve_device(device)
    ddp = setup_distributed(device) if distributed else None  # data-parallel: distributed.py
    if ddp is not None:
        device = ddp.device
    train, valid_default = _as_split(data, device)
    valid = valid_default if valid is None else _as_split(valid, device)[0]
    check_finite(train, "training")
    if valid is not None:
        check_finite(valid, "validation")
    owners = {_module_of(model), _module_of(guide)} - {None}
    for owner in owners:
        owner.to(device)
    pass_y = _takes_y(model) and train.y is not None
    # one trace of a first batch, before seeding: it creates the params and tells the plate
    # nesting and whether a batch's ELBO is scaled to the data set
    first = next(train.batches(min(batch_size, len(train)), shuffle=False))
    if max_plate_nesting is None or len(first.x) < len(train):
        gt, mt = trace_pair(model, guide, first.x, **_batch_kwargs(first, pass_y))
        if len(first.x) < len(train) and (problem := _unscaled_batch(mt, first)):
            warnings.warn(problem, UserWarning, stacklevel=2)
    nesting = plate_nesting_of(gt, mt) if max_plate_nesting is None else max_plate_nesting
    elbo = make_loss(loss, num_particles, vectorize_particles, jit, nesting)
    has_diff_loss = callable(getattr(elbo, "differentiable_loss", None))  # not Renyi, TraceGraph
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None

    pyro.set_rng_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    anneal_steps = anneal_epochs * steps_per_epoch
    store = pyro.get_param_store()
    result = FitResult(device=str(device))
    result.config = dict(
        epochs=epochs, batch_size=batch_size, loss=loss if isinstance(loss, str) else repr(loss),
        num_particles=num_particles,
        optimizer=optimizer if isinstance(optimizer, str) else "factory",
        lr=lr, lr_decay=lr_decay, anneal_epochs=anneal_epochs, anneal_start=anneal_start,
        seed=seed, device=str(device), capture=capture,
    )  # fmt: skip
    if ddp is not None:
        result.config["world_size"] = ddp.world_size
    opts = _Optimizers(optimizer, lr, betas, clip_norm)
    params: list[torch.Tensor] = []  # the store's unconstrained tensors, for the captured step
    captured = None
    if capture not in (True, False, "auto"):
        raise FitError(f"capture={capture!r}: use True, False or 'auto'")
    short = capture == "auto" and epochs * steps_per_epoch < CAPTURE_MIN_STEPS
    if capture and not short and has_diff_loss and not jit:
        captured = CapturedStep(elbo, model, guide, lambda: params, ScaleLatents)
    result.step = "eager (short run)" if short else "eager" if captured is None else "captured"
    start_epoch, step, best, bad_epochs = 0, 0, None, 0

    def kwargs_of(batch):
        return _batch_kwargs(batch, pass_y)

    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise CheckpointError(f"nothing to resume: no {CHECKPOINT} in {checkpoint_dir}")
        # on the CPU: parameters and optimizer moments are copied to their tensors' device below,
        # while Adam's step counts stay CPU scalars (on the GPU each would sync every step)
        state = load_checkpoint(ckpt_path, map_location="cpu")
        if ddp is None or ddp.is_writer:
            remove_partial(ckpt_path.parent)  # temporaries of a writer killed mid-write
        first = next(train.batches(min(batch_size, n), shuffle=False))
        plate_nesting(model, guide, first.x, **kwargs_of(first))  # creates the params
        missing = [nm for nm in state["params"] if nm not in store]
        extra = [nm for nm in store.keys() if nm not in state["params"]]
        if missing or extra:
            raise CheckpointError(
                f"{ckpt_path} does not match this model (missing {missing[:3]}, unexpected "
                f"{extra[:3]}): resume with the same model and options"
            )
        with torch.no_grad():
            for nm, value in state["params"].items():
                target = store.get_param(nm).unconstrained()
                if target.shape != value.shape:
                    raise CheckpointError(
                        f"{ckpt_path}: parameter {nm} has shape {tuple(value.shape)}, the model "
                        f"{tuple(target.shape)}: resume with the same model options"
                    )
                target.copy_(value)
        opts.load_state_dict(state["optimizer"])
        result.history = list(state["history"])
        start_epoch, step = state["epoch"], state["step"]
        best = state.get("best")
        bad_epochs = state.get("bad_epochs", 0)
        set_rng_state(state["rng"], gen)
    if ddp is not None:  # every rank starts from rank 0's parameters
        first = next(train.batches(min(batch_size, n), shuffle=False))
        plate_nesting(model, guide, first.x, **kwargs_of(first))  # creates missing params
        ddp.broadcast_parameters(model, guide)

    def save_checkpoint(epoch):
        params = {nm: store.get_param(nm).unconstrained().detach() for nm in opts.names()}
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            raise FitError(
                f"parameters became NaN/Inf in epoch {epoch}: lower the learning rate; the last "
                f"good checkpoint ({ckpt_path}) is intact"
            )
        if ddp is not None and not ddp.is_writer:
            ddp.barrier()  # returns once rank 0 has written the checkpoint
            return
        save_atomic(
            dict(
                params=params, optimizer=opts.state_dict(), epoch=epoch,
                step=step, history=result.history, best=best, bad_epochs=bad_epochs,
                rng=rng_state(gen), config=result.config, run_info=run_info or {},
            ),
            ckpt_path,
        )  # fmt: skip
        if ddp is not None:
            ddp.barrier()

    from tqdm.auto import tqdm

    if ddp is not None and not ddp.is_writer:
        progress = False

    bar = tqdm(
        total=epochs, initial=start_epoch, disable=None if progress is None else not progress,
        unit="epoch", dynamic_ncols=True,
    )  # fmt: skip
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            lr_now = lr * lr_decay**epoch
            opts.set_lr(lr_now)
            if ddp is not None:
                ddp.seed_epoch(seed, epoch)
            total, beta = 0.0, 1.0
            with cached_modules(has_diff_loss) if not jit else nullcontext([]) as stale_modules:
                for batch in train.batches(batch_size, generator=gen):
                    if ddp is not None:  # this rank's slice of the global batch
                        batch, weight = ddp.shard(batch)
                    beta = 1.0 if step >= anneal_steps else anneal_start + (
                        1.0 - anneal_start
                    ) * (step / anneal_steps)  # fmt: skip
                    kw = kwargs_of(batch)
                    check = validate is True or (validate == "first" and not opts.opts)
                    loss_t = None
                    if captured is not None and not check and opts.opts:  # after one eager step
                        if len(params) != len(store):
                            params[:] = [store.get_param(nm).unconstrained() for nm in store]
                        loss_t = captured((batch.x,), kw, beta)
                        if loss_t is None:  # not capturable: eager from here on
                            result.step, captured = f"eager ({captured.failure})", None
                    if loss_t is not None:
                        value = loss_t.item()
                    else:
                        with pyro.validation_enabled(bool(check)), ScaleLatents(beta):
                            if has_diff_loss:
                                loss_t = elbo.differentiable_loss(model, guide, batch.x, **kw)
                                loss_t.backward()
                                value = loss_t.item()
                            else:
                                value = float(elbo.loss_and_grads(model, guide, batch.x, **kw))
                    if stale_modules:
                        raise FitError(stale_modules[0])
                    if owners and (problem := _unregistered(owners)):
                        raise FitError(problem)
                    owners = None  # checked once, after the first step
                    if len(store) != len(opts):
                        opts.discover()
                        if opts.groups["sparse"] and captured is not None:
                            result.step, captured = "eager (sparse gradients)", None
                    if ddp is not None:  # gradients and loss of the global batch
                        value = ddp.all_reduce_gradients(value, weight, opts.groups)
                    if not math.isfinite(value):
                        where = f" ({ckpt_path} is intact)" if ckpt_path else ""
                        raise FitError(
                            f"loss became {value} at epoch {epoch + 1}, step {step + 1}: lower the "
                            f"learning rate or check the model's scales{where}"
                        )
                    opts.step()
                    total += value
                    step += 1
            record = dict(
                epoch=epoch + 1, train_elbo=-total / steps_per_epoch / n, lr=lr_now, beta=beta,
                seconds=time.perf_counter() - t0, steps=step,
            )  # fmt: skip
            record["steps_per_second"] = steps_per_epoch / record["seconds"]
            if valid is not None:
                xv = valid.evaluation_x(seed)
                kv = {"y": valid.y} if pass_y else {}
                elbo_fn = elbo_per_datapoint if ddp is None else ddp.mean_elbo
                with torch.no_grad(), cached_modules(), pyro.validation_enabled(False):
                    v = elbo_fn(
                        model, guide, xv, num_particles=valid_particles, nesting=nesting, **kv
                    )
                record["valid_elbo"] = float(v.mean())
                if best is None or record["valid_elbo"] > best["valid_elbo"]:
                    best = dict(epoch=epoch + 1, valid_elbo=record["valid_elbo"])
                    best["params"] = {nm: store.get_param(nm).unconstrained().detach().clone()
                                      for nm in opts.names()}  # fmt: skip
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            result.history.append(record)
            if callback is not None:
                callback(record)
            post = {
                "elbo": f"{record['train_elbo']:.2f}",
                "it/s": f"{record['steps_per_second']:.0f}",
            }
            if "valid_elbo" in record:
                post["valid"] = f"{record['valid_elbo']:.2f}"
            bar.set_postfix(post)
            bar.update(1)
            stop = early_stopping is not None and bad_epochs >= early_stopping
            if ckpt_path is not None and (
                (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or stop
            ):
                save_checkpoint(epoch + 1)
            if stop:
                result.stopped_early = True
                break
    finally:
        bar.close()
    if best is not None:
        result.best_epoch = best["epoch"]
        if early_stopping is not None:
            with torch.no_grad():
                for nm, value in best["params"].items():
                    store.get_param(nm).unconstrained().copy_(value)
    if captured is not None:
        result.step = f"captured ({captured.runner})" if captured.runner else "eager (no step left)"
    result.steps = step
    result.seconds = time.perf_counter() - t_run
    return result


def _batch_kwargs(batch, pass_y: bool) -> dict:
    kw = dict(idx=batch.idx, size=batch.size)
    if pass_y:
        kw["y"] = batch.y
    return kw
