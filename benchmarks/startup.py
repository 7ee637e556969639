"""Start-up cost of pyro-vi: whole fresh processes, timed from outside.

Each command runs in a new interpreter (what a user pays per ``pyro-vi`` call or notebook kernel):
``pyro-vi --help``, a bare ``import pyro_vi``, ``import pyro_vi`` followed by ``pyro_vi.fit`` (the
first use of the training API loads torch and Pyro), and ``import pyro`` as the floor that any
Pyro program pays. The commands run in turn, round after round, after one warm-up round; the
figures are medians of wall seconds. ``--other PATH`` times a second checkout of the package (its
folder on ``PYTHONPATH``, ahead of this one) in the same rounds, for before/after figures.

    python benchmarks/startup.py --runs 7 --other /tmp/old-checkout

Last line: ``{"help_s": .., "import_s": .., "import_fit_s": .., "import_pyro_s": .., ...}``.
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

COMMANDS = {
    "help": "from pyro_vi.cli import main; main(['--help'])",
    "import": "import pyro_vi",
    "import_fit": "import pyro_vi; pyro_vi.fit",
    "import_pyro": "import pyro",
}


def _wall(code: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )  # fmt: skip  (not a checkout: '' leads sys.path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--other", default=None, help="another checkout's root, timed alongside")
    a = p.parse_args(argv)
    envs = {"": dict(os.environ)}
    if a.other:
        envs["other_"] = {**os.environ, "PYTHONPATH": os.path.abspath(a.other)}
    times: dict[str, list[float]] = {}
    for round_ in range(a.runs + 1):  # round 0 warms the file cache and is dropped
        for prefix, env in envs.items():
            for name, code in COMMANDS.items():
                if prefix and name == "import_pyro":
                    continue
                t = _wall(code, env)
                if round_:
                    times.setdefault(f"{prefix}{name}_s", []).append(t)
    out = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out["runs"] = a.runs
    for k, v in times.items():
        print(f"{k:20s} median {statistics.median(v):.4f} s  min {min(v):.4f}  max {max(v):.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
