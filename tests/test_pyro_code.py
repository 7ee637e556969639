"""Ordinary Pyro code, unchanged: the signatures of Pyro's tutorials, autoguides under
subsampling, PyroModule models, labels and other per-datapoint keywords."""

import functools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroSample

import pyro_vi
from pyro_vi.data import Split, data_plate
from pyro_vi.infer.calling import Calling, CallingError, signature_of

N, D, K, SIGMA = 200, 5, 2, 0.3


@pytest.fixture(scope="module")
def ppca_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    w, z = torch.randn(K, D, generator=g), torch.randn(N, K, generator=g)
    return z @ w + SIGMA * torch.randn(N, D, generator=g)


def ppca(x):
    """Probabilistic PCA as Pyro's tutorials write it: the model subsamples itself."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([K, D]).to_event(2))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample_size=50) as i:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        pyro.sample("x", dist.Normal(z @ w, sigma).to_event(1), obs=x[i])


def ppca_indexed(x, idx=None, size=None):
    """The same model, subsampled by the batch's indices that fit passes."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([K, D]).to_event(2))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", size or len(x), subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        pyro.sample("x", dist.Normal(z @ w, sigma).to_event(1), obs=x)


def _sigma(guide) -> float:
    return float(guide.median()["sigma"])


def test_a_plain_model_that_subsamples_itself_recovers_sigma(ppca_data):
    """model(x) with pyro.plate(..., subsample_size=50) and AutoNormal without create_plates:
    fit passes the whole data each step and the plate draws the batch (4 steps an epoch)."""
    guide = AutoNormal(ppca)
    result = pyro_vi.fit(ppca, guide, ppca_data, epochs=300, lr=0.02, progress=False)
    assert result.history[0]["steps"] == 4
    assert abs(_sigma(guide) - SIGMA) < 0.2 * SIGMA


def test_an_autoguide_is_wired_to_the_batch_indices(ppca_data):
    """Without create_plates an AutoNormal draws its own subsample, which would pair the batch's
    rows with other rows' latents (a silent bad fit, sigma 1.5 for 0.3): fit wires the plate,
    and the pair is then evaluated on the whole data."""
    guide = AutoNormal(ppca_indexed)
    pyro_vi.fit(ppca_indexed, guide, ppca_data, epochs=300, batch_size=50, lr=0.02, progress=False)
    assert guide.create_plates is data_plate
    assert abs(_sigma(guide) - SIGMA) < 0.2 * SIGMA
    assert pyro_vi.elbo(ppca_indexed, guide, ppca_data).shape == (N,)
    assert bool(
        pyro_vi.psis_khat(ppca_indexed, guide, ppca_data, num_samples=200).khat.isfinite().all()
    )


@pytest.mark.parametrize("model", [ppca, ppca_indexed], ids=["self-subsampling", "indexed"])
def test_a_joint_autoguide_under_subsampling_is_refused(model, ppca_data):
    """AutoDiagonalNormal holds one latent vector for the whole data: it cannot follow a
    subsample, so fit stops in one line; full-batch steps (no subsampling) are fine."""
    with pytest.raises(CallingError, match="AutoDiagonalNormal cannot follow the subsampled"):
        pyro_vi.fit(model, AutoDiagonalNormal(model), ppca_data, epochs=1, batch_size=50)


def test_autoguide_lists_and_point_masses_follow_the_batch(ppca_data):
    guide = AutoGuideList(ppca_indexed)
    guide.append(AutoDelta(pyro.poutine.block(ppca_indexed, expose=["w", "sigma"])))
    guide.append(AutoNormal(pyro.poutine.block(ppca_indexed, expose=["z"])))
    pyro_vi.fit(ppca_indexed, guide, ppca_data, epochs=2, batch_size=50, progress=False)
    assert guide.create_plates is data_plate


def test_a_model_that_cannot_take_a_batch_gets_one_line(ppca_data):
    """model(x) without subsampling: a batch would be fitted as the whole data set."""

    def regression(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    guide = AutoDiagonalNormal(regression)
    with pytest.raises(CallingError, match="pass batch_size >= 200$"):
        pyro_vi.fit(regression, guide, ppca_data, epochs=1, batch_size=50)
    result = pyro_vi.fit(regression, guide, ppca_data, epochs=3, batch_size=N, progress=False)
    assert [r["steps"] for r in result.history] == [1, 2, 3]


class BNN(PyroModule):
    """A Bayesian linear-tanh network as Pyro's tutorials write it: forward(x, y=None)."""

    def __init__(self, hidden: int = 4):
        super().__init__()
        self.fc1 = PyroModule[torch.nn.Linear](1, hidden)
        self.fc1.weight = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, 1]).to_event(2))
        self.fc1.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.fc2 = PyroModule[torch.nn.Linear](hidden, 1)
        self.fc2.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, hidden]).to_event(2))
        self.fc2.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        mean = self.fc2(torch.tanh(self.fc1(x))).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, 0.3), obs=y)


@pytest.fixture(scope="module")
def bnn_data():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(100, 1, generator=g) * 4 - 2
    return x, torch.sin(x.squeeze(-1)) + 0.3 * torch.randn(100, generator=g)


