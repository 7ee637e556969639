"""Figures with matplotlib: ELBO curves, image grids, latent embeddings, conditional densities,
and :func:`draw` for what a model shows (:mod:`pyro_vi.protocol`). Figures are built as
:class:`InlineFigure` objects, matplotlib Figures with a PNG representation (no pyplot, so no
backend is forced: they show as images in a
notebook and save on a headless machine); files are written atomically (a temporary file renamed
into place)::

    elbo_curve(result.history, "runs/demo/elbo.png")
    image_grid(vae.sample(64), (8, 8), "runs/demo/samples.png")
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib
import matplotlib.figure
import numpy as np
import torch

from pyro_vi.atomic import atomic_open

__all__ = [
    "InlineFigure",
    "save_figure",
    "elbo_curve",
    "image_grid",
    "latent_scatter",
    "pca_2d",
    "moving_average",
    "density_figure",
    "draw",
]


class InlineFigure(matplotlib.figure.Figure):
    """matplotlib's ``Figure`` with a PNG representation (``_repr_png_``): it shows as an image in
    Jupyter, and in the saved notebook, without pyplot or ``%matplotlib inline``. Where pyplot's
    inline back-end is active, its own formatter draws it instead; either way one image."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (:func:`pyro_vi.atomic.atomic_open`)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def moving_average(values, window: int = 5) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    k = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - k]) / k


def elbo_curve(history: list[dict], path: str | os.PathLike | None = None, window: int = 5):
    """Train and validation ELBO per datapoint against epoch, with a moving average."""
    fig = InlineFigure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    train = [h["train_elbo"] for h in history]
    ax.plot(epochs, train, alpha=0.35, color="C0", label="train (per epoch)")
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
    fig = InlineFigure(figsize=(0.5 + nrow * 0.45, 0.5 + ncol * 0.45))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return save_figure(fig, path) if path else fig


def pca_2d(z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rows of ``z`` projected onto their first two principal axes, and the share of the total
    variance those two axes explain. The axes are the top right-singular vectors of the centred
    rows; signs are fixed so that each axis's largest loading is positive."""
    zc = (z - z.mean(0)).double()
    _, s, vh = torch.linalg.svd(zc, full_matrices=False)
    v = vh[:2].T
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    share = float((s[:2] ** 2).sum() / (s**2).sum().clamp_min(1e-300))
    return (zc @ v).to(z.dtype), share


def latent_scatter(
    z: torch.Tensor,
    labels=None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    axis_labels: tuple[str, str] | None = None,
):
    """Latent codes coloured by label: z[0] against z[1] for codes of one or two dimensions; for
    more, their projection onto the first two principal axes (:func:`pca_2d`), said in the title.
    Up to 20 distinct whole-number labels get one colour each and a legend, others a colour bar."""
    z = z.detach().cpu().reshape(len(z), -1)
    xlabel, ylabel = axis_labels or ("z[0]", "z[1]")
    if z.shape[1] > 2:
        dim = z.shape[1]
        z, share = pca_2d(z)
        xlabel, ylabel = axis_labels or ("principal axis 1", "principal axis 2")
        head = f"PCA of the {dim}-D codes ({100 * share:.0f}% of their variance)"
        title = f"{title}\n{head}" if title else head
    z = z.numpy()
    fig = InlineFigure(figsize=(5, 5))
    ax = fig.subplots()
    c = None if labels is None else np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    y = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    classes = None if c is None else np.unique(c)
    if c is None:
        ax.scatter(z[:, 0], y, s=4)
    elif len(classes) <= 20 and np.all(np.mod(classes, 1) == 0):
        for i, label in enumerate(classes):
            at = c == label
            ax.scatter(z[at, 0], y[at], s=4, color=f"C{i % 10}" if len(classes) <= 10 else
                       matplotlib.colormaps["tab20"](i), label=str(int(label)))  # fmt: skip
        ax.legend(title="label", markerscale=3, fontsize=8, loc="best")
    else:
        fig.colorbar(ax.scatter(z[:, 0], y, c=c, s=4, cmap="viridis"), ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return save_figure(fig, path) if path else fig


@torch.no_grad()
def density_figure(models: dict, rows: torch.Tensor, grid: int = 200):
    """One panel per model (anything with ``density(inp, ys)``, e.g. an MDN): p(y | x) as an
    image over the range of ``rows`` ([x, y], 1-D each; colours on a square-root scale, so that
    broad and narrow parts both show), the rows on top. Returns a matplotlib Figure."""
    from matplotlib.colors import PowerNorm

    lo, hi = rows.min(0).values, rows.max(0).values
    pad = 0.1 * (hi - lo)
    xs, ys = (torch.linspace(a, b, grid, dtype=rows.dtype, device=rows.device)
              for a, b in zip(lo - pad, hi + pad, strict=True))  # fmt: skip
    fig = InlineFigure(figsize=(4.8 * len(models), 3.6), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (title, m) in zip(axes, models.items(), strict=True):
        p = m.density(xs[:, None], ys[:, None]).T.cpu()  # (y, x)
        extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
        im = ax.imshow(p, origin="lower", extent=extent, aspect="auto", norm=PowerNorm(0.5))
        fig.colorbar(im, ax=ax, label="p(y | x)")
        ax.scatter(*rows.cpu().T, s=3, c="white", alpha=0.5, linewidths=0)
        ax.set(title=title, xlabel="x", ylabel="y")
    return fig


def draw(item) -> InlineFigure:
    """The figure of a model's :class:`~pyro_vi.protocol.Images`,
    :class:`~pyro_vi.protocol.Scatter` or :class:`~pyro_vi.protocol.Density`."""
    from pyro_vi.protocol import Density, Images, Scatter

    if isinstance(item, Images):
        return image_grid(item.images, item.shape, nrow=item.nrow, title=item.title)
    if isinstance(item, Scatter):
        return latent_scatter(item.points, item.labels, title=item.title)
    if isinstance(item, Density):
        return density_figure(item.models, item.rows)
    raise TypeError(f"no figure for a {type(item).__name__}: pass Images, Scatter or Density")
