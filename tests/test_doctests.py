"""The ``>>>`` examples in transfuse's docstrings run as written: an example that no longer holds is a defect."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import transfuse

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(transfuse.__path__, "transfuse.") if not info.name.endswith("__main__")
)


def _with_examples() -> list[str]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            found.append(name)
    return found


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run with -s to see)"
