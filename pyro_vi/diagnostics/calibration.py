r"""Simulation-based calibration of a model/guide pair: SBC (Talts et al. 2018) and VSBC (Yao et
al. 2018).

Each simulation draws :math:`\theta_0 \sim p(\theta)` and :math:`y \sim p(y \mid \theta_0)`,
(re)fits the guide to :math:`y` when asked, and draws :math:`\theta_1..\theta_L \sim
q(\theta \mid y)`. For every scalar latent component:

- **SBC**: the rank :math:`r = \#\{l : \theta_l < \theta_0\} \in \{0..L\}`, ties
  (discrete latents) broken at random, :math:`r = \#\{\theta_l < \theta_0\} + \lfloor U
  (\#\{\theta_l = \theta_0\} + 1) \rfloor`, :math:`U \sim \mathcal U(0, 1)`. If q is the
  exact posterior, :math:`\theta_0` and the :math:`\theta_l` are exchangeable draws from the
  joint, so :math:`r` is uniform on :math:`\{0..L\}`; :meth:`SBCResult.chi2` tests that on
  ``bins`` equal bins (``(L + 1) % bins == 0``).
- **VSBC**: the posterior probability :math:`p = \Pr_q(\theta < \theta_0)` (= r / L). For an
  exact posterior it is uniform, and a guide whose marginals are unbiased gives a distribution of
  p symmetric about 1/2; :meth:`SBCResult.vsbc_test` compares p with 1 - p by a two-sample
  Kolmogorov-Smirnov test (small p-value: biased marginal). Example::

    res = sbc(model, guide, x, num_simulations=200, num_draws=99, seed=0)
    res.chi2()["theta[0]"].pvalue, res.vsbc_test()["theta[0]"].pvalue

The simulated observations replace the model's first argument (its data; the usual
``(x, idx=None, size=None)`` signature), or ``make_args(observations, *args, **kwargs) ->
(args, kwargs)`` builds the call for models that take data otherwise. ``fit_guide(*args,
**kwargs) -> guide`` refits per simulation inside a private param-store scope (None: the guide
is used as is: exact, analytic or already amortized guides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from scipy import stats

from pyro_vi.diagnostics.importance import DiagnosticsError, _prior_draws, draw

__all__ = ["SBCResult", "sbc"]


@dataclass
class SBCResult:
    """Ranks of the true values among ``num_draws`` guide draws, per simulation.

    ``ranks[name]`` and ``probs[name]`` have shape (num_simulations, *site shape); the site shape
    leaves out the draw axis (plates, then event dims).
    """

    ranks: dict[str, np.ndarray]
    num_draws: int

    @property
    def probs(self) -> dict[str, np.ndarray]:
        """VSBC's posterior probabilities Pr_q(theta < theta_0) = rank / L."""
        return {k: v / self.num_draws for k, v in self.ranks.items()}

    @property
    def num_simulations(self) -> int:
        return next(iter(self.ranks.values())).shape[0]

    def components(self) -> dict[str, np.ndarray]:
        """Ranks per scalar component, named like ``theta[0]``: arrays of shape (simulations,)."""
        out = {}
        for name, r in self.ranks.items():
            flat = r.reshape(r.shape[0], -1)
            if flat.shape[1] == 1 and r.ndim == 1:
                out[name] = flat[:, 0]
                continue
            for j, index in enumerate(np.ndindex(*r.shape[1:])):
                out[f"{name}[{','.join(map(str, index))}]"] = flat[:, j]
        return out

    def chi2(self, bins: int | None = None) -> dict:
        """Chi-square test of uniform ranks per component (``scipy.stats.chisquare`` results).

        ``bins`` must divide L + 1; the default is the largest divisor of L + 1 that leaves at
        least 5 expected counts per bin (at most 20 bins).
        """
        bins = bins or self.default_bins()
        if bins < 2:
            raise DiagnosticsError(
                f"L + 1 = {self.num_draws + 1} has no divisor in 2..20 leaving 5 simulations per "
                "bin: choose num_draws with num_draws + 1 divisible by, e.g., 10 (num_draws=99)"
            )
        if (self.num_draws + 1) % bins:
            raise DiagnosticsError(
                f"bins={bins} does not divide L + 1 = {self.num_draws + 1}: pick a divisor"
            )
        width = (self.num_draws + 1) // bins
        return {
            k: stats.chisquare(np.bincount(r // width, minlength=bins))
            for k, r in self.components().items()
        }

    def default_bins(self) -> int:
        n, total = self.num_simulations, self.num_draws + 1
        options = [b for b in range(2, 21) if total % b == 0 and n / b >= 5]
        return max(options, default=1)

    def vsbc_test(self) -> dict:
        """Two-sample KS test of p against 1 - p per component: symmetry of VSBC's p-values."""
        return {
            k: stats.ks_2samp(r / self.num_draws, 1.0 - r / self.num_draws)
            for k, r in self.components().items()
        }


def _first_arg(observations: dict, *args, **kwargs):
    if len(observations) != 1 or not args or not torch.is_tensor(args[0]):
        raise DiagnosticsError(
            f"observed sites {sorted(observations)}: sbc replaces the model's first argument "
            "by one observed site; pass make_args=(observations, *args, **kw) -> (args, kw)"
        )
    (value,) = observations.values()
    if value.shape != args[0].shape:
        raise DiagnosticsError(
            f"the simulated observations have shape {tuple(value.shape)}, the model's first "
            f"argument {tuple(args[0].shape)}: pass make_args to build the model's arguments"
        )
    return (value.to(args[0]), *args[1:]), kwargs


def sbc(
    model: Callable,
    guide: Callable,
    *args,
    num_simulations: int = 100,
    num_draws: int = 99,
    sites: list[str] | None = None,
    fit_guide: Callable[..., Callable] | None = None,
    make_args: Callable | None = None,
    seed: int = 0,
    vectorize: bool | None = None,
    **kwargs,
) -> SBCResult:
    """Run SBC/VSBC: ``num_simulations`` prior draws, ``num_draws`` guide draws each.

    ``args``/``kwargs`` are a template call of the model (the data fix shapes); ``sites`` are the
    latents checked (default: every guide site outside the ``"data"`` plate, or all of them when
    there is none). See the module docstring for ``fit_guide`` and ``make_args``.
    """
    if num_simulations < 2 or num_draws < 1:
        raise DiagnosticsError(
            f"num_simulations={num_simulations}, num_draws={num_draws}: use at least 2 and 1"
        )
    make_args = make_args or _first_arg
    pyro.set_rng_seed(seed)
    ties = np.random.default_rng(seed)  # breaks ties of discrete draws with the true value
    with torch.no_grad():
        prior = _prior_draws(model, *args, num_samples=num_simulations, **kwargs)
    truth = {k: v for group in prior.values() for k, (v, _) in group.items()}
    with poutine.block():
        mt = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    observed = [k for k, s in mt.nodes.items() if (s.get("infer") or {}).get("was_observed")]
    ranks: dict[str, list[np.ndarray]] = {}
    store = pyro.get_param_store()
    for i in range(num_simulations):
        call_args, call_kw = make_args({k: truth[k][i] for k in observed}, *args, **kwargs)
        theta0 = {k: v[i] for k, v in truth.items() if k not in observed}
        if fit_guide is not None:
            with store.scope():
                g = fit_guide(*call_args, **call_kw)
                d = draw(model, g, *call_args, num_samples=max(num_draws, 10),
                         vectorize=vectorize, **call_kw)  # fmt: skip
        else:
            d = draw(model, guide, *call_args, num_samples=max(num_draws, 10),
                     vectorize=vectorize, **call_kw)  # fmt: skip
        chosen = sites or (sorted(d.global_sites) or sorted(d.values))
        for name in chosen:
            if name not in d.values or name not in theta0:
                raise DiagnosticsError(
                    f"site {name!r} is not a latent of both model and guide: choose from "
                    f"{sorted(d.values)}"
                )
            draws = d.values[name][:num_draws]
            t0 = theta0[name].to(draws)
            if t0.shape != draws.shape[1:]:
                raise DiagnosticsError(
                    f"site {name!r}: prior draw of shape {tuple(t0.shape)} against guide draws "
                    f"of shape {tuple(draws.shape[1:])}"
                )
            rank = (draws < t0).sum(0).cpu().numpy()
            equal = (draws == t0).sum(0).cpu().numpy()
            if equal.any():  # uniform among the tied positions (Talts et al. 2018)
                rank = rank + np.floor(ties.random(equal.shape) * (equal + 1)).astype(rank.dtype)
            ranks.setdefault(name, []).append(rank)
    return SBCResult({k: np.stack(v) for k, v in ranks.items()}, num_draws)
