"""Figures for posterior diagnostics (matplotlib): k-hat per datapoint, posterior against prior,
posterior predictive checks, SBC rank histograms and ECDF differences. Each function returns
the figure, or writes it atomically to ``path`` (:func:`pyro_vi.diagnostics.plots.save_figure`)::

    khat_plot(psis_khat(vae.model, vae.guide, x, num_samples=500), "runs/demo/khat.png")
    posterior_vs_prior(to_inference_data(model, guide, x, num_samples=1000, prior=True))
    rank_histogram(sbc(model, guide, x, num_simulations=100))

ELBO traces, latent embeddings and image grids are :mod:`pyro_vi.diagnostics.plots`' ``elbo_curve``,
``latent_scatter`` and ``image_grid``.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

from pyro_vi.diagnostics.plots import (
    InlineFigure,
    elbo_curve,
    image_grid,
    latent_scatter,
    save_figure,
)

__all__ = [
    "khat_plot",
    "posterior_vs_prior",
    "ppc_plot",
    "rank_histogram",
    "ecdf_plot",
    "elbo_curve",
    "latent_scatter",
    "image_grid",
]


def _out(fig, path):
    return save_figure(fig, path) if path else fig


def khat_plot(result, path: str | os.PathLike | None = None, title: str | None = None):
    """k-hat per datapoint (a :class:`~pyro_vi.diagnostics.importance.PSISResult` or an array) with
    the 0.5 and 0.7 thresholds; -inf (constant weights) is drawn at the bottom edge."""
    k = np.asarray(getattr(result, "khat", result), dtype=float).reshape(-1)
    finite = np.isfinite(k)
    floor = min(np.min(k[finite], initial=0.0), 0.0) - 0.1
    fig = InlineFigure(figsize=(6, 3.5))
    ax = fig.subplots()
    shown = np.where(finite, k, floor)
    colors = np.where(k > 0.7, "C3", np.where(k > 0.5, "C1", "C0"))
    ax.scatter(np.arange(len(k)), shown, s=8, c=colors)
    for level, style, meaning in (
        (0.5, ":", "0.5: good below"),
        (0.7, "--", "0.7: unreliable above"),
    ):
        ax.axhline(level, color="k", ls=style, lw=1, label=meaning)
    ax.set_xlabel("datapoint")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(title or f"k-hat: {np.mean(k > 0.7):.1%} above 0.7")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _out(fig, path)


def posterior_vs_prior(
    idata, var_names: list[str] | None = None, path: str | os.PathLike | None = None, bins=40
):
    """Histograms of each scalar component's prior and posterior draws (``idata`` needs a
    ``prior`` group: ``to_inference_data(..., prior=True)``); at most 12 panels."""
    if "prior" not in idata.groups():
        raise ValueError("no prior group: build the data with to_inference_data(..., prior=True)")
    names = var_names or [v for v in idata.posterior.data_vars if v in idata.prior.data_vars]
    panels = []
    for v in names:
        post = idata.posterior[v].values.reshape(-1, *idata.posterior[v].shape[2:])
        pri = idata.prior[v].values.reshape(-1, *idata.prior[v].shape[2:])
        post, pri = post.reshape(len(post), -1), pri.reshape(len(pri), -1)
        for j in range(post.shape[1]):
            label = v if post.shape[1] == 1 else f"{v}[{j}]"
            panels.append((label, pri[:, j], post[:, j]))
    panels = panels[:12]
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = InlineFigure(figsize=(3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (label, pri, post) in zip(axes.flat, panels, strict=False):
        lo, hi = np.percentile(np.concatenate([pri, post]), [0.5, 99.5])
        edges = np.linspace(lo, hi, bins)
        ax.hist(pri, edges, density=True, alpha=0.4, color="C7", label="prior")
        ax.hist(post, edges, density=True, alpha=0.7, color="C0", label="posterior")
        ax.set_title(label, fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("density")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _out(fig, path)


def ppc_plot(
    idata,
    var_name: str | None = None,
    num_draws: int = 30,
    column: int | None = None,
    group: str = "posterior_predictive",
    path: str | os.PathLike | None = None,
):
    """Density of the observed values against ``num_draws`` replicated data sets (of
    ``group``: posterior or prior predictive); ``column`` picks one event component."""
    pp = getattr(idata, group)
    var_name = var_name or list(pp.data_vars)[0]
    obs = np.asarray(idata.observed_data[var_name].values)
    rep = np.asarray(pp[var_name].values).reshape(-1, *obs.shape)
    if column is not None:
        obs, rep = obs[..., column], rep[..., column]
    obs, rep = obs.reshape(-1), rep.reshape(len(rep), -1)
    lo, hi = np.percentile(np.concatenate([obs, rep[:num_draws].reshape(-1)]), [0.5, 99.5])
    grid = np.linspace(lo, hi, 200)
    fig = InlineFigure(figsize=(6, 3.5))
    ax = fig.subplots()
    step = max(1, len(rep) // num_draws)
    for r in rep[::step][:num_draws]:
        ax.plot(grid, _density(r, grid), color="C0", alpha=0.2, lw=1)
    ax.plot(grid, _density(obs, grid), color="k", lw=2, label="observed")
    ax.plot([], [], color="C0", label=group.replace("_", " "))
    ax.set_xlabel(var_name if column is None else f"{var_name}[{column}]")
    ax.set_ylabel("density")
    ax.legend()
    return _out(fig, path)


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    if len(np.unique(values)) < 2:
        return np.zeros_like(grid)
    return stats.gaussian_kde(values)(grid)


def rank_histogram(result, bins: int | None = None, path: str | os.PathLike | None = None):
    """SBC rank histograms per component with the 99% band of uniform counts (binomial)."""
    comps = list(result.components().items())[:12]
    bins = bins or result.default_bins()
    width = (result.num_draws + 1) // bins
    n = result.num_simulations
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 1.0 / bins)
    cols = min(3, len(comps))
    rows = int(np.ceil(len(comps) / cols))
    fig = InlineFigure(figsize=(3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, r) in zip(axes.flat, comps, strict=False):
        counts = np.bincount(r // width, minlength=bins)
        ax.axhspan(lo, hi, color="C7", alpha=0.3)
        ax.bar(np.arange(bins), counts, width=0.9, color="C0")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(np.arange(bins))
    for ax in axes[-1]:
        ax.set_xlabel(f"rank bin ({width} ranks each)")
    for ax in axes[:, 0]:
        ax.set_ylabel("simulations")
    for ax in list(axes.flat)[len(comps) :]:
        ax.axis("off")
    fig.suptitle(f"SBC ranks ({n} simulations, L={result.num_draws}); grey: 99% band")
    fig.tight_layout()
    return _out(fig, path)


def ecdf_plot(result, path: str | os.PathLike | None = None):
    """ECDF of the normalized ranks minus the uniform CDF, per component, with pointwise 99%
    binomial bands (Säilynoja et al. 2022 give simultaneous bands; these are pointwise)."""
    comps = list(result.components().items())
    n = result.num_simulations
    z = np.linspace(0, 1, 101)
    band = stats.binom.ppf([[0.005], [0.995]], n, z[None]) / n - z[None]
    fig = InlineFigure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.fill_between(z, band[0], band[1], color="C7", alpha=0.3, label="99% pointwise band")
    for name, r in comps[:10]:
        u = (r + 0.5) / (result.num_draws + 1)
        ax.plot(z, (u[:, None] <= z[None]).mean(0) - z, lw=1, label=name)
    ax.set_xlabel("normalized rank")
    ax.set_ylabel("ECDF - uniform")
    ax.legend(fontsize=7)
    return _out(fig, path)
