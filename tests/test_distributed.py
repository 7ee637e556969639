"""Data-parallel SVI (pyro_vi.infer.distributed): two gloo ranks on the CPU with the environment
torchrun sets, rank 0 in the test's process and rank 1 spawned (``python tests/test_distributed.py
OUT`` runs this file as rank 1's worker). The ranks must hold identical parameters, equal to one
process with the same global batch and seed; resume is bit-identical; only rank 0 writes; without a
launcher the error is one line naming the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from pyro_vi import fit
from pyro_vi.cli.runs import build_model, model_inputs
from pyro_vi.data import Batch, Split, data_plate, load
from pyro_vi.evaluate.bounds import log_weights, max_plate_nesting
from pyro_vi.infer.distributed import REQUIRED_ENV, DataParallel, DistributedError
from pyro_vi.models import VAE

ROWS, BATCH, EPOCHS = 300, 75, 2  # 4 steps per epoch; slices of 38 and 37 rows
DET = dict(epochs=EPOCHS, batch_size=BATCH, optimizer="sgd", lr=2e-5, device="cpu", seed=3,
           validate=False, progress=False)  # fmt: skip
VAE_OPTS = dict(batch_size=128, lr=3e-3, device="cpu", seed=5, early_stopping=5, progress=False)
CLI = ["fit", "vae", "--epochs", "1", "--z-dim", "2", "--hidden", "16", "--iwae-k", "0",
       "--no-figures", "--device", "cpu"]  # fmt: skip


def _train_rows() -> Split:
    train = load("digits", binarize="dynamic").train
    return Split(train.x[:ROWS], train.y[:ROWS], train.binarize)


def deterministic_pair(seed: int):
    """The VAE's networks, a global latent ``s`` and a per-datapoint offset table read with sparse
    gradients, under a point-mass guide: no Monte-Carlo noise, so two ranks must reproduce one
    process up to the order of float sums (the data's dynamic binarization is shared)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE(64, z_dim=3, hidden=(16,))

    def model(x, idx=None, size=None):
        pyro.module("vae", vae)
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        with data_plate(x, idx, size):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z) + s).to_event(1), obs=x)

    def guide(x, idx=None, size=None):
        pyro.module("vae", vae)
        pyro.sample("s", dist.Delta(pyro.param("s_loc", torch.tensor(0.3 * seed))))
        offset = pyro.param("offset", lambda: torch.full((ROWS, 3), 0.1 * seed))
        i = idx if idx is not None else torch.arange(len(x))
        with data_plate(x, idx, size):
            z = vae.encode(x) + F.embedding(i, offset, sparse=True)
            pyro.sample("z", dist.Delta(z).to_event(1))

    return model, guide


def _params() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {k: store.get_param(k).unconstrained().detach().clone() for k in store.keys()}


def _worker(out: Path) -> None:
    """One rank: the deterministic pair, the VAE with validation, checkpoints and resume, then
    the command line (auto-detecting the launcher); every file write is recorded."""
    with pytest.MonkeyPatch.context() as mp:
        _work(out, mp)


