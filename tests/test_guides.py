"""Per-datapoint guides, test-time local inference, semi-amortized training and the gap report."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vi import elbo, fit
from pyro_vi.data import data_plate
from pyro_vi.evaluate.bounds import log_weights
from pyro_vi.infer.guides import (
    GuideError,
    PerDatapointGuide,
    SemiAmortizedELBO,
    TensorGuide,
    fit_local,
    guide_normal_params,
    refine,
)
from pyro_vi.models import VAE
from pyro_vi.studies.gaps import amortization_gaps

N, D, S = 64, 4, 0.5  # datapoints, latent dimension, likelihood scale of the conjugate model


pytestmark = pytest.mark.usefixtures("one_thread")


def conjugate_model(x, idx=None, size=None):
    """z_i ~ N(0, I), x_i | z_i ~ N(z_i, S^2 I): the posterior is N(x/(1+S^2), S^2/(1+S^2) I)."""
    with data_plate(x, idx, size):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), D), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, S).to_event(1), obs=x)


def conjugate_data(n=N):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1)) * math.sqrt(1 + S**2) + 1


def test_per_datapoint_guide_reaches_exact_log_marginal_under_subsampling():
    """Diagonal-Gaussian exact posterior: the fitted ELBO falls short of log p(x) by exactly
    KL(q || p(z|x)), computed from the tables, and that KL is small (the tables hold the
    posterior means and standard deviations)."""
    x = conjugate_data()
    guide = PerDatapointGuide(conjugate_model, N)
    fit(conjugate_model, guide, x, epochs=80, batch_size=32, lr=0.3, lr_decay=0.95,
        num_particles=16, device="cpu", validate=False, progress=False)  # fmt: skip
    exact = dist.Normal(0.0, math.sqrt(1 + S**2)).log_prob(x).sum()
    fitted = elbo(conjugate_model, guide, x, num_particles=500).detach().sum()
    q = guide.params("z")
    post_loc, post_scale = x / (1 + S**2), S / math.sqrt(1 + S**2)
    kl = torch.distributions.kl_divergence(
        dist.Normal(q["loc"], q["scale"]), dist.Normal(post_loc, post_scale)
    )
    # log p(x) - ELBO(q) = KL(q || p(z|x)) exactly; the 500-particle estimate's s.e. is
    # sqrt(sum_i var(log w_i) / 500), from fresh log weights of the fitted guide. 4 s.e.
    with torch.no_grad():
        lw = log_weights(conjugate_model, guide, x, num_particles=500, nesting=1)[0]
    se = math.sqrt(lw.var(0).sum() / 500)
    gap, kl_sum = float(exact - fitted), float(kl.sum())
    assert abs(gap - kl_sum) < 4 * se, (gap, kl_sum, se)
    # the optimisation bound (analytic, no Monte-Carlo error): summed over the 64 datapoints the
    # KL is 0.64-0.82 nats over fit seeds 0-40; 1.5 nats = 0.006 nats per latent coordinate
    assert kl_sum < 1.5
    assert (q["loc"] - post_loc).abs().mean() < 0.05
    assert (q["scale"].mean() - post_scale).abs() < 0.02


def test_rows_outside_the_batch_keep_values_and_adam_moments(monkeypatch):
    """Through pyro_vi.fit: each SparseAdam step leaves the rows absent from the batch (values,
    first and second moments) exactly as they were, while the batch's rows move."""
    checked = []

    class Recording(torch.optim.SparseAdam):
        def step(self, closure=None):
            snap = []
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    rows = p.grad.coalesce().indices()[0]
                    st = self.state.get(p, {})
                    moments = [st[k].clone() for k in ("exp_avg", "exp_avg_sq") if k in st]
                    snap.append((p, rows, p.detach().clone(), moments))
            out = super().step(closure)
            for p, rows, before, moments in snap:
                out_rows = torch.ones(p.shape[0], dtype=torch.bool)
                out_rows[rows] = False
                assert torch.equal(p.detach()[out_rows], before[out_rows])
                assert not torch.equal(p.detach()[rows], before[rows])
                st = self.state[p]
                for m, k in zip(moments, ("exp_avg", "exp_avg_sq"), strict=False):
                    assert torch.equal(st[k][out_rows], m[out_rows])
                    assert bool((m[out_rows] != 0).any()) or len(checked) < 4
                checked.append(len(rows))
            return out

    monkeypatch.setattr(torch.optim, "SparseAdam", Recording)
    x = conjugate_data(32)
    guide = PerDatapointGuide(conjugate_model, 32)
    fit(conjugate_model, guide, x, epochs=4, batch_size=8, lr=0.1, device="cpu",
        validate=False, progress=False)  # fmt: skip
    assert len(checked) == 2 * 16  # two tables (loc, log_scale) × 16 steps
    assert set(checked) == {8}


