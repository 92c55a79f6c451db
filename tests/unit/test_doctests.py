"""Every example in the package's docstrings runs: a `>>>` line that no longer holds fails here."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import smap_shared

MODULES = sorted(m.name for m in pkgutil.walk_packages(smap_shared.__path__, "smap_shared.")
                 if not m.name.endswith("__main__"))


def with_examples() -> list[str]:
    out = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin) as f:
                if ">>> " in f.read():
                    out.append(name)
    return out


@pytest.mark.parametrize("name", with_examples())
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
