"""The mixture density network: the enumerated log-likelihood against a hand-computed mixture
density, the exact-posterior guide (tight ELBO, Fisher's identity), the data sets, a tiny training
run against the unimodal network, bad input and the CLI."""

import json
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.cli import main
from pyro_vi.data import load
from pyro_vi.models import MDN, REGISTRY
from pyro_vi.models.mdn import MDNError


def _hand_log_likelihood(m: MDN, rows: torch.Tensor) -> torch.Tensor:
    """log sum_k pi_k N(y; mu_k, diag sigma_k^2), written out from the network's outputs."""
    logits, loc, scale = m.mixture(rows[:, : m.x_dim])
    y = rows[:, None, m.x_dim :]  # (N, 1, D)
    log_n = -0.5 * ((y - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    log_pi = logits - logits.logsumexp(-1, keepdim=True)
    return torch.logsumexp(log_pi + log_n.sum(-1), -1)


def _empty_guide(*args, **kwargs):
    pass


@pytest.fixture
def mdn():
    torch.manual_seed(0)
    m = MDN(x_dim=2, y_dim=2, components=3, hidden=(8,), loc=[0.5, -1, 0, 2], scale=[2, 1, 1, 3])
    rows = torch.randn(40, 4) * torch.tensor([2.0, 1.0, 1.0, 3.0])
    return m, rows


def test_enumerated_log_likelihood_is_the_mixture_density(mdn):
    m, rows = mdn
    hand = _hand_log_likelihood(m, rows)
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        torch.testing.assert_close(m.log_likelihood(rows), hand)
        # z enumerated in the model (empty guide) and in the exact-posterior guide
        assert -enum.loss(m.model, _empty_guide, rows) == pytest.approx(hand.sum().item(), rel=1e-5)
        assert -enum.loss(m.model, m.guide, rows) == pytest.approx(hand.sum().item(), rel=1e-5)
        # the guide is the exact posterior: every sample's log weight is log p(y | x)
        torch.testing.assert_close(elbo(m.model, m.guide, rows, num_particles=7), hand)
        torch.testing.assert_close(log_marginal(m.model, m.guide, rows, num_samples=5), hand)
        with pytest.warns(UserWarning, match="TraceEnum_ELBO"):  # Trace_ELBO samples z: exact too
            plain = -Trace_ELBO().loss(m.model, m.guide, rows)
    assert plain == pytest.approx(hand.sum().item(), rel=1e-5)


def test_enumerated_gradient_is_the_log_likelihood_gradient(mdn):
    m, rows = mdn
    grads = []
    for loss in (
        lambda: TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m.model, m.guide, rows),
        lambda: -_hand_log_likelihood(m, rows).sum(),
    ):
        m.zero_grad()
        loss().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_map_mode_is_a_lower_bound(mdn):
    m, rows = mdn
    hard = MDN(**{**m.config, "mode": "map"})
    hard.load_state_dict(m.state_dict())
    with torch.no_grad():
        bound = elbo(hard.model, hard.guide, rows)
        exact = hard.log_likelihood(rows)
        best = hard.joint_log_prob(rows).max(-1).values  # log p(y, z_hat | x)
    torch.testing.assert_close(bound, best)
    assert bool((bound <= exact + 1e-6).all()) and bool((bound < exact).any())


def test_density_integrates_to_one_and_matches_the_likelihood():
    torch.manual_seed(0)
    m = MDN(components=4, hidden=(8,))
    xs = torch.tensor([[-1.0], [0.3], [2.0]])
    ys = torch.linspace(-30, 30, 20001)[:, None]
    with torch.no_grad():
        p = m.density(xs, ys)
        mass = torch.trapezoid(p, ys[:, 0], dim=-1)
        rows = torch.cat(
            [xs.repeat_interleave(2, 0), torch.tensor([[0.1], [-2.0]]).repeat(3, 1)], 1
        )
        direct = m.density(xs, rows[:2, 1:])
        ll = m.log_likelihood(rows).reshape(3, 2)
    torch.testing.assert_close(mass, torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(direct.log(), ll, atol=1e-5, rtol=1e-5)


def test_inverse_sine_and_iris_petal_data():
    d = load("inverse-sine", n=500, seed=1)
    assert (len(d.train), len(d.valid), len(d.test)) == (450, 50, 100) and d.dim == 2
    rows = torch.cat([d.train.x, d.valid.x, d.test.x]).double()
    x, y = rows[:, 0], rows[:, 1]
    assert bool(((y >= 0) & (y <= 1)).all())
    assert float((x - y - 0.3 * torch.sin(2 * math.pi * y)).abs().max()) <= 0.1 + 1e-6
    assert d.info["y_dim"] == 1 and d.train.y is None
    iris = load("iris-petal")
    assert len(iris.test) == 30 and len(iris.train) + len(iris.valid) == 120
    assert iris.num_classes == 3 and iris.dim == 2
    m = MDN.from_data(iris, components=2)
    assert (m.x_dim, m.y_dim) == (1, 1)
    assert m.config["loc"][1] == pytest.approx(iris.train.x[:, 1].double().mean().item(), 1e-6)


def test_mdn_beats_the_unimodal_network_on_inverse_sine(one_thread):
    data = load("inverse-sine", n=1000, seed=0)
    pyro.set_rng_seed(0)
    mdn = MDN.from_data(data, components=5, hidden=(32, 32))
    uni = mdn.unimodal()
    assert uni.components == 1 and uni.config["hidden"] == mdn.config["hidden"]
    loglik = {}
    for m in (mdn, uni):
        fit(m.model, m.guide, data, loss="enum", epochs=40, batch_size=250, lr=1e-2,
            device="cpu", seed=0, progress=False)  # fmt: skip
        with torch.no_grad():
            loglik[m.components] = m.log_likelihood(data.test.x).mean().item()
    # the truth scores 1.26 nats and the best unimodal Gaussian 0.66 (benchmarks/mdn.py)
    assert loglik[5] > 0.8 and loglik[5] - loglik[1] > 0.4, loglik


@pytest.mark.parametrize("k", [0, -2, 2.5, True])
def test_fewer_than_one_component_is_a_one_line_error(k):
    with pytest.raises(MDNError, match=r"components=.*K >= 1") as e:
        MDN(components=k)
    assert "\n" not in str(e.value)


def test_bad_options_and_data():
    with pytest.raises(MDNError, match="mode 'soft'"):
        MDN(mode="soft")
    with pytest.raises(MDNError, match="loc/scale"):
        MDN(loc=[0.0], scale=[1.0, 1.0])
    with pytest.raises(MDNError, match="input columns"):
        MDN.from_data(load("inverse-sine", n=50), y_dim=2)
    with pytest.raises(MDNError, match="do not fit this MDN"):
        MDN(x_dim=1, y_dim=1).check(torch.zeros(5, 3))
    assert REGISTRY["mdn"] is MDN
    rows = torch.randn(4, 2)
    MDN(components=2).model(rows)  # registers its parameters as "mdn"
    with pytest.raises(MDNError, match="clear_param_store"):
        MDN(components=3).model(rows)  # would train the first network's parameters
    MDN(components=3).unimodal().model(rows)  # another name: fine


def test_cli_fits_an_mdn(tmp_path, capsys, one_thread):
    out = tmp_path / "mdn"
    argv = ["fit", "mdn", "--components", "3", "--hidden", "16",  # the MDN's own data and loss
            "--epochs", "2", "--batch-size", "512", "--lr", "1e-2",
            "--iwae-k", "10", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"config.json", "checkpoint.pt", "metrics.json", "loglik.json", "density.png"} <= {
        p.name for p in out.iterdir()
    }
    m = json.loads((out / "metrics.json").read_text())
    exact = json.loads((out / "loglik.json").read_text())["test_loglik"]
    # exact-posterior guide: the ELBO and the importance-sampled value are log p(y | x) itself
    assert m["test_elbo"] == pytest.approx(exact, abs=1e-4) == printed["test_log_px"]
    c = json.loads((out / "config.json").read_text())
    assert c["model_config"]["components"] == 3 and c["fit_options"]["loss"] == "enum"
    assert c["dataset"] == "inverse-sine"
    assert (out / "density.png").read_bytes()[:4] == b"\x89PNG"
    png = tmp_path / "samples.png"  # rows [x, y ~ p(y | x)] as a scatter
    assert main(["sample", str(out), "-n", "50", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sample_draws_from_the_mixture():
    torch.manual_seed(0)
    m = MDN(x_dim=2, y_dim=3, components=4, hidden=(8,), loc=[1, 2, 0, 0, 0], scale=[1] * 5)
    rows = m.sample(6)
    assert rows.shape == (6, 5) and not rows.requires_grad
    inp = torch.zeros(20000, 2)
    y = m.sample(inp)[:, 2:]
    with torch.no_grad():
        logits, loc, scale = m.mixture(inp[:1])
        mean = (logits.softmax(-1)[..., None] * loc).sum(-2)[0]
    # the sample mean is the mixture mean within 5 Monte-Carlo s.e. per coordinate (sd / sqrt(n))
    se = y.std(0) / math.sqrt(len(y))
    assert bool(((y.mean(0) - mean).abs() < 5 * se).all()), (y.mean(0) - mean) / se


@pytest.mark.parametrize(
    "extra, match",
    [
        (["mdn", "--dataset", "inverse-sine", "--components", "0"], "components=0"),
        (["mdn", "--dataset", "moons", "--y-dim", "2"], "input columns"),
        (["vae", "--components", "3"], "--components does not apply to model 'vae'"),
    ],
)
def test_cli_bad_mdn_input(tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    assert main(["fit", *extra, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err
    assert not out.exists() or not any(out.iterdir())


def test_cli_options_override_the_models_defaults(tmp_path, one_thread):
    out = tmp_path / "map"
    argv = ["fit", "mdn", "--dataset", "iris-petal", "--mode", "map", "--loss", "elbo",
            "--hidden", "8", "--epochs", "1", "--iwae-k", "0", "--no-figures",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    c = json.loads((out / "config.json").read_text())
    assert (c["dataset"], c["fit_options"]["loss"], c["model_config"]["mode"]) == (
        "iris-petal",
        "elbo",
        "map",
    )
