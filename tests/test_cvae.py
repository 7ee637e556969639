"""The conditional VAE: the importance-sampled conditional log-likelihood against the ELBO and a
plain Monte Carlo estimate, sample shapes and ranges, training on a tiny budget, the CLI path and
bad inputs. Digits (8x8) throughout, for speed."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from helpers import mc_se
from pyro import poutine
from pyro.distributions import Bernoulli

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.cli import main
from pyro_vi.data import load
from pyro_vi.evaluate.bounds import log_weights
from pyro_vi.models import REGISTRY
from pyro_vi.models.cvae import CVAE, CVAEError

SMALL = dict(z_dim=2, hidden=(64,))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small networks: one torch thread is faster than two contending for loaded cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(digits):
    """A CVAE for two visible quadrants after a short fit (baseline first, then the CVAE)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    cvae = CVAE.from_data(digits, task="quadrant", quadrants=2, baseline_epochs=10, **SMALL)
    fit(cvae.model, cvae.guide, digits, epochs=10, lr=3e-3, progress=False, seed=0, device="cpu")
    return cvae


def test_cll_sits_above_the_elbo_and_settles_as_k_grows(trained, digits):
    x = digits.test.evaluation_x(0)[:100]
    with torch.no_grad():
        lower = elbo(trained.model, trained.guide, x, num_particles=200).mean().item()
        cll = {
            k: log_marginal(trained.model, trained.guide, x, num_samples=k).mean().item()
            for k in (1, 10, 100, 1000, 3000)
        }
        # Monte-Carlo s.e. of each mean over the 100 datapoints, from the per-datapoint weight
        # variance of fresh draws: var(log w_i) / K for K = 1 and the ELBO, and the delta method
        # var(w_i / mean w_i) / K for K >= 10 (it matches the spread of grouped IWAE-10 values)
        lw = log_weights(trained.model, trained.guide, x, num_particles=4000, nesting=1)[0]
    var_lw = lw.var(0).sum().item()
    var_w = ((lw - lw.logsumexp(0)).exp() * len(lw)).var(0).sum().item()
    se = {k: math.sqrt((var_lw if k == 1 else var_w) / k) / len(x) for k in cll}
    se_lower = math.sqrt(var_lw / 200) / len(x)

    def se_diff(a, b):
        return math.hypot(se[a], se[b])

    # K = 1 is a one-sample ELBO: the same expectation as the 200-particle ELBO
    assert abs(cll[1] - lower) < 4 * math.hypot(se[1], se_lower)
    # IWAE-K never falls with K in expectation: no step down beyond 4 s.e. of the difference
    # (the rises after K = 10 are below 0.005 nats here, under the s.e.: no strict order)
    for a, b in ((1, 10), (10, 100), (100, 1000), (1000, 3000)):
        assert cll[b] > cll[a] - 4 * se_diff(a, b), (a, b, cll, se)
    # the bound sits above the ELBO: by KL(q || p) = 0.03 nats here, 16 s.e. of the difference
    assert cll[1000] - lower > 4 * math.hypot(se[1000], se_lower)
    # converged: IWAE-1000 and IWAE-3000 differ by their biases, var(w / mean w) / 2K, plus noise
    bias = var_w / len(x) / 2 * (1 / 1000 - 1 / 3000)
    assert abs(cll[3000] - cll[1000] - bias) < 4 * se_diff(1000, 3000)


