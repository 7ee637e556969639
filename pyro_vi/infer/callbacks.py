r"""Epoch callbacks of :func:`pyro_vi.fit`: validation, early stopping, a progress bar.

A callback is any callable ``callback(record) -> bool | None`` that ``fit`` calls after each
epoch with that epoch's record (``epoch``, ``train_elbo``, ``lr``, ``beta``, ``seconds``,
``steps``, ``steps_per_second``; the callbacks before it may have added keys). A true return
value stops the run after this epoch. A callback with ``state_dict``/``load_state_dict`` has its
state saved in checkpoints, so that a resumed run goes on exactly where it stopped. ``fit``
chains :class:`Validation`, :class:`EarlyStopping`, :class:`ProgressBar` and the user's
``callback``, in that order; in a loop of one's own they work alike::

    svi = pyro_vi.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    callbacks = [Validation(vae.model, vae.guide, data.valid), EarlyStopping(patience=5)]
    for epoch in range(100):
        for b in data.train.batches(128):
            svi.step(b.x, idx=b.idx, size=b.size)
        record = {"epoch": epoch + 1}
        if any([cb(record) for cb in callbacks]):
            break
    callbacks[1].restore_best()    # the parameters of the best validation ELBO
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch

from pyro_vi.data import Split

__all__ = ["Validation", "EarlyStopping", "ProgressBar"]


class Validation:
    """Adds ``record["valid_elbo"]``: the mean per-datapoint ELBO of a held-out split
    (:func:`pyro_vi.elbo` with ``num_particles`` particles, on the split's fixed evaluation
    binarization ``split.evaluation_x(seed)``; ``kwargs`` go into each call, e.g. the split's
    labels ``{"y": split.y}``, which ``pass_y=True`` passes).
    ``mean_elbo`` replaces the estimator, e.g. by the data-parallel
    :meth:`pyro_vi.infer.distributed.DataParallel.mean_elbo`."""

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        split: Split,
        *,
        num_particles: int = 1,
        nesting: int | None = None,
        seed: int = 0,
        pass_y: bool = False,
        kwargs: dict | None = None,
        mean_elbo: Callable | None = None,
    ):
        from pyro_vi.evaluate.bounds import elbo

        self.model, self.guide, self.split = model, guide, split
        self.num_particles, self.nesting, self.seed = num_particles, nesting, seed
        self.kwargs = {"y": split.y} if pass_y else {}
        self.kwargs.update(kwargs or {})
        self.estimator = mean_elbo or elbo

    def __call__(self, record: dict) -> None:
        x = self.split.evaluation_x(self.seed)
        with torch.no_grad(), pyro.validation_enabled(False):
            v = self.estimator(
                self.model, self.guide, x, num_particles=self.num_particles,
                nesting=self.nesting, **self.kwargs,
            )  # fmt: skip
        record["valid_elbo"] = float(v.mean())


class EarlyStopping:
    """Tracks the best ``record["valid_elbo"]``; with ``patience`` set, stops the run after that
    many epochs without improvement and keeps a copy of the best parameters for
    :meth:`restore_best` (``patience=None``: tracks the best epoch only)."""

    def __init__(self, patience: int | None = None):
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience={patience}: use a whole number >= 1, or None")
        self.patience = patience
        self.best: dict | None = None  # {"epoch", "valid_elbo"[, "params"]}
        self.bad_epochs = 0

    def __call__(self, record: dict) -> bool:
        if "valid_elbo" not in record:
            raise ValueError("EarlyStopping needs record['valid_elbo']: put Validation first")
        if self.best is None or record["valid_elbo"] > self.best["valid_elbo"]:
            self.best = dict(epoch=record["epoch"], valid_elbo=record["valid_elbo"])
            if self.patience is not None:
                store = pyro.get_param_store()
                self.best["params"] = {
                    nm: store.get_param(nm).unconstrained().detach().clone() for nm in store.keys()
                }
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore_best(self) -> None:
        """Copy the best epoch's parameters back into Pyro's param store (with a patience)."""
        if self.best is not None and "params" in self.best:
            store = pyro.get_param_store()
            with torch.no_grad():
                for nm, value in self.best["params"].items():
                    store.get_param(nm).unconstrained().copy_(value)

    def state_dict(self) -> dict:
        """``{"best": .., "bad_epochs": ..}`` (the keys of a checkpoint)."""
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.best, self.bad_epochs = state.get("best"), state.get("bad_epochs", 0)


class ProgressBar:
    """A tqdm bar over epochs showing the train (and validation) ELBO and steps per second;
    ``disable=None`` shows it only on a terminal."""

    def __init__(self, total: int, initial: int = 0, disable: bool | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, disable=disable, unit="epoch", dynamic_ncols=True
        )

    def __call__(self, record: dict) -> None:
        post = {"elbo": f"{record['train_elbo']:.2f}", "it/s": f"{record['steps_per_second']:.0f}"}
        if "valid_elbo" in record:
            post["valid"] = f"{record['valid_elbo']:.2f}"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar (``fit`` does this when the run ends or fails)."""
        self.bar.close()