def _work(out: Path, mp: pytest.MonkeyPatch) -> None:
    import pyro_vi.cli.runs as runs
    import pyro_vi.infer.training as training
    from pyro_vi.cli import main

    rank = int(os.environ["RANK"])
    writes: list[str] = []

    def recorded(fn):
        def wrapper(obj, path, *args, **kw):
            writes.append(str(path))
            return fn(obj, path, *args, **kw)

        return wrapper

    mp.setattr(training, "save_atomic", recorded(training.save_atomic))
    mp.setattr(runs, "write_json", recorded(runs.write_json))
    mp.setattr(runs, "draw_figures", lambda *a: writes.append("figures"))  # --no-figures

    # each rank starts from its own init: the broadcast must give rank 1 rank 0's values
    model, guide = deterministic_pair(seed=rank)
    fit(model, guide, _train_rows(), distributed=True, **DET)
    torch.save(_params(), out / f"det-{rank}.pt")

    digits = load("digits", binarize="dynamic")
    digits = dataclasses.replace(digits, train=_train_rows())  # 3 steps per epoch
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae = VAE.from_data(digits, z_dim=3, hidden=(16,))
    r = fit(vae.model, vae.guide, digits, epochs=2, checkpoint_dir=out / "straight",
            distributed=True, **VAE_OPTS)  # fmt: skip
    straight, history = _params(), r.history
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae = VAE.from_data(digits, z_dim=3, hidden=(16,))
    fit(vae.model, vae.guide, digits, epochs=1, checkpoint_dir=out / "resumed", distributed=True,
        **VAE_OPTS)  # fmt: skip
    pyro.clear_param_store()
    pyro.set_rng_seed(99 + rank)  # another init: everything must come from the checkpoint
    vae = VAE.from_data(digits, z_dim=3, hidden=(16,))
    fit(vae.model, vae.guide, digits, epochs=2, checkpoint_dir=out / "resumed", resume=True,
        distributed=True, **VAE_OPTS)  # fmt: skip
    torch.save(dict(straight=straight, resumed=_params()), out / f"vae-{rank}.pt")
    (out / f"history-{rank}.json").write_text(json.dumps(history))

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*CLI, "--out", str(out / "run")])
    report = dict(writes=writes, stdout=stdout.getvalue(), code=code)
    (out / f"writes-{rank}.json").write_text(json.dumps(report))
    torch_dist.barrier()  # neither rank tears its group down while the other still uses it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int) -> dict[str, str]:
    return dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Rank 1 in a new process, rank 0 here (one import fewer on a busy machine); the group and
    the environment are gone again before the tests run."""
    out = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    env = dict(os.environ, **_env(1, port), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    other = subprocess.Popen([sys.executable, __file__, str(out)], env=env,
                             stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    threads = torch.get_num_threads()
    try:
        # while rank 1 starts: scikit-learn's import, and torch._dynamo's, which a torch
        # optimizer imports when the first one is made (the slowest part of a first fit)
        load("digits")
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        with pytest.MonkeyPatch.context() as mp:
            for k, v in _env(0, port).items():
                mp.setenv(k, v)
            torch.set_num_threads(1)
            # a group made by the caller is used as it is; a short timeout if rank 1 dies
            torch_dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
            _worker(out)
    except BaseException:
        other.kill()  # it would wait for rank 0 until the timeout
        raise
    finally:
        torch.set_num_threads(threads)
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
        try:
            _, err = other.communicate(timeout=120)
        finally:
            if other.poll() is None:
                other.kill()
    assert other.returncode == 0, f"rank 1 failed:\n{err[-3000:]}"
    return out


def test_ranks_match_each_other_and_one_process(two_ranks):
    ranks = [torch.load(two_ranks / f"det-{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == {"vae$$$encoder.0.weight", "vae$$$encoder.0.bias",
        "vae$$$encoder.2.weight", "vae$$$encoder.2.bias", "vae$$$decoder.0.weight",
        "vae$$$decoder.0.bias", "vae$$$decoder.2.weight", "vae$$$decoder.2.bias", "s_loc",
        "offset"}  # fmt: skip
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k

    model, guide = deterministic_pair(seed=0)
    rows = _train_rows()
    max_plate_nesting(model, guide, rows.x[:2], idx=torch.arange(2), size=ROWS)  # the params
    start = _params()
    fit(model, guide, rows, **DET)
    single = _params()
    for k in single:
        assert not torch.equal(single[k], start[k]), k  # every parameter moved
        torch.testing.assert_close(ranks[0][k], single[k], rtol=1e-4, atol=1e-6, msg=k)


def test_vae_ranks_agree_and_resume_is_bit_identical(two_ranks):
    runs = [torch.load(two_ranks / f"vae-{r}.pt") for r in range(2)]
    histories = [json.loads((two_ranks / f"history-{r}.json").read_text()) for r in range(2)]
    for k in runs[0]["straight"]:
        assert torch.equal(runs[0]["straight"][k], runs[1]["straight"][k]), k
        for run in runs:
            assert torch.equal(run["straight"][k], run["resumed"][k]), k
    v = [[h["valid_elbo"] for h in hist] for hist in histories]
    assert v[0] == v[1] and len(v[0]) == 2  # one validation ELBO for all ranks
    assert [h["train_elbo"] for h in histories[0]] == [h["train_elbo"] for h in histories[1]]


def test_only_rank_0_writes(two_ranks):
    rank0, rank1 = (json.loads((two_ranks / f"writes-{r}.json").read_text()) for r in range(2))
    assert rank1["writes"] == [] and rank1["stdout"] == "" and rank1["code"] == 0
    assert rank0["code"] == 0
    assert {Path(w).name for w in rank0["writes"]} == {
        "checkpoint.pt", "config.json", "metrics.json"}  # fmt: skip
    metrics = json.loads(rank0["stdout"])
    assert metrics["epochs"] == 1
    # one data-parallel epoch moved the model: its test ELBO beats that of the same model at its
    # initialisation (rebuilt as train_run builds it, seed 0; rank 0's init is the one broadcast)
    # by more than 4 Monte-Carlo s.e. of the difference (10-particle means; it gains ~0.7 nats)
    from helpers import mc_se

    config = json.loads((two_ranks / "run" / "config.json").read_text())
    se_trained = mc_se(two_ranks / "run")["test_elbo"]
    pyro.set_rng_seed(config["seed"])
    digits = load("digits", binarize="dynamic", seed=config["seed"])
    pyro.clear_param_store()
    start = build_model("vae", digits, config["model_options"])
    args, kw = model_inputs(start, digits.test, config["seed"])
    with torch.no_grad():
        lw = log_weights(start.model, start.guide, *args, num_particles=100, nesting=1, **kw)[0]
    untrained = float(lw.mean())  # 100 particles: s.e. below that of the 10-particle metric
    se = math.hypot(se_trained, math.sqrt(lw.var(0).sum() / 100) / lw.shape[1])
    assert metrics["test_elbo"] > untrained + 4 * se, (metrics["test_elbo"], untrained, se)
    assert config["world_size"] == 2 and "distributed" not in config["fit_options"]
    assert sorted(p.name for p in (two_ranks / "run").iterdir()) == [
        "checkpoint.pt", "config.json", "metrics.json"]  # fmt: skip
    assert sorted(p.name for p in (two_ranks / "straight").iterdir()) == ["checkpoint.pt"]


def test_without_a_launcher_the_error_names_the_fix(monkeypatch, tmp_path, capsys):
    for key in REQUIRED_ENV:
        monkeypatch.delenv(key, raising=False)
    x = torch.bernoulli(torch.full((8, 64), 0.5))
    vae = VAE(64, z_dim=2, hidden=(8,))
    with pytest.raises(DistributedError, match=r"RANK, WORLD_SIZE, .* torchrun --nproc_per_node"):
        fit(vae.model, vae.guide, x, epochs=1, device="cpu", distributed=True)

    from pyro_vi.cli import main

    out = tmp_path / "run"
    assert main([*CLI, "--distributed", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun --nproc_per_node=N" in err, err
    assert not out.exists()


def test_shards_are_disjoint_slices_weighted_by_size():
    idx = torch.randperm(75)
    batch = Batch(torch.randn(75, 2), None, idx, 300)
    shards = [DataParallel(r, 2, torch.device("cpu")).shard(batch) for r in range(2)]
    assert [len(b.idx) for b, _ in shards] == [38, 37]
    assert torch.equal(torch.cat([b.idx for b, _ in shards]), idx)
    assert sum(w for _, w in shards) == 1.0 and shards[0][0].size == 300
    one = Batch(torch.randn(1, 2), torch.zeros(1), idx[:1], 300)  # fewer rows than ranks
    (b0, w0), (b1, w1) = (DataParallel(r, 2, torch.device("cpu")).shard(one) for r in range(2))
    assert (w0, w1) == (1.0, 0.0) and len(b1.idx) == 1  # rank 1 runs a row with weight 0


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    torch_dist.destroy_process_group()  # an orderly exit: gloo's threads stop before Python's
