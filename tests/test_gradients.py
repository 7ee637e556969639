"""ELBO gradients of fit's objectives against analytic gradients on a conjugate Gaussian model.

Model z ~ N(0, 1), x ~ N(z, s^2); guide q(z) = N(m, r^2) with z = m + r*eps. The one-particle
reparameterized gradient of log p(x, z) - log q(z) is, at the drawn eps,
    d/dm = (x - z)/s^2 - z,   d/dr = eps * ((x - z)/s^2 - z) + 1/r,
and its expectation is d/dm = (x - m)/s^2 - m,  d/dr = -r/s^2 - r + 1/r.
"""

import pyro
import pytest
from helpers import M0, R0, S, X, conjugate_pair

from pyro_vi.infer.svi import ScaleLatents
from pyro_vi.infer.training import make_loss


def _grads(loss):
    loss.backward()
    store = pyro.get_param_store()
    m, r = store.get_param("m").unconstrained(), store.get_param("r").unconstrained()
    # r is stored as log r: d/d(log r) = r * d/dr
    return -m.grad.item(), -r.grad.item() / R0


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_one_particle_gradient_is_exact(beta):
    record = []
    model, guide = conjugate_pair(record)
    elbo = make_loss("elbo", num_particles=1, max_plate_nesting=0)
    with ScaleLatents(beta):
        gm, gr = _grads(elbo.differentiable_loss(model, guide))
    z = record[-1].item()
    eps = (z - M0) / R0
    # annealed objective: log p(x|z) + beta * (log p(z) - log q(z))
    dm = (X - z) / S**2 - beta * z
    dr = eps * ((X - z) / S**2 - beta * z) + beta / R0
    assert gm == pytest.approx(dm, abs=1e-10)
    assert gr == pytest.approx(dr, abs=1e-10)


@pytest.mark.parametrize("loss", ["elbo", "meanfield"])
def test_many_particle_gradient_within_monte_carlo_error(loss):
    n = 20000
    record = []
    model, guide = conjugate_pair(record)
    elbo = make_loss(loss, num_particles=n, vectorize_particles=True, max_plate_nesting=0)
    gm, gr = _grads(elbo.differentiable_loss(model, guide))
    z = record[-1]
    eps = (z - M0) / R0
    per_m = (X - z) / S**2 - z
    per_r = eps * per_m + 1 / R0
    if loss == "meanfield":  # analytic KL: only log p(x|z) is sampled
        per_m = (X - z) / S**2 - M0
        per_r = eps * (X - z) / S**2 - R0 + 1 / R0
    exact_m = (X - M0) / S**2 - M0
    exact_r = -R0 / S**2 - R0 + 1 / R0
    se_m = per_m.std().item() / n**0.5
    se_r = per_r.std().item() / n**0.5
    assert abs(gm - exact_m) < 4 * se_m
    assert abs(gr - exact_r) < 4 * se_r
    # and the estimate equals the mean of the per-particle gradients at the drawn particles
    assert gm == pytest.approx(per_m.mean().item(), rel=1e-9, abs=1e-9)
    assert gr == pytest.approx(per_r.mean().item(), rel=1e-9, abs=1e-9)
