"""The pyro-vi command: the demo path on a tiny budget, evaluate, sample, resume, and every bad
input (one line, exit 2, no traceback, no files left in the output directory)."""

import json
import math
import os
import pickle
import subprocess
import sys

import pyro
import pytest
import torch
from helpers import mc_se

from pyro_vi.cli import main
from pyro_vi.protocol import REGISTRY, RUN_DEFAULTS, Model, ModelError, PositiveFloat, register

TINY = ["--epochs", "2", "--z-dim", "4", "--hidden", "32", "--iwae-k", "20", "--batch-size", "256"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main(["fit", "vae", *TINY, "--out", str(out)]) == 0
    return out


def _bad(capsys, argv, match, out=None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    if out is not None:
        assert not out.exists() or not any(out.iterdir())
    return err


def test_demo_path_writes_the_run(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.json", "elbo.png", "samples.png",
            "reconstructions.png", "interpolation.png"} <= names  # fmt: skip
    m = json.loads((run_dir / "metrics.json").read_text())
    # a coin flip per pixel scores -64 log 2 = -44.4 nats on 64 binary pixels; after 2 epochs
    # the model beats it (by about 2 nats) beyond 4 Monte-Carlo s.e. of each reported mean
    se = mc_se(run_dir, iwae_k=20)
    for key in ("train_elbo", "valid_elbo", "test_elbo", "test_log_px"):
        assert m[key] > -64 * math.log(2) + 4 * se[key], (key, m[key], se[key])
    assert m["test_log_px"] >= m["test_elbo"] - 0.5
    c = json.loads((run_dir / "config.json").read_text())
    assert c["seed"] == 0 and c["versions"]["torch"] and c["model_config"]["x_dim"] == 64
    # 2 epochs of 6 steps: too short for capture to pay for itself
    assert (
        m["step"].startswith("eager (capture would not pay")
        and c["fit_options"]["capture"] == "auto"
    )


def test_evaluate_and_sample(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--iwae-k", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iwae_k"] == 50 and out["test_log_px"] > out["test_elbo"] - 0.5
    assert json.loads((run_dir / "evaluation.json").read_text()) == out
    png = run_dir / "grid.png"
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_gaps(run_dir, capsys):
    argv = ["evaluate", str(run_dir), "--iwae-k", "20", "--gaps", "--test-size", "8"]
    assert main(argv) == 0
    g = json.loads(capsys.readouterr().out)["gaps"]
    per_point = json.loads((run_dir / "gaps.json").read_text())
    # gaps.json holds the 8 per-datapoint values whose means the command printed
    assert set(per_point) == set(g) and all(len(v) == 8 for v in per_point.values())
    for key, values in per_point.items():
        assert g[key] == pytest.approx(sum(values) / 8, rel=1e-5, abs=1e-5), key


def test_resume_continues_in_place(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", "vae", *TINY, "--out", str(out), "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["fit", "vae", "--resume", str(out), "--epochs", "3", "--iwae-k", "10"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 3 and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    argv = ["fit", "vae", "--resume", str(out), "--epochs", "4", "--iwae-k", "10", "--no-capture"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == "eager"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["nope"], "unknown model 'nope'"),
        (["vae", "--dataset", "nope"], "unknown data set 'nope'"),
        (["vae", "--epochs", "0"], "must be > 0"),
        (["vae", "--batch-size", "0"], "must be > 0"),
        (["vae", "--lr", "0"], "must be > 0"),
        (["vae", "--lr", "-0.1"], "must be > 0"),
        (["vae", "--binarize", "none", "--likelihood", "bernoulli"], "non-binary data"),
    ],
)
def test_bad_fit_input(tmp_path, capsys, extra, match):
    out = tmp_path / "o"
    _bad(capsys, ["fit", *extra, "--out", str(out)], match, out)


def test_nan_data_and_width(tmp_path, capsys):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(100, 3))
    x[5, 1] = np.nan
    f = tmp_path / "nan.npy"
    np.save(f, x)
    out = tmp_path / "o"
    _bad(capsys, ["fit", "vae", "--dataset", str(f), "--out", str(out)], "NaN or Inf", out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_cuda(tmp_path, capsys):
    out = tmp_path / "o"
    _bad(
        capsys, ["fit", "vae", "--device", "cuda", "--out", str(out)], "CUDA is not available", out
    )


def test_mnist_without_data_or_network(tmp_path, capsys, monkeypatch):
    import torchvision

    monkeypatch.setenv("PYRO_VI_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda *a, **k: 1 / 0)
    out = tmp_path / "o"
    _bad(
        capsys,
        ["fit", "vae", "--dataset", "mnist", "--out", str(out)],
        "could not be downloaded",
        out,
    )


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _bad(capsys, ["fit", "vae", "--out", str(out)], "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("command", [["evaluate"], ["sample"], ["fit", "vae", "--resume"]])
def test_missing_run_dir(tmp_path, capsys, command):
    _bad(capsys, [*command, str(tmp_path / "nowhere")], "does not exist")


def _copy_run(run_dir, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def test_corrupt_checkpoint(run_dir, tmp_path, capsys):
    d = _copy_run(run_dir, tmp_path)
    data = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for cmd in (["evaluate", str(d)], ["sample", str(d)], ["fit", "vae", "--resume", str(d)]):
        _bad(capsys, cmd, "corrupt")


def test_corrupt_config(run_dir, tmp_path, capsys):
    d = _copy_run(run_dir, tmp_path)
    (d / "config.json").write_text("{not json")
    _bad(capsys, ["evaluate", str(d)], "corrupt")


def test_mismatched_run(run_dir, tmp_path, capsys):
    d = _copy_run(run_dir, tmp_path)
    c = json.loads((d / "config.json").read_text())
    c["model_config"]["z_dim"] = 7
    (d / "config.json").write_text(json.dumps(c))
    _bad(capsys, ["evaluate", str(d)], "has shape (8, 32), the model (14, 32)")
    c["dataset"], c["binarize"] = "gaussian2d", None
    c["model_options"]["likelihood"] = "normal"
    (d / "config.json").write_text(json.dumps(c))
    _bad(capsys, ["fit", "vae", "--resume", str(d), "--epochs", "3"], "does not match")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_checkpoint_with_pickled_code_is_refused(run_dir, tmp_path, capsys):
    d = _copy_run(run_dir, tmp_path)
    _Payload.marker = str(tmp_path / "pwned")
    with open(d / "checkpoint.pt", "wb") as f:
        pickle.dump({"format": "pyro-vi-checkpoint/1", "x": _Payload()}, f)
    for cmd in (["evaluate", str(d)], ["fit", "vae", "--resume", str(d)]):
        _bad(capsys, cmd, "pickled code")
    assert not os.path.exists(_Payload.marker)


def test_help_for_each_command(capsys):
    for cmd in (["--help"], ["fit", "--help"], ["evaluate", "--help"], ["sample", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_fit_help_lists_every_registered_model_with_one_line(capsys):
    from pyro_vi.protocol import registered

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    listing = capsys.readouterr().out.split("models (pyro-vi fit MODEL) and their flags:")[1]
    for name in registered():
        assert f"\n  {name:10s} " in listing
    assert "vae        Bernoulli or Gaussian VAE with an MLP encoder and decoder\n" in listing


def test_resume_on_another_device_type_is_refused(run_dir, tmp_path, capsys):
    d = _copy_run(run_dir, tmp_path)
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    state["rng"]["data"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    torch.save(state, d / "checkpoint.pt")
    _bad(capsys, ["fit", "vae", "--resume", str(d), "--epochs", "3"], "another kind of device")


def _fresh(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (nothing imported yet), with Python's default warning filters
    (pytest's ``filterwarnings`` do not reach it)."""
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_import_pyro_vi_reaches_the_public_api_and_loads_lazily():
    run = _fresh(
        "import sys, pyro_vi\n"
        "heavy = [m for m in ('torch', 'pyro', 'arviz', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(type(pyro_vi.flows.nice(4)).__name__)\n"
        "assert callable(pyro_vi.data.load) and pyro_vi.models.VAE.__name__ == 'VAE'\n"
        "assert callable(pyro_vi.diagnostics.importance.loo) and callable(pyro_vi.sbc)\n"
        "import pyro_vi.diagnostics.calibration\n"
        "assert pyro_vi.sbc is pyro_vi.diagnostics.calibration.sbc\n"
        "assert 'arviz' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "assert pyro_vi.diagnostics.loo is pyro_vi.loo\n"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Flow"


def test_a_figure_module_does_not_import_the_stages_beside_it():
    """The subpackage faces are lazy too: the figures need matplotlib, not the PSIS engine."""
    run = _fresh(
        "import sys, pyro_vi.diagnostics.plots\n"
        "heavy = [m for m in ('pyro', 'arviz', 'pyro_vi.evaluate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    assert run.returncode == 0, run.stderr


def test_help_and_a_short_fit_print_no_warnings(tmp_path):
    """No warning a user did not cause: ArviZ's daily "major refactor" FutureWarning came from an
    import where no diagnostics run; a fresh ArviZ cache makes it due again."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    helps = _fresh("from pyro_vi.cli import main; main(['--help'])", env)
    assert helps.returncode == 0 and helps.stderr == "", helps.stderr
    assert "usage: pyro-vi" in helps.stdout
    out = tmp_path / "run"
    argv = ["fit", "vae", *TINY, "--epochs", "1", "--out", str(out)]
    fits = _fresh(f"import sys; from pyro_vi.cli import main; sys.exit(main({argv!r}))", env)
    assert fits.returncode == 0, fits.stderr
    assert "Warning" not in fits.stderr, fits.stderr
    assert (out / "latent.png").is_file()


# --- the model protocol: one-line registration, flags from from_data ------------------------------


class _Shift(torch.nn.Module, Model):
    """x ~ N(loc, scale^2 I) with a learned loc: no latent variable, an empty guide."""

    def __init__(self, dim: int, scale: float = 1.0, centred: bool = False):
        super().__init__()
        self.config = dict(dim=dim, scale=scale, centred=centred)
        self.scale = scale
        self.loc = torch.nn.Parameter(torch.zeros(dim))

    @classmethod
    def from_data(cls, data, scale: PositiveFloat = 1.0, centred: bool = False) -> "_Shift":
        """A model for ``data``.

        :param scale: standard deviation of the noise
        :param centred: start the location at zero
        """
        return cls(data.dim, scale, centred)

    def model(self, x, idx=None, size=None):
        import pyro.distributions as dist

        from pyro_vi.data import data_plate

        pyro.module("shift", self)
        with data_plate(x, idx, size):
            pyro.sample("x", dist.Normal(self.loc, self.scale).to_event(1), obs=x)

    def guide(self, x, idx=None, size=None):
        pass


@pytest.fixture
def shift_registered():
    yield register("shift", dataset="gaussian2d")(_Shift)  # the one line a new model needs
    REGISTRY.pop("shift"), RUN_DEFAULTS.pop("shift")


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_a_model_registered_in_one_line_gets_its_flags_and_fits(shift_registered, tmp_path,
                                                                capsys):  # fmt: skip
    text = _help(capsys, ["fit", "--help"])
    assert "shift" in text.split("positional arguments")[1].split("\n\n")[0]  # the model list
    assert "standard deviation of the noise [shift 1.0]" in " ".join(text.split())
    assert "--centred, --no-centred" in text and "--scale SCALE" in text
    out = tmp_path / "shift"
    argv = ["fit", "shift", "--scale", "0.5", "--epochs", "1", "--iwae-k", "5", "--out", str(out)]
    assert main(argv) == 0
    c = json.loads((out / "config.json").read_text())
    assert c["dataset"] == "gaussian2d" and c["model_config"] == {"dim": 2, "scale": 0.5,
                                                                  "centred": False}  # fmt: skip
    assert (out / "elbo.png").is_file() and json.loads(capsys.readouterr().out)["epochs"] == 1
    assert main(["evaluate", str(out), "--iwae-k", "5"]) == 0  # the run loads back
    _bad(capsys, ["sample", str(out)], "does not say how to show samples")
    _bad(capsys, ["fit", "shift", "--scale", "0", "--out", str(tmp_path / "b")], "must be > 0")
    _bad(capsys, ["fit", "vae", "--scale", "1", "--out", str(tmp_path / "b")],
         "--scale does not apply to model 'vae'")  # fmt: skip


def test_registration_errors_name_the_fix(shift_registered):
    class Other(_Shift):
        @classmethod
        def from_data(cls, data, hidden: str = "wide") -> "Other":
            return cls(data.dim)

    with pytest.raises(ModelError, match="taken by _Shift"):
        register("shift")(Other)
    with pytest.raises(ModelError, match="option 'hidden' means"):  # one flag, one meaning
        register("other")(Other)
    with pytest.raises(ModelError, match="must be a class deriving from"):
        register("plain")(type("Plain", (), {}))
    assert "other" not in REGISTRY and "plain" not in REGISTRY


def test_each_models_own_defaults_win(tmp_path, capsys, one_thread):
    text = " ".join(_help(capsys, ["fit", "--help"]).split())
    assert (
        "[cvae 400, hvae 300, mdn 32 32, nice none, realnvp none, text-lm 256, text-vae 256, "
        "vae 400]" in text
    )  # --hidden
    assert "[cvae 20, hvae 40, text-vae 32, vae 20]" in text  # --z-dim
    quick = ["--epochs", "1", "--iwae-k", "0", "--no-figures", "--batch-size", "512"]
    assert main(["fit", "mdn", *quick, "--out", str(tmp_path / "mdn")]) == 0
    c = json.loads((tmp_path / "mdn" / "config.json").read_text())
    assert c["model_config"]["hidden"] == [32, 32] and c["model_options"] == {}
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(f"the {a} sees a {b}." for a in "abcdef" for b in "ghijk") + "\n")
    argv = ["fit", "text-lm", "--corpus", str(corpus), "--vocab-size", "20", "--max-len", "8"]
    assert main([*argv, *quick, "--out", str(tmp_path / "lm")]) == 0
    c = json.loads((tmp_path / "lm" / "config.json").read_text())["model_config"]
    assert (c["hidden"], c["embed_dim"]) == (256, 128)
    _bad(capsys, [*argv, "--hidden", "8", "8", "--out", str(tmp_path / "b")], "one RNN layer")


def test_help_without_fit_imports_no_model():
    run = _fresh(
        "import sys\nfrom pyro_vi.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'pyro_vi.models' not in sys.modules\n"
    )
    assert run.returncode == 0, run.stderr
