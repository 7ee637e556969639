"""Data-parallel SVI: 1 vs 2 CPU processes on the Fashion-MNIST VAE recipe, same global batch.

Recipe (benchmarks/fashion_nll.py): VAE 784-300-300-40 (tanh), Bernoulli likelihood, dynamic
binarization of the 60,000 training images, Adam lr 1e-3, global batch 100, Trace_ELBO, seed 0.
Each configuration runs in fresh processes, one after the other:

- ``1proc-2threads``: one process using both cores through torch's intra-op threads;
- ``1proc-1thread``: one process, one thread;
- ``2procs-1thread``: ``torchrun --standalone --nproc_per_node=2``, gloo, one thread per rank,
  ``pyro_vi.fit(..., distributed=True)``: 50 rows per rank and step.

The reference is the faster single-process configuration (the honest baseline on a 2-core
machine); the speed-up is its median epoch time over the 2-process one. The test ELBO (nats per
image, 10 particles, the first ``--test-size`` test images binarized once) is compared at the
end of training. Timings need a quiet machine; for a check that the script works::

    python benchmarks/distributed.py --epochs 1 --train-size 6000 --test-size 500

Full run::

    python benchmarks/distributed.py --epochs 10 --test-size 10000

Last line: ``{"speedup_2_procs": .., "elbo_diff_nats": ..}``.

Weak scaling (the per-rank load fixed, the global batch growing with the ranks)::

    python benchmarks/distributed.py --weak --epochs 4 --train-size 24000 --test-size 1000

runs ``1rank`` (one process, one thread, batch ``--rank-batch``, default 1,000) and ``2ranks``
(two gloo ranks, one thread each, global batch 2 x ``--rank-batch``) on the same images; the
throughput is training images per second of the median epoch after the first (which holds the
captures). Last line: ``{"weak_scaling_2_ranks": .., "images_per_second_1": .., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # name: (processes, threads per process)
    "1proc-2threads": (1, 2),
    "1proc-1thread": (1, 1),
    "2procs-1thread": (2, 1),
}
WEAK = {"1rank": (1, 1), "2ranks": (2, 1)}  # --weak: global batch = ranks x --rank-batch


def worker(a) -> None:
    """One configuration (or one rank of it): fit, then rank 0 evaluates and writes the result."""
    import pyro
    import torch

    from pyro_vi import elbo, fit
    from pyro_vi.data import Split, load
    from pyro_vi.models import VAE

    torch.set_num_threads(a.threads)
    pyro.set_rng_seed(a.seed)
    ds = load("fashion-mnist", binarize=a.binarize, valid_fraction=0.0, seed=a.seed)
    train = ds.train
    if a.train_size:
        train = Split(train.x[: a.train_size], train.y[: a.train_size], train.binarize)
    vae = VAE(784, z_dim=40, hidden=(300, 300), activation="tanh")
    t0 = time.perf_counter()
    result = fit(vae.model, vae.guide, train, epochs=a.epochs, batch_size=a.batch_size, lr=1e-3,
                 device="cpu", seed=a.seed, valid=None, progress=False,
                 distributed=a.distributed)  # fmt: skip
    seconds = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) != 0:
        return
    x = ds.test.evaluation_x(a.seed)[: a.test_size]
    torch.manual_seed(a.seed)
    with torch.no_grad():
        test_elbo = elbo(vae.model, vae.guide, x, num_particles=10).mean().item()
    epochs = [h["seconds"] for h in result.history]
    timed = epochs[1:] if len(epochs) > 1 else epochs  # the first epoch holds the captures
    out = dict(test_elbo=test_elbo, epoch_seconds=epochs, median_epoch=statistics.median(epochs),
               median_epoch_after_first=statistics.median(timed), images=len(train),
               step=result.step,
               fit_seconds=seconds, train_elbo=result.history[-1]["train_elbo"],
               world_size=result.config.get("world_size", 1), threads=a.threads)  # fmt: skip
    Path(a.result).write_text(json.dumps(out))


def run(name: str, a, folder: Path) -> dict:
    procs, threads = {**CONFIGS, **WEAK}[name]
    batch = a.rank_batch * procs if a.weak else a.batch_size
    result = folder / f"{name}.json"
    args = [__file__, "--worker", "--threads", str(threads), "--result", str(result),
            "--epochs", str(a.epochs), "--train-size", str(a.train_size), "--test-size",
            str(a.test_size), "--batch-size", str(batch), "--seed", str(a.seed),
            "--binarize", a.binarize]  # fmt: skip
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={procs}"]  # fmt: skip
        cmd = [*launcher, *args, "--distributed"]
    else:
        cmd = [sys.executable, *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    out = json.loads(result.read_text())
    out["wall_seconds"] = time.perf_counter() - t0
    print(f"{name:>15}: median epoch {out['median_epoch']:7.2f} s, test ELBO "
          f"{out['test_elbo']:9.3f}, train ELBO {out['train_elbo']:9.3f}", flush=True)  # fmt: skip
    return out


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100, help="global batch")
    p.add_argument("--train-size", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=None, choices=[*CONFIGS, *WEAK])
    p.add_argument("--weak", action="store_true", help="weak scaling: 1 rank against 2 ranks")
    p.add_argument(
        "--binarize",
        default="dynamic",
        choices=["dynamic", "static"],
        help="dynamic (the recipe): every rank draws the whole global batch's noise",
    )
    p.add_argument("--rank-batch", type=int, default=1000, help="--weak: rows per rank and step")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return None

    from pyro_vi.data import load

    load("fashion-mnist")  # decompress once, before several ranks read it
    configs = a.configs or list(WEAK if a.weak else CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(name, a, Path(tmp)) for name in configs}
    if a.weak:
        return _weak(results, a)
    single = {k: v for k, v in results.items() if v["world_size"] == 1}
    dist = results.get("2procs-1thread")
    summary = {"configs": results}
    if single and dist:
        ref_name = min(single, key=lambda k: single[k]["median_epoch"])
        ref = single[ref_name]
        for k, v in single.items():
            print(
                f"speed-up of 2 processes over {k}: {v['median_epoch'] / dist['median_epoch']:.2f}"
            )
        print(
            f"reference: {ref_name}; {a.epochs} epochs, global batch {a.batch_size}, "
            f"{a.train_size or 60000} training images, {a.test_size} test images"
        )
        out = {"speedup_2_procs": round(ref["median_epoch"] / dist["median_epoch"], 3),
               "elbo_diff_nats": round(dist["test_elbo"] - ref["test_elbo"], 3)}  # fmt: skip
    else:
        out = {}
    print(json.dumps(summary, default=float), file=sys.stderr)
    print(json.dumps(out))
    return out


def _weak(results: dict, a) -> dict:
    """The weak-scaling summary: images per second of 2 ranks over 1 rank."""
    rate = {k: v["images"] / v["median_epoch_after_first"] for k, v in results.items()}
    print(json.dumps({"configs": results}, default=float), file=sys.stderr)
    out = {f"images_per_second_{results[k]['world_size']}": round(r, 1) for k, r in rate.items()}
    if {"1rank", "2ranks"} <= set(rate):
        out = {"weak_scaling_2_ranks": round(rate["2ranks"] / rate["1rank"], 3), **out}
    print(f"weak scaling: per-rank batch {a.rank_batch}, {a.epochs} epochs, "
          f"{a.train_size or 60000} training images")  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
