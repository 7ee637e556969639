"""pyro_vi.SVI against pyro.infer.SVI: the same losses and parameters step for step at equal
seeds, eager and captured; torch.optim factories with a learning-rate scheduler in a user loop;
eager with the reason where capture is refused."""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI as PyroSVI
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_vi
from pyro_vi.data import data_plate, load
from pyro_vi.models import VAE


def conjugate_model(x, idx=None, size=None):
    theta = pyro.sample("theta", dist.Normal(x.new_zeros(2), 2.0).to_event(1))
    with data_plate(x, idx, size):
        pyro.sample("x", dist.Normal(theta, 1.0).to_event(1), obs=x)


def conjugate_guide(x, idx=None, size=None):
    loc = pyro.param("loc", x.new_zeros(2))
    scale = pyro.param("scale", x.new_ones(2), constraint=dist.constraints.positive)
    pyro.sample("theta", dist.Normal(loc, scale).to_event(1))


def _run(svi_class, model, guide, batches, seed=0, **options):
    """Losses and final unconstrained parameters of one loop over ``batches``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = svi_class(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(), **options)
    losses = [svi.step(x, **kw) for x, kw in batches]
    store = pyro.get_param_store()
    params = {k: store.get_param(k).unconstrained().detach().clone() for k in store.keys()}
    return losses, params, svi


def _same(a, b, exact: bool):
    (la, pa, _), (lb, pb, _) = a, b
    assert pa.keys() == pb.keys()
    if exact:
        assert la == lb and all(torch.equal(pa[k], pb[k]) for k in pa)
    else:
        torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-4)
        for k in pa:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-5)


def test_conjugate_model_step_for_step_eager_and_captured():
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0)) + 1.0
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(60):
        idx = torch.randperm(40, generator=g)[:10]
        batches.append((x[idx], {"idx": idx, "size": 40}))
    ref = _run(PyroSVI, conjugate_model, conjugate_guide, batches)
    _same(ref, _run(pyro_vi.SVI, conjugate_model, conjugate_guide, batches, capture=False), True)
    captured = _run(pyro_vi.SVI, conjugate_model, conjugate_guide, batches)
    _same(ref, captured, False)
    svi = captured[2]
    assert svi.mode.startswith("captured") and svi.captured_steps == 59


def test_vae_step_for_step_eager_and_captured(one_thread):
    data = load("digits", binarize="static")
    vae = VAE.from_data(data, z_dim=4, hidden=(32,))
    split = data.train
    batches = [(b.x, {"idx": b.idx, "size": b.size})
               for b in split.batches(128, generator=torch.Generator().manual_seed(0))]  # fmt: skip
    batches = batches[:-1]  # one batch shape: every step after the first is captured
    init = {k: v.detach().clone() for k, v in vae.state_dict().items()}

    def run(cls, **options):
        vae.load_state_dict(init)
        return _run(cls, vae.model, vae.guide, batches, **options)

    ref = run(PyroSVI)
    _same(ref, run(pyro_vi.SVI, capture=False), True)
    captured = run(pyro_vi.SVI)
    _same(ref, captured, False)
    assert captured[2].captured_steps == len(batches) - 1


def test_torch_factory_with_a_scheduler_in_a_user_loop():
    """A factory for one torch optimizer over every parameter, an lr_scheduler on it, an
    autoguide with a subsampled plate: the loop a Pyro user writes, unchanged."""
    torch.manual_seed(0)
    x = torch.randn(200, 2) * 0.5 + torch.tensor([1.0, -2.0])

    def model(x, size=None):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 5.0).to_event(1))
        with pyro.plate("data", size or len(x), subsample_size=len(x) if size else None):
            pyro.sample("obs", dist.Normal(loc, 0.5).to_event(1), obs=x)

    def loop(capture):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(model)
        svi = pyro_vi.SVI(model, guide, functools.partial(torch.optim.Adam, lr=0.1),
                          Trace_ELBO(), capture=capture)  # fmt: skip
        svi.init(x[:50], size=200)
        sched = torch.optim.lr_scheduler.StepLR(svi.optimizer, step_size=100, gamma=0.5)
        losses = []
        for step in range(300):
            rows = x[torch.arange(50) + 50 * (step % 4)]
            losses.append(svi.step(rows, size=200))
            sched.step()
        return losses, guide.median()["loc"].detach(), svi

    eager, loc_eager, _ = loop(False)
    captured, loc, svi = loop(True)
    assert svi.mode.startswith("captured") and svi.optimizer.param_groups[0]["lr"] == 0.0125
    torch.testing.assert_close(torch.tensor(captured), torch.tensor(eager), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(loc, loc_eager, rtol=1e-4, atol=1e-4)
    # the posterior mean of loc is the data mean to within 0.5 / sqrt(200) = 0.035 per coordinate
    torch.testing.assert_close(loc, x.mean(0), rtol=0, atol=0.1)


def test_refused_capture_trains_eagerly_and_says_why():
    x = torch.randn(30, 2) + 1.0

    def branching_guide(x, idx=None, size=None):
        loc = pyro.param("loc", x.new_zeros(2))
        scale = 1.0 if loc.detach().sum().item() > 100 else 0.5  # a tensor read as a number
        pyro.sample("theta", dist.Normal(loc, scale).to_event(1))

    pyro.set_rng_seed(0)
    svi = pyro_vi.SVI(conjugate_model, branching_guide, pyro.optim.Adam({"lr": 0.1}),
                      Trace_ELBO())  # fmt: skip
    losses = [svi.step(x) for _ in range(100)]
    assert svi.mode.startswith("eager (not traceable") and losses[-1] < losses[0]
    renyi = pyro_vi.SVI(conjugate_model, conjugate_guide, pyro.optim.Adam({"lr": 0.1}),
                        RenyiELBO(num_particles=2))  # fmt: skip
    renyi.step(x)
    renyi.step(x)
    assert renyi.mode == "eager (RenyiELBO has no differentiable_loss)"
    assert renyi.evaluate_loss(x) > 0


def test_an_optimizer_instance_is_refused_with_the_fix():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"factory params -> torch.optim.Optimizer"):
        pyro_vi.SVI(conjugate_model, conjugate_guide, torch.optim.Adam([p]), Trace_ELBO())
