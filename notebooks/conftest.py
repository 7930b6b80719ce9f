"""pytest --nbmake runs every notebook here. A notebook whose optional backend cannot be
imported is reported as skipped, with the reason, instead of failing or passing silently."""

from __future__ import annotations

import pytest

from steering_backends import backend

NEEDS_BACKEND = {"03_baukit_tracedict.ipynb": "baukit_tracedict", "09_nnsight.ipynb": "nnsight_trace"}


def _import_error(name: str) -> str | None:
    try:
        backend(name)
    except ImportError as err:
        return str(err)
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = NEEDS_BACKEND.get(item.path.name)
        if name and (error := _import_error(name)):
            reason = f"{item.path.name} skipped: the {name} backend cannot be imported ({error}); see README, Install"
            item.add_marker(pytest.mark.skip(reason=reason))
