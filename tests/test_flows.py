"""Tests for pyro_vi.flows (NICE, Real-NVP) and the flow density models."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import randomize

import pyro_vi
from pyro_vi.flows import (
    Flow,
    FlowError,
    Permutation,
    Scaling,
    additive_coupling,
    conditional_nice,
    conditional_realnvp,
    nice,
    realnvp,
)
from pyro_vi.models.flow_density import FlowDensity, FlowDensityError, toy_2d

BUILDERS = {
    "nice": lambda d: nice(d, num_layers=3, hidden_dims=(16, 16)),
    "nice-random": lambda d: nice(d, num_layers=3, hidden_dims=(16,), permutation="random"),
    "realnvp": lambda d: realnvp(d, num_layers=3, hidden_dims=(16, 16)),
    "realnvp-random-bn": lambda d: realnvp(
        d, num_layers=3, hidden_dims=(16,), permutation="random", batchnorm=True
    ),
}


def built(kind: str, dim: int, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    return randomize(BUILDERS[kind](dim), seed).double().eval()


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("dim", [2, 5])
def test_inverse_of_forward_is_identity(kind, dim):
    flow = built(kind, dim)
    z = torch.randn(64, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = flow(z)
    assert not torch.allclose(x, z, atol=1e-3)  # the flow is not the identity
    torch.testing.assert_close(flow.inv(x), z, rtol=0, atol=1e-10)
    torch.testing.assert_close(flow(flow.inv(x)), x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", BUILDERS)
def test_log_det_matches_autograd_jacobian(kind):
    dim = 5
    flow = built(kind, dim)
    if kind.startswith("nice"):
        with torch.no_grad():  # give NICE's scaling a non-zero log-determinant
            flow.parts[0].log_scale.copy_(torch.linspace(-0.4, 0.6, dim, dtype=torch.float64))
    z = torch.randn(8, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ladj = flow.log_abs_det_jacobian(z, flow(z))
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0], z[i])
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(ladj[i], expected, rtol=0, atol=1e-10)
    # the inverse direction reports the same (forward) log-determinant for the pair
    x = flow(z)
    z_back = flow.inv(x)
    torch.testing.assert_close(flow.log_abs_det_jacobian(z_back, x), ladj, rtol=0, atol=1e-10)


def test_nice_couplings_preserve_volume():
    flow = built("nice", 4)
    with torch.no_grad():
        flow.parts[0].log_scale.zero_()
    z = torch.randn(16, 4, dtype=torch.float64)
    assert torch.equal(flow.log_abs_det_jacobian(z, flow(z)), torch.zeros(16, dtype=torch.float64))


@pytest.mark.parametrize("kind,base", [("nice", "logistic"), ("realnvp", "normal")])
def test_2d_density_integrates_to_one(kind, base):
    torch.manual_seed(0)
    flow = randomize(BUILDERS[kind](2), seed=3, std=0.15).double().eval()
    density = FlowDensity(flow, base=base).double()
    # Riemann sum on [-12, 12]^2; the smooth density's quadrature error is far below 1e-3, and
    # the mass outside the box is below 1e-4 for these mildly perturbed flows (the error seen is
    # at most 5.6e-5): 1e-3 bounds both
    h = 24.0 / 600
    t = torch.arange(-12.0 + h / 2, 12.0, h, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    with torch.no_grad():
        mass = density.log_prob(grid).exp().sum().item() * h * h
    assert abs(mass - 1.0) < 1e-3, mass


@pytest.mark.parametrize("builder", [conditional_nice, conditional_realnvp])
def test_conditional_flows_change_with_context(builder):
    torch.manual_seed(0)
    cflow = randomize(builder(3, context_dim=2, num_layers=2, hidden_dims=(16,))).double()
    z = torch.randn(10, 3, dtype=torch.float64)
    c1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    c2 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    x1, x2 = cflow.condition(c1)(z), cflow.condition(c2)(z)
    assert (x1 - x2).abs().min() > 1e-4  # every row moves, not just one coordinate in one row
    torch.testing.assert_close(cflow.condition(c1).inv(x1), z, rtol=0, atol=1e-10)
    # a batch of contexts, one per row, equals conditioning row by row
    cs = torch.randn(10, 2, dtype=torch.float64)
    xs = cflow.condition(cs)(z)
    rows = torch.stack([cflow.condition(cs[i])(z[i : i + 1])[0] for i in range(10)])
    torch.testing.assert_close(xs, rows, rtol=0, atol=1e-12)
    # a conditioned flow scores samples in a TransformedDistribution
    base = dist.Normal(torch.zeros(10, 3, dtype=torch.float64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [cflow.condition(cs)])
    assert q.log_prob(q.sample()).shape == (10,)


@pytest.mark.parametrize("kind", BUILDERS)
def test_state_dict_round_trip_into_fresh_flow(kind):
    src = built(kind, 5, seed=0)
    fresh = BUILDERS[kind](5).double().eval()  # other seed: other random permutations
    fresh.load_state_dict(src.state_dict())
    z = torch.randn(32, 5, dtype=torch.float64)
    torch.testing.assert_close(fresh(z), src(z), rtol=0, atol=0)
    torch.testing.assert_close(fresh.inv(src(z)), z, rtol=0, atol=1e-10)


def test_permutations_live_in_state_dict():
    torch.manual_seed(0)
    a = nice(6, permutation="random")
    torch.manual_seed(1)
    b = nice(6, permutation="random")
    keys = [k for k in a.state_dict() if k.endswith("permutation")]
    assert keys, "permutations must be buffers in the state_dict"
    assert any(not torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in keys)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in keys)


def test_pieces_compose_in_transformed_distribution():
    flow = Flow([Scaling(2), Permutation(torch.tensor([1, 0])), additive_coupling(2)], dim=2)
    with torch.no_grad():
        flow.parts[0].log_scale.copy_(torch.tensor([0.5, -1.0]))
        for p in flow.parts[2].parameters():  # a zero shift network: the identity coupling
            p.zero_()
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    x = torch.randn(4, 2)
    # so the density is N(0, diag(e^1, e^-2)) permuted
    expected = dist.Normal(torch.zeros(2), torch.tensor([math.exp(-1.0), math.exp(0.5)]))
    got = dist.TransformedDistribution(base, [flow]).log_prob(x)
    torch.testing.assert_close(got, expected.log_prob(x).sum(-1))


def test_image_log_prob_counts_the_preprocessing_jacobian():
    torch.manual_seed(0)
    dim, alpha = 6, 0.05
    flow = randomize(realnvp(dim, num_layers=2, hidden_dims=(8,))).double().eval()
    density = FlowDensity(flow, images=True, alpha=alpha).double()
    x = torch.randint(0, 256, (5, dim)).double() / 255
    got = density.log_prob(x, torch.Generator().manual_seed(7))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    p = alpha + (1 - 2 * alpha) * (torch.round(x * 255) + u) / 256
    y = torch.log(p) - torch.log1p(-p)
    base = dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)
    log_py = dist.TransformedDistribution(base, [flow]).log_prob(y)
    log_dy_dv = (math.log(1 - 2 * alpha) - math.log(256) - torch.log(p * (1 - p))).sum(-1)
    torch.testing.assert_close(got, log_py + log_dy_dv, rtol=0, atol=1e-9)
    bpd = density.bits_per_dim(x, seed=7)
    torch.testing.assert_close(bpd, -got / (dim * math.log(2)), rtol=0, atol=1e-12)


def test_uniform_density_on_pixels_costs_eight_bits():
    # with an identity flow and alpha = 0, p_V is the logistic-pushforward; a sanity anchor:
    # bits/dim of any density on [0, 256)^D is 8 - (bits/dim of the same density on [0, 1)^D)
    flow = nice(2, num_layers=1, hidden_dims=(4,)).double()
    with torch.no_grad():
        for p in flow.parameters():  # zero shifts and unit scaling: the identity
            p.zero_()
    density = FlowDensity(flow, base="logistic", images=True, alpha=0.0).double()
    # logistic base + sigmoid = uniform on (0, 1), scaled to (0, 256): exactly 8 bits/dim
    x = torch.rand(100, 2, dtype=torch.float64)
    torch.testing.assert_close(
        density.bits_per_dim(x), torch.full((100,), 8.0, dtype=torch.float64), rtol=0, atol=1e-9
    )


def test_fit_maximizes_likelihood_and_elbo_is_log_likelihood():
    pyro.clear_param_store()
    x = toy_2d("8gaussians", 1024, seed=0)
    torch.manual_seed(0)
    density = FlowDensity(realnvp(2, num_layers=4, hidden_dims=(32, 32)))
    with torch.no_grad():
        before = -density.log_prob(x).mean().item()
    pyro_vi.fit(density.model, density.guide, x, epochs=4, lr=3e-3, progress=False)
    with torch.no_grad():
        after = -density.log_prob(x).mean().item()
        elbo = pyro_vi.elbo(density.model, density.guide, x)
        torch.testing.assert_close(elbo, density.log_prob(x), rtol=1e-5, atol=1e-5)
    # N(0, I) scores these points at about 4.0 nats; the trained flow must do clearly better
    assert after < before - 0.5


def test_samples_have_the_right_shape_and_range():
    torch.manual_seed(0)
    density = FlowDensity(randomize(nice(6, hidden_dims=(8,))), images=True)
    s = density.sample(4)
    assert s.shape == (4, 6) and s.min() >= 0 and s.max() <= 1
    assert torch.equal(s * 255, torch.round(s * 255))


@pytest.mark.parametrize(
    "make", [lambda: nice(1), lambda: realnvp(1), lambda: additive_coupling(1)]
)
def test_coupling_needs_two_dimensions(make):
    with pytest.raises(FlowError, match="dim >= 2"):
        make()


def test_wrong_context_width_is_one_line_error():
    cflow = conditional_realnvp(4, context_dim=3)
    with pytest.raises(FlowError, match="context_dim=3") as err:
        cflow.condition(torch.zeros(5, 2))
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_images_outside_unit_interval_are_refused():
    density = FlowDensity(nice(4), images=True)
    with pytest.raises(FlowDensityError, match=r"outside \[0, 1\]") as err:
        density.model(torch.full((3, 4), 255.0))
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    with pytest.raises(FlowDensityError, match="dim=4"):
        density.log_prob(torch.zeros(3, 5))


def test_unknown_options_are_refused():
    with pytest.raises(FlowError, match="permutation"):
        realnvp(4, permutation="checkers")
    with pytest.raises(FlowError, match="split_dim"):
        additive_coupling(4, split_dim=4)
    with pytest.raises(FlowDensityError, match="base"):
        FlowDensity(nice(2), base="cauchy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    density = FlowDensity(realnvp(4, permutation="random")).cuda()
    x = torch.randn(8, 4, device="cuda")
    assert density.log_prob(x).device.type == "cuda"
    assert density.sample(3).device.type == "cuda"
