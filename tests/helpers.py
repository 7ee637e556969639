"""What several test modules share (one module, imported as ``from helpers import ...``; tests/
is on sys.path under pytest's default import mode).

- Machine data: tests that read data from the machine (Debian's packages, the download cache)
  skip where the data are absent, with the one-line remedy of :func:`pyro_vi.data.missing` as the
  reason. ``@needs("fashion-mnist")`` marks a test; :func:`used_in` finds the machine data sets
  that a README snippet or a notebook loads, so that their parametrized tests get the mark
  without a list to keep. The skip itself happens in ``conftest.pytest_runtest_setup``.
- Monte-Carlo standard errors of a run directory's figures (:func:`mc_se`), for tolerances.
- The conjugate Gaussian pair with analytic gradients (:func:`conjugate_pair`) and
  :func:`randomize` for flows.
"""

from __future__ import annotations

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

MACHINE_SETS = ("fashion-mnist", "mnist", "wordnet")
_NAMES = "|".join(map(re.escape, MACHINE_SETS))
# load("fashion-mnist"...) in code (quotes possibly escaped inside notebook JSON), or a CLI flag
_USE = re.compile(
    rf"""load\(\s*\\?["']({_NAMES})\\?["']|--(?:dataset|corpus)[ =]({_NAMES})(?![\w-])"""
)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as reading these machine data sets."""
    return pytest.mark.machine_data(*names)


def used_in(code: str) -> tuple[str, ...]:
    """The machine data sets that ``code`` loads, in order of first use."""
    found = [a or b for a, b in _USE.findall(code)]
    return tuple(dict.fromkeys(found))


def marks_for(code: str) -> list[pytest.MarkDecorator]:
    """The ``needs`` mark for what ``code`` loads, or none (for ``pytest.param(..., marks=)``)."""
    names = used_in(code)
    return [needs(*names)] if names else []


def mc_se(run_dir, iwae_k: int | None = None, particles: int = 10, pool: int = 100) -> dict:
    """Monte-Carlo s.e. of a run's reported means, keyed like metrics.json: the ``particles``-
    particle ELBO of each split (sqrt(sum_i var(log w_i) / particles) / N) and, with ``iwae_k``,
    the test set's IWAE-K (delta method: var(w_i / mean w_i) / K per datapoint), from ``pool``
    fresh log weights per datapoint of the saved model."""
    from pyro_vi.cli.runs import load_run, model_inputs
    from pyro_vi.evaluate.bounds import log_weights, max_plate_nesting

    model_obj, data, config = load_run(run_dir, "cpu")
    out = {}
    with torch.no_grad():
        for split in ("train", "valid", "test"):
            args, kw = model_inputs(model_obj, getattr(data, split), config["seed"])
            nesting = max_plate_nesting(model_obj.model, model_obj.guide, *args, **kw)
            lw = log_weights(model_obj.model, model_obj.guide, *args, num_particles=pool,
                             nesting=nesting, **kw)[0]  # fmt: skip
            n = lw.shape[1]
            out[f"{split}_elbo"] = math.sqrt(lw.var(0).sum() / particles) / n
            if iwae_k and split == "test":
                rel_w = (lw - lw.logsumexp(0)).exp() * pool
                out["test_log_px"] = math.sqrt(rel_w.var(0).sum() / iwae_k) / n
    return out


#: the conjugate pair: x = X observed, x ~ N(z, S^2), z ~ N(0, 1); q(z) = N(M0, R0^2) at the start
X, S, M0, R0 = 1.5, 0.8, 0.3, 0.6


def conjugate_pair(record: list):
    """The conjugate model z ~ N(0, 1), x = X ~ N(z, S^2) and the guide q(z) = N(m, r^2) from
    (M0, R0), which appends each draw of z to ``record``."""

    def model():
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.sample("x", dist.Normal(z, S), obs=torch.tensor(X, dtype=torch.float64))

    def guide():
        m = pyro.param("m", torch.tensor(M0, dtype=torch.float64))
        r = pyro.param("r", torch.tensor(R0, dtype=torch.float64), constraint=constraints.positive)
        z = pyro.sample("z", dist.Normal(m, r))
        record.append(z.detach())

    return model, guide


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its initial value (zero-initialized couplings are the identity,
    which would make most checks vacuous); BatchNorm statistics become non-trivial too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("moving_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("moving_variance"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return module
