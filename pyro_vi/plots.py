"""Figures with matplotlib: ELBO curves, image grids, latent embeddings. Figures are built as
``matplotlib.figure.Figure`` objects (no pyplot, so no backend is forced: they show inline in a
notebook and save on a headless machine); files are written atomically (a temporary file renamed
into place)::

    elbo_curve(result.history, "runs/demo/elbo.png")
    image_grid(vae.sample(64), (8, 8), "runs/demo/samples.png")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["save_figure", "elbo_curve", "image_grid", "latent_scatter", "moving_average"]


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def moving_average(values, window: int = 5) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    k = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - k]) / k


def elbo_curve(history: list[dict], path: str | os.PathLike | None = None, window: int = 5):
    """Train and validation ELBO per datapoint against epoch, with a moving average."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    train = [h["train_elbo"] for h in history]
    ax.plot(epochs, train, alpha=0.35, color="C0")
    ax.plot(epochs, moving_average(train, window), color="C0", label="train (moving avg.)")
    valid = [h.get("valid_elbo") for h in history]
    if any(v is not None for v in valid):
        ax.plot(epochs, valid, color="C1", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path) if path else fig


def image_grid(
    images: torch.Tensor,
    shape: tuple[int, int],
    path: str | os.PathLike | None = None,
    nrow: int | None = None,
    title: str | None = None,
):
    """Rows of ``images`` (flattened, values in [0, 1]) tiled into one grayscale picture."""
    imgs = images.detach().cpu().reshape(-1, *shape).clamp(0, 1).numpy()
    n = len(imgs)
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    h, w = shape
    canvas = np.full((ncol * (h + 1) + 1, nrow * (w + 1) + 1), 0.5)  # grey borders
    for i, img in enumerate(imgs):
        r, c = divmod(i, nrow)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    fig = Figure(figsize=(0.5 + nrow * 0.45, 0.5 + ncol * 0.45))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return save_figure(fig, path) if path else fig


def latent_scatter(z: torch.Tensor, labels=None, path: str | os.PathLike | None = None):
    """The first two latent coordinates, coloured by label."""
    z = z.detach().cpu().numpy()
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    c = None if labels is None else np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    y = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    if c is None:
        ax.scatter(z[:, 0], y, s=4)
    else:
        fig.colorbar(ax.scatter(z[:, 0], y, c=c, s=4, cmap="tab10"), ax=ax)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    return save_figure(fig, path) if path else fig
