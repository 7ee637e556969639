"""The ``pyro-vi`` command (:mod:`~pyro_vi.cli.main`) and the run directories it writes and
reads (:mod:`~pyro_vi.cli.runs`). Nothing below this layer imports it."""

from pyro_vi.cli.main import main, parser

__all__ = ["main", "parser"]
