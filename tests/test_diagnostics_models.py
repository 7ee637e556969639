"""Every model family in pyro_vi.models goes to InferenceData and gets k-hat in one call each."""

import warnings

import pyro
import torch

import pyro_vi
from pyro_vi.data import load
from pyro_vi.flows import realnvp
from pyro_vi.models import GMM, VAE
from pyro_vi.models.flow_density import FlowDensity, toy_2d


def _check(model, guide, x, pointwise: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pyro_vi.to_inference_data(model, guide, x, num_samples=40)
        res = pyro_vi.psis_khat(model, guide, x, num_samples=40)
    assert idata.log_likelihood.sizes["chain"] * idata.log_likelihood.sizes["draw"] == 40
    assert {"posterior_predictive", "log_likelihood", "sample_stats"} <= set(idata.groups())
    assert res.khat.numel() == (len(x) if pointwise else 1)
    assert not bool(torch.isnan(res.khat).any()) and not bool((res.khat == float("inf")).any())


def test_vae():
    vae = VAE(x_dim=64, z_dim=3, hidden=(16,))
    x = load("digits", binarize="static").test.x[:20]
    _check(vae.model, vae.guide, x, pointwise=True)


def test_gmm_meanfield():
    ds = load("gmm", n=300, seed=0)
    g = GMM.from_data(ds, guide_kind="meanfield")
    pyro_vi.fit(g.model, g.guide, ds.train.x, loss=g.loss, epochs=1, device="cpu")
    _check(g.model, g.guide, ds.train.x[:50], pointwise=False)


def test_flow_density():
    pyro.clear_param_store()
    fd = FlowDensity(realnvp(2, num_layers=2))
    _check(fd.model, fd.guide, toy_2d("moons", 50, seed=0), pointwise=False)


def test_cvae():
    from pyro_vi.models import CVAE

    data = load("digits", binarize="static")
    cvae = CVAE.from_data(data, task="quadrant", quadrants=2, z_dim=3, hidden=(16,),
                          baseline_epochs=0)  # fmt: skip
    _check(cvae.model, cvae.guide, data.test.x[:20], pointwise=True)
