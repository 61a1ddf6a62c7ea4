"""Every package's public surface is explicit: ``__all__`` sorted and complete (anyio, httpx)."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["brokers", "brokers.testing", "streams", "operators", "agents"]


def _isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions (ruff's RUF022 order)."""
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_a_sorted_tuple_of_real_attributes(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert list(exported) == sorted(exported, key=_isort_order)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_exported(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", "").startswith(name.split(".")[0])
        and not isinstance(v, type(importlib))
    }
    assert public <= set(module.__all__)


def test_importing_brokers_loads_no_client_library() -> None:
    import subprocess
    import sys

    code = "import brokers, sys; print(sorted(m for m in ('aiokafka', 'nats') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
