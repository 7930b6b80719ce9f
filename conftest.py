"""How the whole suite (tests/ and notebooks/) runs: on two pytest-xdist workers (pyproject.toml's
addopts: ``-n 2 --dist loadgroup``), each test seeded, shared caches written by one process.

- Before any worker starts, the controller converts SmolLM2's cache if it is missing (two workers
  converting it at once would each replace the folder the other reads).
- Tests are scheduled file by file (one xdist_group per file), so a module-scoped model is built
  once; the parity suite is split by model, so the GPT-2-XL shape runs beside the other files.
- SmolLM2's tuned lens is trained once: its test and notebooks/08_lens.ipynb are one group, run
  by one worker in that order, and the test trains it. The suite trains the test-size lens
  (STEERING_BACKENDS_LENS_DOCUMENTS below; the full lens is the benchmark's, benchmarks/tuned_lens.py).
"""

from __future__ import annotations

import os
import random

import pytest

# The first 20 documents of each source (steering_backends.lens_training.LensRecipe): ~30 training
# steps instead of 100. Set before steering_backends is imported, and inherited by the notebooks'
# kernels, so the lens test and notebook 08 share one lens.
os.environ.setdefault("STEERING_BACKENDS_LENS_DOCUMENTS", "20")

LENS_GROUP = "smollm2-tuned-lens"
LENS_ITEMS = (
    "tests/test_tuned_lens.py::test_smollm2s_lens_trains_or_loads_and_beats_the_logit_lens",
    "notebooks/08_lens.ipynb",
)


def _workers(config) -> int:
    return int(getattr(config.option, "numprocesses", None) or 0)


def pytest_configure(config):
    # (xdist declares it too; declared here for runs without xdist installed)
    config.addinivalue_line("markers", "xdist_group(name): the tests pytest-xdist runs on one worker")
    if hasattr(config, "workerinput"):  # an xdist worker: its share of the cores, for itself and its notebook kernels
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(config.workerinput["workercount"]))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    elif _workers(config):  # the xdist controller, before workers start
        from steering_backends import models

        try:
            gguf = models.smollm2_gguf()
        except Exception:  # noqa: BLE001 (no GGUF: the tests that need it fail and say why)
            return
        if not models._cache_is_valid(models.cache_dir() / models.SMOLLM2, gguf):
            models._convert_gguf(gguf, models.cache_dir() / models.SMOLLM2)


# The longest groups start first, so that the many short ones fill the other worker meanwhile
# (a worker takes the next group in this order when it is almost out of work).
FIRST = ("tests/test_parity.py:gpt2-xl-random", LENS_GROUP, "tests/test_where_it_holds.py")


def _group(item) -> str:
    path = item.nodeid.split("::")[0]
    if item.nodeid.startswith(LENS_ITEMS):
        return LENS_GROUP
    if path == "tests/test_parity.py" and hasattr(item, "callspec") and "results" in item.callspec.params:
        # No "]" at the end: xdist reads the group after the last "@" only when it follows every "]".
        return f"{path}:{item.callspec.params['results']}"
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


# After pytest has ordered the items by their fixtures' parameters (which would undo this).
@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)
def pytest_collection_modifyitems_longest_first(config, items):
    """The FIRST groups move to the front; a stable sort, so each group keeps its order."""

    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group").args[0]
        return FIRST.index(group) if group in FIRST else len(FIRST)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, whichever worker runs it after which test."""
    import numpy
    import torch

    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
