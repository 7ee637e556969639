"""Atomic files: a writer killed mid-write leaves the last file intact, and the temporaries it left
are removed by ``fit --resume`` and ``--overwrite``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vi.atomic import PARTIAL, atomic_open, remove_partial
from pyro_vi.cli import main
from pyro_vi.infer.checkpoint import load_checkpoint

TINY = ["--dataset", "digits", "--epochs", "1", "--z-dim", "2", "--hidden", "16", "--iwae-k", "10",
        "--no-figures"]  # fmt: skip

# a writer that stops halfway through replacing the checkpoint, until it is killed
KILLED_WRITER = """
import sys, time
from pyro_vi.atomic import atomic_open
with atomic_open(sys.argv[1], "wb") as f:
    f.write(b"half a checkpoint " * 800)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def _kill_mid_write(path: Path) -> list[Path]:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return [p for p in path.parent.iterdir() if p.name.endswith(PARTIAL)]


def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("new, half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_remove_partial_keeps_everything_else(tmp_path):
    keep = ["checkpoint.pt", "config.json", ".hidden", "latent.png"]
    stale = [".checkpoint.pt.8vsm7eyg", ".checkpoint.pt.69gs04h6", f".metrics.json.x1y2{PARTIAL}"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"")
    assert sorted(p.name for p in remove_partial(tmp_path)) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_a_killed_writer_leaves_the_checkpoint_intact_and_resume_and_overwrite_clean_up(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--out", str(run)]) == 0
    before = load_checkpoint(run / "checkpoint.pt")["params"]
    leftovers = _kill_mid_write(run / "checkpoint.pt")
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    after = load_checkpoint(run / "checkpoint.pt")["params"]  # intact: loads, same weights
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert main(["evaluate", str(run), "--iwae-k", "10"]) == 0  # and evaluates

    assert main(["fit", "vae", "--resume", str(run), "--epochs", "2", "--iwae-k", "10",
                 "--no-figures"]) == 0  # fmt: skip
    assert not [p for p in run.iterdir() if p.name.startswith(".")]

    assert len(_kill_mid_write(run / "checkpoint.pt")) == 1
    assert main(["fit", "vae", *TINY, "--out", str(run), "--overwrite"]) == 0
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
