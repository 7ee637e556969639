"""Tests that read data from the machine (Debian's packages, the download cache) skip where the
data are absent, with the one-line remedy of :func:`pyro_vi.data.missing` as the reason.

``@needs("fashion-mnist")`` marks a test; :func:`used_in` finds the machine data sets that a README
snippet or a notebook loads, so that their parametrized tests get the mark without a list to keep.
The skip itself happens in ``conftest.pytest_runtest_setup``.
"""

from __future__ import annotations

import re

import pytest

MACHINE_SETS = ("fashion-mnist", "mnist", "wordnet")
_NAMES = "|".join(map(re.escape, MACHINE_SETS))
# load("fashion-mnist"...) in code (quotes possibly escaped inside notebook JSON), or a CLI flag
_USE = re.compile(
    rf"""load\(\s*\\?["']({_NAMES})\\?["']|--(?:dataset|corpus)[ =]({_NAMES})(?![\w-])"""
)


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as reading these machine data sets."""
    return pytest.mark.machine_data(*names)


def used_in(code: str) -> tuple[str, ...]:
    """The machine data sets that ``code`` loads, in order of first use."""
    found = [a or b for a, b in _USE.findall(code)]
    return tuple(dict.fromkeys(found))


def marks_for(code: str) -> list[pytest.MarkDecorator]:
    """The ``needs`` mark for what ``code`` loads, or none (for ``pytest.param(..., marks=)``)."""
    names = used_in(code)
    return [needs(*names)] if names else []
