"""The pieces of the published density table: gated layers, the VampPrior, the two-layer HVAE
and ``benchmarks/density_table.py`` in its fast mode."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.layers import GatedDense, GaussianHead, check_clamp, gated_mlp
from pyro_vi.models import HVAE, VAE
from pyro_vi.priors import VampPrior

ROOT = Path(__file__).resolve().parents[1]


def test_gated_dense_is_a_gated_product_with_gradients():
    torch.manual_seed(0)
    layer = GatedDense(3, 5).double()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    w, b = layer.linear.weight, layer.linear.bias
    expected = (x @ w[:5].T + b[:5]) * torch.sigmoid(x @ w[5:].T + b[5:])
    assert layer(x).shape == (7, 5)
    torch.testing.assert_close(layer(x), expected)
    assert torch.autograd.gradcheck(layer, (x,))
    net = gated_mlp([3, 8, 8, 2])
    assert [type(m).__name__ for m in net] == ["GatedDense", "GatedDense", "Linear"]
    assert net(torch.randn(4, 3)).shape == (4, 2)


def test_clamped_head_and_bad_clamps():
    head = GaussianHead(2, log_var_clamp=(-6.0, 2.0))
    loc, scale = head(torch.tensor([[0.0, 1.0, -50.0, 50.0]]))
    torch.testing.assert_close(scale, torch.tensor([[math.exp(-3.0), math.exp(1.0)]]))
    for bad in [(2.0, -6.0), (1.0, 1.0), (1.0,)]:
        with pytest.raises(ValueError, match="low < high"):
            check_clamp(bad)
    with pytest.raises(ValueError, match="low < high"):
        VAE(4, 2, (8,), log_var_clamp=(0.0, -1.0))


def test_vampprior_is_the_mean_of_the_encoder_gaussians_at_the_pseudo_inputs():
    torch.manual_seed(1)
    vamp = VampPrior(x_dim=3, components=4).double()
    vamp.weight.data.uniform_(-0.2, 1.2)  # some outside [0, 1]: the Hardtanh clamps them
    A, c = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)

    def encode(u):
        return u @ A, (u @ c).exp()

    z = torch.randn(6, 2, dtype=torch.float64)
    u = vamp.weight.clamp(0, 1)
    loc, scale = (u @ A)[:, None], (u @ c).exp()[:, None]  # (K, 1, 2)
    log_n = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = torch.logsumexp(log_n, 0) - math.log(4)
    p = vamp(encode, n=6)
    assert p.batch_shape == (6,) and p.event_shape == (2,)
    torch.testing.assert_close(p.log_prob(z), expected)
    with pytest.raises(ValueError, match="pseudo_inputs=0"):
        VampPrior(3, 0)
    with pytest.raises(ValueError, match="drop the flows"):
        VAE(4, 2, (8,), prior="vampprior", guide_flow="nice")


def _hvae(prior="gaussian"):
    torch.manual_seed(2)
    pyro.clear_param_store()
    return HVAE(4, z_dim=1, hidden=6, prior=prior, pseudo_inputs=3).double()


@pytest.mark.parametrize("prior", ["gaussian", "vampprior"])
def test_hvae_log_marginal_matches_quadrature_and_bounds_the_elbo(prior):
    """A 1+1-D latent: log p(x) by a 2-D grid against IWAE-20000 (its bias is ~ Var(w)/(2K))."""
    hvae = _hvae(prior)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    g = torch.linspace(-7, 7, 561, dtype=torch.float64)
    z2, z1 = torch.meshgrid(g, g, indexing="ij")
    z2, z1 = z2.reshape(-1, 1, 1), z1.reshape(-1, 1, 1)  # (G, 1, 1): broadcast over the rows
    with torch.no_grad():
        log_joint = (
            hvae.prior(1, x).log_prob(z2)
            + hvae.z1_prior(z2).log_prob(z1)
            + hvae.likelihood_dist(torch.cat([z1, z2], -1)).log_prob(x)
        )
        truth = torch.logsumexp(log_joint, 0) + 2 * math.log(g[1] - g[0])
        torch.manual_seed(3)
        lm = log_marginal(hvae.model, hvae.guide, x, num_samples=20000)
        bound = elbo(hvae.model, hvae.guide, x, num_particles=4000)
    torch.testing.assert_close(lm, truth, atol=0.02, rtol=0)
    assert (lm > bound).all()


def test_hvae_and_vampprior_vae_fit_and_capture(digits):
    """The captured steps of the density-table pairs are their eager steps: at equal seeds the
    two runs give the same ELBO history."""
    nets = {
        "hvae": lambda: HVAE(64, z_dim=4, hidden=16, prior="vampprior", pseudo_inputs=5),
        "vamp": lambda: VAE(64, 4, (16, 16), gated=True, log_var_clamp=(-6, 2),
                            prior="vampprior", pseudo_inputs=5),
    }  # fmt: skip
    for make in nets.values():
        runs = {}
        for capture in (False, True):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            net = make()
            runs[capture] = fit(net.model, net.guide, digits, epochs=2, batch_size=200,
                                capture=capture, progress=False)  # fmt: skip
        assert runs[True].step.startswith("captured"), runs[True].step
        eager, captured = ([r["train_elbo"] for r in runs[c].history] for c in (False, True))
        assert captured == pytest.approx(eager, rel=1e-4)
        assert net.sample(3).shape == (3, 64)


def _bench():
    spec = importlib.util.spec_from_file_location(
        "density_table", ROOT / "benchmarks" / "density_table.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_density_table_fast_mode_prints_its_row_and_refuses_a_foreign_resume(tmp_path, capsys):
    bench = _bench()
    out = bench.main(["--fast", "--model", "hvae-vampprior", "--run-dir", str(tmp_path / "r")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert {"model", "nll", "test_elbo", "epochs", "best_epoch", "seconds"} <= set(out)
    assert '"model": "hvae-vampprior"' in line and out["epochs"] == 2
    assert out["nll"] <= -out["test_elbo"] + 0.5  # IWAE bound above the ELBO, up to MC noise
    for argv, msg in [(["--model", "vae"], "model='hvae-vampprior'"), ([], "another recipe")]:
        with pytest.raises(SystemExit) as e:
            bench.main(["--resume", str(tmp_path / "r"), *argv, *(["--fast"] if argv else [])])
        assert e.value.code == 2 and msg in capsys.readouterr().err
