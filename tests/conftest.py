"""Shared fixtures: a clean param store and fixed seeds for every test."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, dynamically binarized (seed 0), split 80/10/10: the data most tests
    fit (read-only: tests that change data copy it)."""
    from pyro_vi.data import load

    return load("digits", binarize="dynamic")


@pytest.fixture
def one_thread():
    """One torch thread: SparseAdam's scatter-adds and tiny models crawl when OpenMP threads
    contend on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "machine_data(*names): reads these data sets from the machine; skips without"
    )


def pytest_runtest_setup(item):
    """A test marked ``machine_data`` skips, naming the remedy, where its data are absent."""
    from pyro_vi.data import missing

    for mark in item.iter_markers("machine_data"):
        for name in mark.args:
            if (why := missing(name)) is not None:
                pytest.skip(why)
