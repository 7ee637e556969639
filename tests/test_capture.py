"""Captured SVI steps (pyro_vi.infer.capture): the replayed graph is the eager objective, and
capture is refused where a replay would not be faithful."""

import functools
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import M0, R0, S, X, conjugate_pair  # z ~ N(0, 1), x ~ N(z, S^2), q = N(m, r^2)

from pyro_vi import fit
from pyro_vi.data import Split
from pyro_vi.infer.capture import CapturedStep
from pyro_vi.infer.svi import ScaleLatents
from pyro_vi.infer.training import make_loss
from pyro_vi.models import VAE


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_replayed_gradient_is_the_exact_one_particle_gradient(beta):
    record = []
    model, guide = conjugate_pair(record)
    elbo = make_loss("elbo", max_plate_nesting=0)
    store = pyro.get_param_store()
    elbo.differentiable_loss(model, guide)  # creates m and r
    params = [store.get_param(n).unconstrained() for n in ("m", "r")]
    step = CapturedStep(elbo, model, guide, lambda: params, ScaleLatents)
    for seed in range(3):
        torch.manual_seed(100 + seed)
        loss = step((), {}, beta)
        assert loss is not None, step.failure
        gm, gr = -params[0].grad.item(), -params[1].grad.item() / R0  # r is stored as log r
        for p in params:
            p.grad = None
        torch.manual_seed(100 + seed)  # the same noise through the eager objective
        record.clear()
        with ScaleLatents(beta):
            elbo.differentiable_loss(model, guide)
        z = record[-1].item()
        eps = (z - M0) / R0
        assert gm == pytest.approx((X - z) / S**2 - beta * z, abs=1e-10)
        assert gr == pytest.approx(eps * ((X - z) / S**2 - beta * z) + beta / R0, abs=1e-10)
    assert len(step.graphs) == 1  # one signature, captured once


def test_fit_captures_and_matches_the_eager_fit(digits):
    def run(capture):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(64, 4, (32,))
        r = fit(vae.model, vae.guide, digits, epochs=3, batch_size=100, anneal_epochs=2,
                device="cpu", seed=3, progress=False, capture=capture)  # fmt: skip
        return r, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    captured, p_captured = run(True)
    eager, p_eager = run(False)
    assert captured.step.startswith("captured"), captured.step
    assert eager.step == "eager"
    # the same noise and batches: equal to float rounding after 3 epochs of Adam
    for h_c, h_e in zip(captured.history, eager.history, strict=True):
        assert h_c["train_elbo"] == pytest.approx(h_e["train_elbo"], rel=1e-4)
    for name, value in p_eager.items():
        assert torch.allclose(p_captured[name], value, rtol=1e-3, atol=1e-4), name


def test_data_dependent_control_flow_stays_eager():
    def model(x, idx=None, size=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", size, subsample=idx):
            if x.sum() > 0:  # decided by the data's values: not capturable
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
            else:
                pyro.sample("x", dist.Normal(-loc, 1.0).to_event(1), obs=x)

    def guide(x, idx=None, size=None):
        pass

    pyro.clear_param_store()
    x = torch.randn(64, 2) + 3.0
    result = fit(model, guide, Split(x), epochs=2, batch_size=16, lr=0.1, device="cpu",
                 progress=False, capture=True)  # fmt: skip
    assert result.step.startswith("eager (not traceable"), result.step
    assert pyro.param("loc").detach().sum() > 0.5  # and it trained


def test_writes_into_module_state_stay_eager():
    net = torch.nn.BatchNorm1d(2)  # updates its running statistics in place

    def model(x, idx=None, size=None):
        pyro.module("bn", net)
        with pyro.plate("data", size, subsample=idx):
            pyro.sample("x", dist.Normal(net(x), 1.0).to_event(1), obs=x)

    def guide(x, idx=None, size=None):
        pass

    pyro.clear_param_store()
    x = torch.randn(64, 2)
    result = fit(model, guide, Split(x), epochs=2, batch_size=16, device="cpu", progress=False,
                 capture=True)  # fmt: skip
    assert result.step.startswith("eager (the step writes"), result.step
    # every step updated the statistics (8), as did fit's structure trace and the capture attempt
    assert int(net.num_batches_tracked) == 8 + 2


def test_one_graph_per_batch_shape(digits):
    pyro.clear_param_store()
    vae = VAE(64, 2, (16,))
    elbo = make_loss("elbo", max_plate_nesting=1)
    x = digits.train.x
    idx = torch.arange(10)
    vae.model(x[idx], idx=idx, size=len(x))
    vae.guide(x[idx], idx=idx, size=len(x))
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in store]
    step = CapturedStep(elbo, vae.model, vae.guide, lambda: params, ScaleLatents)
    for b in (10, 10, 7, 10, 7):
        idx = torch.arange(b)
        assert step((x[idx],), {"idx": idx, "size": len(x)}) is not None, step.failure
    assert step((x[:10],), {"idx": torch.arange(10), "size": 5}) is not None
    assert len(step.graphs) == 3  # batch 10, batch 7, and another data size


