"""Checkpoints: weights, optimizer state, RNG states and history in one file, safely.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only. It is written to a
temporary file in the same folder and renamed over the old one, so a crash never leaves a
half-written checkpoint, and it is read with ``torch.load(..., weights_only=True)``, which refuses
pickled code instead of running it::

    save_atomic({"params": {...}, "epoch": 3}, "runs/demo/checkpoint.pt")
    state = load_checkpoint("runs/demo/checkpoint.pt")
    restore_params(state["params"], "runs/demo/checkpoint.pt")   # into Pyro's param store

:func:`restore_params` is the one way parameters come back, for ``fit(resume=True)`` and for
:func:`pyro_vi.cli.runs.load_run` alike.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vi.atomic import atomic_open

__all__ = [
    "CheckpointError",
    "save_atomic",
    "load_checkpoint",
    "restore_params",
    "rng_state",
    "set_rng_state",
]

FORMAT = "pyro-vi-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint or run directory is missing, corrupt, unsafe or does not match."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``
    (:func:`pyro_vi.atomic.atomic_open`)."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, **obj}, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; every failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: point at a run directory written by fit")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} carries pickled code and was refused (only weights are loaded): "
            "use a checkpoint written by pyro-vi"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(e).__name__}): it is corrupt or "
            "truncated; rerun the fit or resume from an intact copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro-vi checkpoint ({FORMAT}): rerun the fit")
    return state


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state a run depends on, as tensors and plain Python values."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "numpy_gauss": [int(np.random.get_state()[3]), float(np.random.get_state()[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["data"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(
        ("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], has_gauss, gauss)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "data" in state:
        if state["data"].numel() != generator.get_state().numel():  # CPU and CUDA states differ
            raise CheckpointError(
                f"this checkpoint's batch-order generator was saved on another kind of device "
                f"than {generator.device.type}: resume on the device type the run was written on "
                "(its config.json 'device')"
            )
        generator.set_state(state["data"].cpu())


def param_values() -> dict[str, torch.Tensor]:
    """Unconstrained values of everything in Pyro's param store, detached copies."""
    store = pyro.get_param_store()
    return {name: store[name].unconstrained().detach().clone() for name in store.keys()}


def restore_params(params: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Copy saved unconstrained values into Pyro's param store, which must hold exactly these
    names with these shapes (trace the model and guide once first: that creates them); else a
    one-line CheckpointError naming ``source``."""
    store = pyro.get_param_store()
    missing = [nm for nm in params if nm not in store]
    extra = [nm for nm in store.keys() if nm not in params]
    if missing or extra:
        raise CheckpointError(
            f"{source} does not match this model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}): load it with the same model and options"
        )
    with torch.no_grad():
        for nm, value in params.items():
            target = store.get_param(nm).unconstrained()
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{source}: parameter {nm} has shape {tuple(value.shape)}, the model "
                    f"{tuple(target.shape)}: load it with the same model options"
                )
            target.copy_(value)
