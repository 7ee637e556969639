"""``python -m pyro_vi.cli``: the ``pyro-vi`` command."""

import sys

from pyro_vi.cli.main import main

sys.exit(main())