def test_cll_agrees_with_monte_carlo_over_the_prior(trained, digits):
    """log p(y|x) = log E_{p(z|x)} p(y|x,z): plain Monte Carlo with the prior network as proposal
    (many draws; z is 2-D) must agree with importance sampling through the recognition network."""
    x = digits.test.evaluation_x(0)[:20]
    with torch.no_grad():
        inp, target = trained.split(x)
        z = trained.prior(inp).sample((50_000,))
        lp = trained.generation(z, inp).log_prob(target)  # (draws, N)
        plain = torch.logsumexp(lp, 0) - math.log(len(z))
        is_est = log_marginal(trained.model, trained.guide, x, num_samples=1000)
    assert torch.allclose(plain, is_est, atol=0.15), (plain - is_est).abs().max()
    with torch.no_grad():
        nn_nll = trained.baseline_nll(x)
        probs = torch.sigmoid(trained.baseline(inp))
    # the baseline's -log p_NN(y | x): the Bernoulli likelihood of the masked pixels
    torch.testing.assert_close(nn_nll, -Bernoulli(probs).log_prob(target).sum(-1))
    # after 10 epochs it beats a coin flip per masked pixel (32 log 2 = 22.2 nats; it scores
    # 14): no Monte-Carlo error, so the margin is 4 s.e. of the mean over these 20 datapoints
    assert nn_nll.mean() + 4 * nn_nll.std() / math.sqrt(20) < 32 * math.log(2)


def test_model_observes_only_the_masked_part(trained, digits):
    x = digits.test.evaluation_x(0)[:5]
    tr = poutine.trace(trained.model).get_trace(x)
    observed = [n for n, s in tr.nodes.items() if s["type"] == "sample" and s["is_observed"]]
    assert observed == ["target"]
    assert tr.nodes["target"]["value"].shape == (5, 32)  # two of four 4x4 quadrants are masked
    assert torch.equal(tr.nodes["target"]["value"], x.reshape(5, 8, 8)[:, :, 4:].reshape(5, 32))
    # the prior depends on x: different inputs, different p(z | x)
    loc = trained.prior(trained.split(x)[0]).mean
    assert loc.shape == (5, 2) and not torch.allclose(loc[0], loc[1])


def test_completion_shapes_ranges_and_several_modes(trained, digits):
    x = digits.test.evaluation_x(0)[:6]
    torch.manual_seed(0)
    images = trained.complete(x, num_samples=5)
    assert images.shape == (5, 6, 64)
    assert bool(((images >= 0) & (images <= 1)).all())
    visible = x.reshape(6, 8, 8)[:, :, :4]  # quadrants=2: the left half is the input
    assert torch.equal(images.reshape(5, 6, 8, 8)[..., :4], visible.expand(5, -1, -1, -1))
    assert images.std(0).max() > 0.05  # several z per input give different completions
    grid, nrow = trained.sample_grid(20, digits)
    assert nrow == 8 and grid.shape == (24, 64) and bool(((grid >= 0) & (grid <= 1)).all())


def test_label_task_trains_and_samples_by_class(digits):
    cvae = CVAE.from_data(digits, task="label", baseline_epochs=3, **SMALL)
    x, y = digits.test.evaluation_x(0)[:30], digits.test.y[:30]
    with torch.no_grad():
        before = -elbo(cvae.model, cvae.guide, x, y=y, num_particles=20).mean()
    fit(cvae.model, cvae.guide, digits, epochs=4, lr=3e-3, progress=False, valid=None, device="cpu")
    with torch.no_grad():
        after = -elbo(cvae.model, cvae.guide, x, y=y, num_particles=20).mean()
        cll = log_marginal(cvae.model, cvae.guide, x, y=y, num_samples=50)
    assert after < before - 1.0 and cll.shape == (30,) and bool(torch.isfinite(cll).all())
    images = cvae.complete(None, y=torch.arange(10), num_samples=3)
    assert images.shape == (3, 10, 64) and bool(((images >= 0) & (images <= 1)).all())
    grid, nrow = cvae.sample_grid(16, digits)
    assert grid.shape == (16, 64) and nrow == 8


