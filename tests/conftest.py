"""Shared fixtures: a clean param store and fixed seeds for every test."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