def test_a_pyro_module_with_labels_trains_as_pyro_svi_does(bnn_data):
    """fit(model, guide, x, y=y) on a PyroModule: y reaches forward (the observed site stays
    observed), and the losses equal Pyro's own SVI loop step for step at equal seeds."""
    x, y = bnn_data
    steps, lr = 30, 0.02

    pyro.set_rng_seed(0)
    model = BNN()
    guide = AutoNormal(model)
    result = pyro_vi.fit(
        model, guide, x, y=y, epochs=steps, batch_size=100, lr=lr, capture=False, progress=False
    )
    ours = [-r["train_elbo"] * len(x) for r in result.history]

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = BNN()
    guide = AutoNormal(model)
    with torch.no_grad():
        guide(x, y)  # the autoguide's set-up, as fit's probe trace makes it
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    theirs = [svi.step(x, y) for _ in range(steps)]
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert result.step == "eager"
    assert set(guide.median()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}

    with pytest.warns(UserWarning, match="vectorized draws failed"):  # Linear takes 2-D weights
        per_point = pyro_vi.elbo(model, guide, x, y=y, num_particles=10)
    assert per_point.shape == (100,) and bool(per_point.isfinite().all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # drawing one at a time from the start: no warning
        one_at_a_time = pyro_vi.elbo(model, guide, x, y=y, num_particles=3, vectorize=False)
    assert one_at_a_time.shape == (100,)


def test_other_per_datapoint_keywords_are_batched():
    seen = []

    def model(x, weight=None, idx=None, size=None):
        seen.append((len(x), weight.shape))
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", size, subsample=idx):
            with pyro.poutine.scale(scale=weight):
                pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x, weight=None, idx=None, size=None):
        pass

    x = torch.randn(40) + 3.0
    pyro_vi.fit(model, guide, x, weight=torch.ones(40), epochs=1, batch_size=16, progress=False)
    assert seen[-1] == (8, (8,))
    with pytest.raises(CallingError, match="does not take the keyword 'epoch'"):
        pyro_vi.fit(model, guide, x, epoch=3)
    with pytest.raises(ValueError, match="weight has \\(39,\\) rows for 40 rows of x"):
        pyro_vi.fit(model, guide, x, weight=torch.ones(39))


def test_the_signature_is_read_through_modules_partials_and_methods():
    class Pair:
        def model(self, x, y=None, idx=None, size=None):
            pass

    assert Calling.of(Pair().model, labels=True) == Calling(True, ("y",))
    assert Calling.of(functools.partial(ppca_indexed, idx=None)) == Calling(False)
    assert list(signature_of(BNN()).parameters) == ["x", "y"]
    assert Calling.of(BNN(), labels=True) == Calling(False, ("y",))
    assert Calling.of(lambda x, **kw: None, ["mask"]) == Calling(False, ("mask",))
    assert Split(torch.zeros(3, 2), fields={"m": torch.ones(3)}).batch(torch.tensor([2])).fields[
        "m"
    ].shape == (1,)


def test_a_model_that_subsamples_itself_is_evaluated_on_every_row(ppca_data):
    """elbo conditions the model's own plate on consecutive chunks of its subsample size: every
    row gets a value, and their sum agrees with Pyro's Trace_ELBO of the full data (which draws
    its 50 rows and scales by 200/50) within the Monte-Carlo error of both."""
    guide = AutoNormal(ppca)
    pyro_vi.fit(ppca, guide, ppca_data, epochs=100, lr=0.02, progress=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # x[i] under the particle plate: drawn one at a time
        ours = torch.tensor([float(pyro_vi.elbo(ppca, guide, ppca_data, num_particles=10).sum())
                             for _ in range(6)])  # fmt: skip
        theirs = torch.tensor([-Trace_ELBO().loss(ppca, guide, ppca_data) for _ in range(200)])
    assert pyro_vi.elbo(ppca, guide, ppca_data, vectorize=False).shape == (N,)
    se = (ours.var() / len(ours) + theirs.var() / len(theirs)).sqrt()
    assert abs(float(ours.mean() - theirs.mean())) < 4 * float(se)
    with pytest.raises(ValueError, match="draws its own 50 of 200 rows"):
        pyro_vi.psis_khat(ppca, guide, ppca_data, num_samples=50, vectorize=False)


def test_a_point_mass_guide_has_no_khat(ppca_data):
    """AutoDelta's weights are constant because q is a point mass, not because q is exact: k-hat
    is undefined and says so instead of reporting an exact guide's -inf."""
    guide = AutoDelta(ppca_indexed)
    pyro_vi.fit(ppca_indexed, guide, ppca_data, epochs=5, batch_size=50, progress=False)
    with pytest.raises(ValueError, match="'z' is a point mass"):
        pyro_vi.psis_khat(ppca_indexed, guide, ppca_data, num_samples=50)


def test_a_pyro_module_with_pyro_sample_priors_runs_on_captured_steps(bnn_data):
    """PyroSample priors built while validation was on keep checking their samples, a
    data-dependent branch a graph capture cannot hold: the capture skips it (the eager first
    step validated), and the captured steps give the eager losses."""
    x, y = bnn_data
    runs = {}
    for capture in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = BNN()
        runs[capture] = pyro_vi.fit(model, AutoNormal(model), x, y=y, epochs=30, batch_size=100,
                                    lr=0.02, capture=capture, progress=False)  # fmt: skip
    assert runs[True].step.startswith("captured")
    eager, captured = ([r["train_elbo"] for r in runs[c].history] for c in (False, True))
    assert captured == pytest.approx(eager, rel=1e-5)