def test_baseline_trains_on_a_tiny_budget(digits):
    cvae = CVAE(shape=(8, 8), quadrants=1, **SMALL)
    x = digits.test.evaluation_x(0)
    with torch.no_grad():
        before = cvae.baseline_nll(x).mean().item()
    history = cvae.fit_baseline(digits.train, epochs=3, lr=3e-3)
    with torch.no_grad():
        after = cvae.baseline_nll(x).mean().item()
    assert len(history) == 3 and history[-1] < history[0]
    assert after < before - 5.0  # 48 masked pixels start near 48 log 2 = 33 nats


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quadrants=0), "quadrants=0"),
        (dict(quadrants=4), "quadrants=4"),
        (dict(quadrants=True), "quadrants=True"),
        (dict(shape=(7, 7)), "7x7 images do not split"),
        (dict(shape=(8, 9)), "8x9 images do not split"),
        (dict(shape=(64,)), "2-D images"),
        (dict(task="inpaint"), "task 'inpaint'"),
        (dict(task="label", num_classes=1), "num_classes=1"),
    ],
)
def test_bad_options_are_one_line_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        CVAE(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_labels_and_data(digits):
    cvae = CVAE(shape=(8, 8), task="label", num_classes=10, **SMALL)
    x = digits.test.evaluation_x(0)[:3]
    for labels in (torch.tensor([0, 10, 2]), torch.tensor([-1, 0, 0])):
        with pytest.raises(CVAEError, match="out of range 0..9"):
            cvae.model(x, y=labels)
        with pytest.raises(CVAEError, match="out of range"):
            cvae.complete(None, y=labels)
    with pytest.raises(CVAEError, match="needs class labels"):
        cvae.guide(x)
    with pytest.raises(CVAEError, match="binarize"):
        cvae.check(digits.test.x[:3] * 0.5 + 0.25)
    with pytest.raises(CVAEError, match="do not fit"):
        cvae.check(x[:, :60])
    with pytest.raises(CVAEError, match="binarize"):
        CVAE.from_data(load("digits"), baseline_epochs=0)


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(REGISTRY, "cvae", CVAE)  # the lead registers it; harmless once there
    return main


TINY = ["--epochs", "2", "--z-dim", "4", "--hidden", "32", "--iwae-k", "20", "--batch-size", "256"]


def test_cli_fit_and_sample(cli, tmp_path, capsys):
    out = tmp_path / "q3"
    argv = ["fit", "cvae", "--task", "quadrant", "--quadrants", "3", *TINY, "--out", str(out)]
    assert cli(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    # 16 masked pixels: a coin flip per pixel scores -16 log 2 = -11.1 nats; after 2 epochs the
    # CVAE beats it (by about 0.6 nats) beyond 4 Monte-Carlo s.e. of each reported mean
    se = mc_se(out, iwae_k=20)
    for key in ("test_elbo", "test_log_px"):
        assert m[key] > -16 * math.log(2) + 4 * se[key], (key, m[key], se[key])
    # so does the baseline network (exact: no Monte-Carlo error)
    assert json.loads((out / "baseline.json").read_text())["test_nll_baseline"] < 16 * math.log(2)
    assert (out / "completions.png").read_bytes()[:4] == b"\x89PNG"
    assert cli(["sample", str(out), "-n", "16"]) == 0
    assert (out / "samples-16.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_is_one_line_exit_2(cli, tmp_path, capsys):
    flat = tmp_path / "flat.npy"
    np.save(flat, (np.random.default_rng(0).random((50, 49)) < 0.5).astype(np.float32))
    for argv, match in [
        (["--dataset", str(flat), "--binarize", "static"], "needs images"),
        (["--dataset", "gaussian2d"], "binarize"),
        (["--quadrants", "4"], "invalid choice"),
    ]:
        out = tmp_path / "bad"
        assert cli(["fit", "cvae", *argv, *TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err, err
        assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(digits):
    cvae = CVAE.from_data(digits.to("cuda"), quadrants=1, baseline_epochs=1, **SMALL).cuda()
    x = digits.test.to("cuda").evaluation_x(0)[:8]
    assert log_marginal(cvae.model, cvae.guide, x, num_samples=10).device.type == "cuda"
    assert cvae.complete(x, num_samples=2).device.type == "cuda"