def test_constrained_site_gets_a_transformed_gaussian():
    def model(x, idx=None, size=None):
        with data_plate(x, idx, size):
            rate = pyro.sample("rate", dist.Gamma(x.new_ones(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    x = torch.poisson(torch.full((10, 2), 3.0))
    guide = PerDatapointGuide(model, 10)
    tr = poutine.trace(guide).get_trace(x)
    value = tr.nodes["rate"]["value"]
    assert value.shape == (10, 2) and bool((value > 0).all())
    assert torch.isfinite(elbo(model, guide, x, num_particles=4)).all()


def test_bad_inputs_give_one_line_errors():
    x = conjugate_data(8)

    def no_plate(x, idx=None, size=None):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def discrete(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("c", dist.Categorical(logits=x.new_zeros(len(x), 3)))

    def global_latent(x, idx=None, size=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Normal(mu, 1.0).expand([len(x)]))

    cases = [(no_plate, "no plate named 'data'"), (discrete, "is discrete"),
             (global_latent, "not in the 'data' plate")]  # fmt: skip
    for model, words in cases:
        with pytest.raises(GuideError, match=words) as e:
            PerDatapointGuide(model, 8)(x)
        assert "\n" not in str(e.value) and ":" in str(e.value)
    guide = PerDatapointGuide(conjugate_model, 8)
    with pytest.raises(GuideError, match="outside the table of 8 rows"):
        guide(x[:2], idx=torch.tensor([3, 8]), size=8)
    with pytest.raises(GuideError, match="without idx"):
        PerDatapointGuide(conjugate_model, 9)(x)
    with pytest.raises(GuideError, match="K must be >= 0"):
        SemiAmortizedELBO(steps=-1)
    with pytest.raises(GuideError, match="steps=-2"):
        fit_local(conjugate_model, x, steps=-2)
    assert issubclass(GuideError, ValueError)


def small_vae(seed=0):
    torch.manual_seed(seed)
    vae = VAE(16, z_dim=3, hidden=(32,), activation="tanh")
    with torch.no_grad():  # an encoder whose proposals sit 2 prior sds off the posteriors
        vae.encoder[-1].bias[:3] += 2.0
    x = (torch.rand(48, 16, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    return vae, x


def test_fit_local_freezes_the_model_and_improves_on_the_encoder():
    vae, x = small_vae()
    before = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    pyro.set_rng_seed(0)
    amortized = elbo(vae.model, vae.guide, x, num_particles=200).detach()
    local = fit_local(vae.model, x, init=vae.guide, steps=200, lr=0.05)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in vae.parameters())
    fitted = elbo(vae.model, local, x, num_particles=200).detach()
    # the shifted encoder is far from each posterior: local inference must gain clearly
    assert float((fitted - amortized).mean()) > 1.0
    assert float((fitted - amortized).min()) > -0.5


def test_refinement_raises_the_batch_elbo():
    vae, x = small_vae()
    sa = SemiAmortizedELBO(steps=20, inner_lr=0.1)
    fam, lam0, lamk = sa.refine(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    e0 = elbo(vae.model, _fixed(fam, lam0), x, num_particles=200).mean()
    pyro.set_rng_seed(1)
    ek = elbo(vae.model, _fixed(fam, lamk), x, num_particles=200).mean()
    assert float(ek.detach() - e0.detach()) > 0.5


def _fixed(fam, lam):
    return TensorGuide(fam, {k: (a.detach(), b.detach()) for k, (a, b) in lam.items()})


def test_semi_amortized_encoder_gradient_is_its_own_elbo_gradient():
    """Stop-gradient variant: the encoder's gradient equals the ELBO gradient (analytic KL) at
    λ(0) with the same noise, whatever K; the decoder's comes from the refined q."""
    vae, x = small_vae()
    enc = list(vae.encoder.parameters())
    sa = SemiAmortizedELBO(steps=3, inner_lr=0.1)
    sa.differentiable_loss(vae.model, vae.guide, x)  # the first call traces the model once
    torch.manual_seed(5)
    g_sa = torch.autograd.grad(sa.differentiable_loss(vae.model, vae.guide, x), enc)
    torch.manual_seed(5)
    with poutine.block():
        poutine.trace(vae.guide).get_trace(x)  # the proposal's own draw, as in refine
    plain = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    g_plain = torch.autograd.grad(plain, enc)
    for a, b in zip(g_sa, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_semi_amortized_trains_with_fit_and_k0_is_amortized():
    vae, x = small_vae()
    res = fit(vae.model, vae.guide, x, epochs=2, batch_size=16, loss=SemiAmortizedELBO(steps=2),
              device="cpu", validate=False, progress=False)  # fmt: skip
    assert all(math.isfinite(h["train_elbo"]) for h in res.history)
    torch.manual_seed(3)
    a = SemiAmortizedELBO(steps=0).differentiable_loss(vae.model, vae.guide, x)
    torch.manual_seed(3)
    b = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(a, b)


def test_amortization_gaps_are_nonnegative():
    vae, x = small_vae()
    sa = SemiAmortizedELBO(steps=10, inner_lr=0.1)
    gaps = amortization_gaps(vae.model, vae, x, num_samples=500, elbo_particles=100,
                             local_steps=200, local_lr=0.05, semi_amortized=sa)  # fmt: skip
    m = gaps["mean"]
    for k in ("amortized_elbo", "local_elbo", "log_px", "refined_elbo", "amortization_gap",
              "approximation_gap", "semi_amortized_gap", "inference_gap"):  # fmt: skip
        assert gaps[k].shape == (len(x),) and math.isfinite(m[k])
    assert not any(k.startswith("_gaps_local") for k in pyro.get_param_store().keys())
    assert m["amortization_gap"] > 1.0
    assert m["amortization_gap"] > m["semi_amortized_gap"]
    # the approximation gap is IWAE-500 minus a 100-particle ELBO of the same local q*: >= 0 in
    # expectation. Its s.e. from fresh log weights of q* (fit_local is seeded: the same q*):
    # var(ELBO_i) = var(log w_i) / 100, var(IWAE-K_i) = var(w_i / mean w_i) / K (delta method).
    # One-sided, 4 s.e.
    local = fit_local(vae.model, x, init=vae.guide, steps=200, lr=0.05, name="_gaps_local")
    with torch.no_grad():
        lw = log_weights(vae.model, local, x, num_particles=2000, nesting=1)[0]
    rel_w = (lw - lw.logsumexp(0)).exp() * len(lw)
    se = math.sqrt(lw.var(0).sum() / 100 + rel_w.var(0).sum() / 500) / len(x)
    assert m["approximation_gap"] > -4 * se, (m["approximation_gap"], se)


def test_guide_normal_params_refuses_non_normal_sites():
    def guide(x, idx=None, size=None):
        with data_plate(x, idx, size):
            pyro.sample("z", dist.Laplace(x.new_zeros(len(x), D), 1.0).to_event(1))

    with pytest.raises(GuideError, match="not Normal"):
        guide_normal_params(guide, conjugate_data(4))
    with pytest.raises(GuideError, match="steps=-1"):
        refine(conjugate_model, PerDatapointGuide(conjugate_model, 4), {}, conjugate_data(4),
               steps=-1)  # fmt: skip
