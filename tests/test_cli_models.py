"""The GMM and the flow densities as CLI models: fit -> evaluate -> sample on their run dirs."""

import json

import pytest
import torch

from pyro_vi.cli.main import main
from pyro_vi.cli.runs import load_run


def _fit(name, out, *flags):
    return main(["fit", name, "--epochs", "2", "--batch-size", "256", "--iwae-k", "10",
                 "--out", str(out), *flags])  # fmt: skip


def test_gmm_run_fits_evaluates_and_samples(tmp_path, capsys):
    out = tmp_path / "gmm"
    assert _fit("gmm", out, "--components", "3", "--lr", "0.05") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # a mixture's weights and means are global latents: no per-point log p(x), said so
    assert metrics["test_log_px"] is None and "global latents" in metrics["test_log_px_note"]
    report = json.loads((out / "mixture.json").read_text())
    assert report["ari"] > 0.9  # three well-separated components, k-means++ start
    assert (out / "clusters.png").exists()
    model, data, _ = load_run(out)  # the config rebuilds the pair, the checkpoint its globals
    assert model.config["components"] == 3
    joint = model.responsibilities(data.test.x)
    assert abs(float(joint.logsumexp(-1).mean()) - report["test_loglik"]) < 1e-4
    assert main(["evaluate", str(out), "--iwae-k", "10"]) == 0
    assert main(["sample", str(out), "-n", "50"]) == 0
    assert (out / "samples-50.png").exists()
    x, z = model.sample(2000)
    assert x.shape == (2000, 2) and set(z.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("name", ["nice", "realnvp"])
def test_flow_run_fits_evaluates_and_samples(name, tmp_path, capsys):
    out = tmp_path / name
    assert _fit(name, out, "--num-layers", "2", "--hidden", "16") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # no latents: the ELBO is the log-likelihood, the same for every importance sample
    assert metrics["test_elbo"] == pytest.approx(metrics["test_log_px"], abs=1e-4)
    density = json.loads((out / "density.json").read_text())
    assert density["test_log_density"] == pytest.approx(metrics["test_log_px"], abs=1e-4)
    model, data, config = load_run(out)
    assert config["model_config"]["num_layers"] == 2 and config["model_config"]["hidden"] == [16]
    with torch.no_grad():
        lp = model.log_prob(data.test.x).mean()
    assert float(lp) == pytest.approx(density["test_log_density"], abs=1e-4)
    assert main(["evaluate", str(out), "--iwae-k", "10"]) == 0
    assert main(["sample", str(out), "-n", "40"]) == 0
    assert model.sample(5).shape == (5, 2) and torch.isfinite(model.sample(5)).all()


def test_flow_on_binarized_images_is_a_one_line_error(tmp_path, capsys):
    assert _fit("nice", tmp_path / "n", "--dataset", "digits") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--binarize none" in err
    assert not (tmp_path / "n").exists()


def test_gmm_bad_component_count_is_a_one_line_error(tmp_path, capsys):
    assert _fit("gmm", tmp_path / "g", "--components", "0") == 2
    assert "components=0" in capsys.readouterr().err