def test_auto_decides_by_measurement_and_a_late_capture_matches_eager(digits, one_thread):
    """capture="auto" times its first eager steps: a tiny run stays eager with the estimate as
    the reason; a long one captures (after the timed steps) and ends where an eager run does."""

    def run(epochs, capture="auto"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(64, 2, (16,))
        r = fit(vae.model, vae.guide, digits.train, epochs=epochs, batch_size=256, seed=1,
                device="cpu", progress=False, valid=None, capture=capture)  # fmt: skip
        return r, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    tiny, _ = run(2)  # 14 steps: saving a few ms cannot pay for a capture
    assert tiny.step.startswith("eager (capture would not pay: ≈"), tiny.step
    assert re.search(r"saved over \d+ steps of [\d.]+ ms against ≈[\d.]+ s to capture", tiny.step)
    late, p_late = run(120)  # 840 steps
    assert late.step == "captured (torchscript)", late.step
    eager, p_eager = run(120, capture=False)
    for k in p_eager:
        torch.testing.assert_close(p_late[k], p_eager[k], rtol=1e-4, atol=1e-4)
    assert late.history[-1]["train_elbo"] == pytest.approx(
        eager.history[-1]["train_elbo"], abs=1e-3
    )


def test_payoff_weighs_saving_against_cost(monkeypatch):
    from pyro_vi.infer.svi import Payoff

    # the priors alone: what earlier tests' captures recorded in this process is set aside
    monkeypatch.setattr(Payoff, "costs", [])
    monkeypatch.setattr(Payoff, "speedups", [])
    pays, why = Payoff.estimate(0.002, 10)  # about 14 ms to save against about 0.12 s
    assert not pays and "over 10 steps of 2.00 ms" in why
    assert Payoff.estimate(0.002, 10_000)[0]


def test_enumerated_elbo_is_captured_and_exact_where_probabilities_are_zero():
    """TraceEnum_ELBO with guide-side enumeration: the captured step takes the expectation
    without Pyro's branch on (p > 0).all(), and a q(z | x) with exact zeros (where log p(x | z) is
    -inf) still gives the exact loss: x_i ~ Uniform(10 z_i, 10 z_i + 1), z_i ~ Categorical(w)
    and q a point mass on the right component, so the loss is -sum_i log w_{z_i}."""
    lows = torch.tensor([0.0, 10.0])

    def model(x):
        w = pyro.param("w", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            low = lows[z]
            pyro.sample("x", dist.Uniform(low, low + 1.0, validate_args=False), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        right = (x >= 10.0).long()
        logits = torch.where(right[:, None] == torch.arange(2), a, float("-inf"))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    pyro.clear_param_store()
    x = torch.tensor([0.5, 10.2, 10.9, 0.1, 10.5])
    elbo = make_loss("enum", max_plate_nesting=1)
    eager = elbo.differentiable_loss(model, guide, x)  # Pyro's own (masked) branch
    truth = -(2 * torch.tensor(0.3).log() + 3 * torch.tensor(0.7).log())
    assert float(eager.detach()) == pytest.approx(float(truth), rel=1e-6)
    store = pyro.get_param_store()
    params = [store.get_param(n).unconstrained() for n in ("w", "a")]
    step = CapturedStep(elbo, model, guide, lambda: params, ScaleLatents)
    for _ in range(2):  # the capture's own check, then a replay
        for p in params:
            p.grad = None
        loss = step((x,), {})
        assert loss is not None, step.failure
        assert float(loss) == pytest.approx(float(truth), rel=1e-6)
        assert bool(torch.isfinite(params[0].grad).all())


@pytest.mark.parametrize("method", ["map", "meanfield", "amortized"])
def test_enumerated_gmm_fits_on_captured_steps_as_it_does_eagerly(method):
    from pyro_vi.data import load
    from pyro_vi.models import GMM

    x = load("gmm", n=1200, seed=0).train.x.float()

    def run(capture):
        pyro.clear_param_store()
        torch.manual_seed(0)  # the amortized classifier's start
        gmm = GMM(3, method=method).setup(x)
        return fit(gmm.model, gmm.guide, x, loss=gmm.loss, epochs=3, batch_size=128, lr=0.05,
                   seed=0, progress=False, capture=capture)  # fmt: skip

    captured, eager = run(True), run(False)
    assert captured.step.startswith("captured"), captured.step
    for h_c, h_e in zip(captured.history, eager.history, strict=True):
        assert h_c["train_elbo"] == pytest.approx(h_e["train_elbo"], rel=1e-5)


def test_graphs_whose_shapes_depend_on_the_data_values_are_refused():
    """A boolean mask's size is fixed by the capture batch; replaying it on other values would
    fail or be wrong, so such a graph is named and refused (integer gathers are fine)."""
    from pyro_vi.infer.capture import _dynamic_shape, trace

    x, i = torch.randn(6), torch.tensor([0, 2])
    assert _dynamic_shape(trace(lambda x, i: x[i] * 2, (x, i))) is None
    assert _dynamic_shape(trace(lambda x: x[x > 0] * 2, (x,))) == "aten.index.Tensor"
    assert _dynamic_shape(trace(lambda x: torch.nonzero(x > 0).sum(), (x,))) is not None


@pytest.mark.parametrize("slow", [False, True])
def test_auto_drops_a_capture_whose_replays_are_not_faster(digits, one_thread, monkeypatch, slow):
    """capture="auto" times replays after the warm-up too: a captured step made slower than the
    eager one (a sleep around the replay stands in for a matmul-bound graph traced without
    oneDNN) is dropped and the loop goes on eagerly; an honest capture of the small VAE stays."""
    import time

    from pyro_vi import SVI
    from pyro_vi.infer import capture as capture_module

    if slow:
        original = capture_module.CapturedStep.__call__

        def slow_call(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            time.sleep(0.02)
            return out

        monkeypatch.setattr(capture_module.CapturedStep, "__call__", slow_call)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(64, 2, (16,))
    svi = SVI(vae.model, vae.guide, functools.partial(torch.optim.Adam, lr=1e-3),
              make_loss("elbo", max_plate_nesting=1), capture="auto")  # fmt: skip
    idx, n = torch.arange(128), len(digits.train)
    x = digits.train.batch(idx, torch.Generator().manual_seed(0)).x
    steps = 2 + SVI.MEASURED + SVI.WARMUP + SVI.MEASURED + 3
    losses = [svi.step(x, idx=idx, size=n) for _ in range(steps)]
    assert all(math.isfinite(v) for v in losses)
    if slow:
        assert svi.mode.startswith("eager (captured steps were not faster: "), svi.mode
        assert svi.captured_steps == SVI.WARMUP + SVI.MEASURED
    else:
        assert svi.mode == "captured (torchscript)", svi.mode
