r"""Data-parallel SVI on ``torch.distributed``: what ``pyro_vi.fit(..., distributed=True)`` runs.

A launcher (``torchrun --nproc_per_node=N ...``) starts N processes, the ranks, and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; every rank runs the same ``fit``::

    torchrun --nproc_per_node=2 -m pyro_vi.cli fit vae --dataset fashion-mnist --batch-size 128

    # or from Python, in the script torchrun starts:
    result = pyro_vi.fit(vae.model, vae.guide, data, batch_size=128, distributed=True)

**Process group.** NCCL when the device is CUDA (rank on ``cuda:LOCAL_RANK``, set with
``torch.cuda.set_device``), gloo on the CPU, initialised from the launcher's environment; without
it, a one-line :class:`DistributedError` names the missing variables and the fix. A group the
caller initialised already is used as it is.

**Batches.** ``batch_size`` is the *global* batch B: every rank draws the same global batch from
the shared seed (the epoch's order and the dynamic binarization, exactly as one process would),
then keeps its contiguous slice of b_r = B/W rows (sizes differ by at most one). The slices are
disjoint and together are the batch. The per-rank batch is B/W, so to keep the per-device load
when adding devices, multiply ``batch_size`` by W.

**Gradients.** Rank r's loss is the estimator of the data plate with the full-data size N and its
b_r rows as the subsample, plus the terms G outside the plate (priors of global latents or
parameters): :math:`L_r = \frac{N}{b_r}\sum_{i \in r} \ell_i + G`. The loss of the global batch
in one process is :math:`L = \frac{N}{B}\sum_{i \in \text{batch}} \ell_i + G = \sum_r \frac{b_r}{B}
L_r`, so gradients are reduced as the weighted sum :math:`\sum_r \frac{b_r}{B}\nabla L_r`: with
equal slices, the mean over ranks (what DDP computes). A plain sum would count G W times and
scale the data term by W. (A model that ignores ``size`` and sums its batch unscaled gets 1/W of
its single-process gradient: Adam does not notice, SGD sees an lr divided by W.) Every parameter
the optimizers hold is reduced: networks registered by ``pyro.module``, ``pyro.param`` tensors,
flows, per-datapoint tables.

**Sparse gradients.** Per-datapoint tables read with ``F.embedding(idx, table, sparse=True)`` get
sparse gradients whose rows are disjoint across ranks (each rank owns its slice's rows). Their
(index, value) pairs are all-gathered (NCCL has no sparse all-reduce) with the same weights, so
every rank ends with the rows of the whole global batch and SparseAdam moves exactly the rows one
process would move.

**Start.** Names and shapes of Pyro's param store are checked to agree on all ranks (a mismatch
is an error on every rank, not a hang), then every parameter and the buffers of the model's and
guide's modules are broadcast from rank 0. Parameters created later are checked and broadcast
when they first appear.

**Randomness.** The data generator is shared; the Monte-Carlo noise of the ELBO has one stream per
rank, reseeded at every epoch from (seed, epoch, rank). So resume with the same world size is
bit-identical without storing per-rank RNG states (checkpoints hold rank 0's, which are
overwritten by the reseed). The checkpoint is global, so a run may also resume with another world
size; it then continues with other noise.

**Validation.** Each rank evaluates a contiguous slice of the validation rows; per-datapoint
terms are summed, terms outside the data plate averaged over ranks, in one all-reduce: every rank
gets the same number and early stopping decides identically.

**Writing.** Rank 0 only: checkpoints in :func:`pyro_vi.fit`, config, metrics and figures in
:mod:`pyro_vi.cli.runs`. Resuming reads the run directory on every rank, so on several machines it
must be on a shared filesystem.

**Why not DistributedDataParallel.** DDP wraps one ``nn.Module`` and reduces the gradients of its
parameters from autograd hooks during the backward pass. A Pyro model/guide pair is not one
module: its parameters live in Pyro's param store (networks of the model and of the guide,
``pyro.param`` tensors, per-datapoint tables with sparse gradients, which DDP cannot reduce on
NCCL) and may be created lazily during the first call; and Pyro's objectives run the backward pass
themselves (``loss_and_grads``, semi-amortized inner loops), so the hook-driven reduction would
need a synthetic module around the store and would break on objectives that backpropagate more
than once. Instead the gradients are reduced after the backward pass with the collectives DDP uses:
dense gradients flattened into buckets of 25 MB (DDP's ``bucket_cap_mb``) and all-reduced
asynchronously, sparse ones all-gathered; the reduced buckets become the ``.grad`` tensors
(DDP's ``gradient_as_bucket_view``). What this gives up is DDP's overlap of communication with the
backward pass.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyro
import torch
import torch.distributed as dist

from pyro_vi.data import Batch
from pyro_vi.evaluate.weights import summed_log_weights

if TYPE_CHECKING:
    from pyro_vi.infer.svi import SVI

__all__ = ["DataParallel", "DistributedError", "REQUIRED_ENV", "launched", "setup"]

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BUCKET_BYTES = 25 * 2**20


class DistributedError(ValueError):
    """Data-parallel training cannot start or the ranks disagree; the message says how to fix it."""


def launched() -> bool:
    """True when a launcher started this process as one of several ranks (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup(
    device: str | torch.device = "cpu", timeout: datetime.timedelta | None = None
) -> DataParallel:
    """Join the process group (initialising it from the launcher's environment if needed).

    The backend follows the device: NCCL for CUDA (this rank's GPU is ``cuda:LOCAL_RANK``, made
    the current device), gloo for the CPU. Calling it again returns a new :class:`DataParallel`
    on the same group. A group this function initialised is destroyed at exit.
    """
    device = torch.device(device)
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed: install one that has")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs: "
                "start at most one process per GPU (torchrun --nproc_per_node=<GPUs>)"
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        missing = [k for k in REQUIRED_ENV if k not in os.environ]
        if missing:
            raise DistributedError(
                f"distributed training needs the launcher's environment but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: start it with torchrun "
                "--nproc_per_node=N (e.g. torchrun --nproc_per_node=2 -m pyro_vi.cli fit vae ...)"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
        atexit.register(_destroy)
    backend = str(dist.get_backend())
    if backend == "nccl" and device.type != "cuda":
        raise DistributedError(
            f"the process group uses nccl, which needs CUDA tensors, but the device is {device}: "
            "fit with device='cuda' or initialise the group with backend='gloo'"
        )
    return DataParallel(dist.get_rank(), dist.get_world_size(), device, backend)


def _modules_of(fns: Iterable[Callable]) -> list[torch.nn.Module]:
    """The distinct ``nn.Module`` objects behind ``fns`` (bound methods or modules), in order."""
    out: list[torch.nn.Module] = []
    for fn in fns:
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and all(owner is not m for m in out):
            out.append(owner)
    return out


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class DataParallel:
    """One rank's view of data-parallel SVI: sharding, gradient reduction, broadcast, seeds.

    Made by :func:`setup`; :func:`pyro_vi.fit` uses one per run (see the module docstring).
    """

    rank: int
    world_size: int
    device: torch.device
    backend: str = "gloo"
    bucket_bytes: int = BUCKET_BYTES
    _agreed: tuple = field(default=(), repr=False)
    _sent: set = field(default_factory=set, repr=False)

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints, metrics and figures; the others write nothing."""
        return self.rank == 0

    def _slice(self, n: int) -> tuple[int, int]:
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return start, start + q + (self.rank < r)

    def shard(self, batch: Batch) -> tuple[Batch, float]:
        """This rank's contiguous slice of the global ``batch`` and its weight b_r / B.

        A rank left without rows (a last batch smaller than the world size) runs the batch's
        first row with weight 0, so that it still takes part in the reduction.
        """
        start, stop = self._slice(len(batch.idx))
        weight = (stop - start) / len(batch.idx)
        if stop == start:
            start, stop = 0, 1
        s = slice(start, stop)
        y = None if batch.y is None else batch.y[s]
        fields = {k: v[s] for k, v in batch.fields.items()}
        return Batch(batch.x[s], y, batch.idx[s], batch.size, fields), weight

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed Pyro, torch, numpy and Python for this rank's Monte-Carlo noise in ``epoch``."""
        digest = hashlib.sha256(f"pyro-vi/{seed}/{epoch}/{self.rank}".encode()).digest()
        pyro.set_rng_seed(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    # -- parameters ---------------------------------------------------------------------------

    def _agree(self, signature: list) -> None:
        """Raise on every rank unless all ranks hold the same parameters (names, shapes)."""
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, signature)
        for r, other in enumerate(everyone):
            if other != everyone[0]:
                diff = sorted(set(map(tuple, other)) ^ set(map(tuple, everyone[0])))[:3]
                raise DistributedError(
                    f"rank {r} and rank 0 hold different parameters (e.g. {diff}): every rank "
                    "must build the same model and guide with the same options"
                )

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values (flattened per dtype, one call each)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([t.detach().reshape(-1) for t in group])
                dist.broadcast(flat, src=0)
                for t, v in zip(group, flat.split([t.numel() for t in group]), strict=True):
                    t.detach().copy_(v.view_as(t))

    def broadcast_parameters(self, *fns: Callable) -> None:
        """Give every rank rank 0's parameters: all of Pyro's param store, plus the buffers of
        the ``nn.Module`` behind each of ``fns`` (bound methods such as ``vae.model``)."""
        store = pyro.get_param_store()
        names = sorted(store.keys())
        buffers = [b for m in _modules_of(fns) for b in m.buffers()]
        params = [store.get_param(nm).unconstrained() for nm in names]
        self._agree(
            [[nm, list(p.shape), str(p.dtype)] for nm, p in zip(names, params, strict=True)]
            + [[f"buffer {i}", list(b.shape), str(b.dtype)] for i, b in enumerate(buffers)]
        )
        self._broadcast(params + buffers)
        self._sent.update(names)

    def step(self, svi: SVI, weight: float, *args, **kwargs) -> float:
        """One data-parallel step of a :class:`pyro_vi.SVI` on this rank's slice of the batch:
        its loss and gradients, the weighted all-reduce (:meth:`all_reduce_gradients`, ``weight``
        from :meth:`shard`), then the update on every rank; the global batch's loss::

            shard, weight = ddp.shard(batch)
            loss = ddp.step(svi, weight, shard.x, idx=shard.idx, size=shard.size)
        """
        loss = self.all_reduce_gradients(
            svi.loss_and_grads(*args, **kwargs), weight, svi.param_groups()
        )
        svi.update()
        return loss

    def all_reduce_gradients(
        self, loss: float, weight: float, groups: dict[str, list[list[str]]]
    ) -> float:
        """Replace every parameter's gradient by the weighted sum over ranks and return the loss
        of the global batch, :math:`\\sum_r w_r L_r` (NaN on every rank if NaN on one).

        Args:
            loss: this rank's loss value.
            weight: this rank's weight b_r / B (from :meth:`shard`).
            groups: parameter names by kind, ``{"dense": [[...], ...], "sparse": [[...]]}``
                (the optimizers' groups); sparse ones have sparse gradients.
        """
        store = pyro.get_param_store()
        dense = sorted(nm for g in groups.get("dense", []) for nm in g)
        sparse = sorted(nm for g in groups.get("sparse", []) for nm in g)
        dparams = [store.get_param(nm).unconstrained() for nm in dense]
        sparams = [store.get_param(nm).unconstrained() for nm in sparse]
        signature = tuple((nm, tuple(p.shape)) for nm, p in zip(dense, dparams, strict=True)) + (
            ("sparse",),
            *((nm, tuple(p.shape)) for nm, p in zip(sparse, sparams, strict=True)),
        )
        w, s = self.world_size, len(sparams)
        # meta: [loss, has-grad per dense param, crc per rank, (nnz, sparse_dim) per rank/param]
        meta = [loss * weight] + [float(p.grad is not None) for p in dparams] + [0.0] * w
        meta[1 + len(dparams) + self.rank] = float(zlib.crc32(repr(signature).encode()))
        mine = [0.0] * (2 * w * s)
        local = []
        for j, p in enumerate(sparams):
            g = None if p.grad is None else p.grad.coalesce()
            local.append(g)
            if g is not None:
                mine[2 * (self.rank * s + j)] = float(g.values().shape[0])
                mine[2 * (self.rank * s + j) + 1] = float(g.sparse_dim())
        meta_t = torch.tensor(meta + mine, dtype=torch.float64, device=self.device)
        dist.all_reduce(meta_t)
        meta = meta_t.tolist()
        crcs = meta[1 + len(dparams) : 1 + len(dparams) + w]
        if any(c != crcs[0] for c in crcs):
            raise DistributedError(
                "the ranks' parameters differ (names, shapes or sparse/dense gradients): every "
                "rank must build the same model and guide with the same options"
            )
        if signature != self._agreed:  # new parameters: rank 0's values for them
            self._agreed = signature
            new = [(nm, p) for nm, p in zip(dense + sparse, dparams + sparams, strict=True)
                   if nm not in self._sent]  # fmt: skip
            if new:
                self._broadcast([p for _, p in new])
                self._sent.update(nm for nm, _ in new)
        has = meta[1 : 1 + len(dparams)]
        self._reduce_dense([p for p, h in zip(dparams, has, strict=True) if h > 0], weight)
        counts = meta[1 + len(dparams) + w :]
        for j, (p, g) in enumerate(zip(sparams, local, strict=True)):
            nnz = [int(counts[2 * (r * s + j)]) for r in range(w)]
            sdim = max(int(counts[2 * (r * s + j) + 1]) for r in range(w))
            if max(nnz) > 0:
                p.grad = self._gather_sparse(p, g, nnz, sdim, weight)
        return meta[0]

    def _reduce_dense(self, params: list[torch.Tensor], weight: float) -> None:
        """Weighted sum of dense gradients in buckets of ``bucket_bytes``; a rank without a
        gradient for a parameter contributes zeros. The buckets become the ``.grad`` tensors."""
        buckets: list[list[torch.Tensor]] = []
        size: dict[int, int] = {}
        open_: dict[torch.dtype, int] = {}  # dtype -> index of its open bucket
        for p in params:
            i = open_.get(p.dtype)
            nbytes = p.numel() * p.element_size()
            if i is None or size[i] + nbytes > self.bucket_bytes:
                i = open_[p.dtype] = len(buckets)
                buckets.append([])
                size[i] = 0
            buckets[i].append(p)
            size[i] += nbytes
        work = []
        flats = []
        for group in buckets:
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            )
            flat.mul_(weight)
            flats.append(flat)
            work.append(dist.all_reduce(flat, async_op=True))
        for job in work:
            job.wait()
        for group, flat in zip(buckets, flats, strict=True):
            for p, g in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.grad = g.view_as(p)

    def _gather_sparse(
        self, p: torch.Tensor, g: torch.Tensor | None, nnz: list[int], sdim: int, weight: float
    ) -> torch.Tensor:
        """All-gather the (index, value) pairs of a sparse gradient, weighted; rows from several
        ranks are summed when SparseAdam coalesces the result."""
        most = max(nnz)
        idx = torch.zeros(sdim, most, dtype=torch.long, device=p.device)
        val = torch.zeros(most, *p.shape[sdim:], dtype=p.dtype, device=p.device)
        n = 0 if g is None else g.values().shape[0]
        if n > 0:
            if g.sparse_dim() != sdim:
                raise DistributedError(
                    f"a sparse gradient of shape {tuple(p.shape)} has {g.sparse_dim()} sparse "
                    f"dimensions on rank {self.rank} and {sdim} on another: build it the same way"
                )
            idx[:, :n] = g.indices()
            val[:n] = g.values() * weight
        all_idx = [torch.empty_like(idx) for _ in range(self.world_size)]
        all_val = [torch.empty_like(val) for _ in range(self.world_size)]
        dist.all_gather(all_idx, idx)
        dist.all_gather(all_val, val)
        indices = torch.cat([t[:, :k] for t, k in zip(all_idx, nnz, strict=True)], 1)
        values = torch.cat([t[:k] for t, k in zip(all_val, nnz, strict=True)])
        return torch.sparse_coo_tensor(indices, values, p.shape, check_invariants=False)

    # -- evaluation ----------------------------------------------------------------------------

    def mean_elbo(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        *,
        num_particles: int = 1,
        nesting: int,
        **kwargs,
    ) -> torch.Tensor:
        """The mean per-datapoint ELBO of all of ``x`` (a 0-dim tensor, the same on every rank),
        each rank evaluating a contiguous slice of the rows; ``kwargs`` are per-row tensors.

        Like :func:`pyro_vi.elbo(...).mean() <pyro_vi.evaluate.bounds.elbo>`, from the same
        log-weight engine (:mod:`pyro_vi.evaluate.weights`): terms in the data plate summed over
        all rows, terms outside it (global latents) once, averaged over ranks.
        """
        start, stop = self._slice(x.shape[0])
        local_sum, global_sum = 0.0, 0.0
        if stop > start:
            kw = {k: v[start:stop] for k, v in kwargs.items()}
            local, global_, _ = summed_log_weights(
                model, guide, (x[start:stop],), kw, num_particles, nesting=nesting
            )
            local_sum, global_sum = float(local.sum()), float(global_)
        t = torch.tensor(
            [local_sum / num_particles, global_sum / num_particles, float(stop > start)],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(t)
        local_total, global_total, ranks = t.tolist()
        return torch.tensor((local_total + global_total / ranks) / x.shape[0])
