"""Fixtures of the NAT lab tests: every test here is marked ``lab`` and needs root."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lt_punch.netlab import NatLab, cleanup_stale, lab_unavailable_reason

NatLabFactory = Callable[..., NatLab]

_HERE = Path(__file__).resolve().parent

_reason: str | None = None
_checked = False


def _unavailable() -> str | None:
    """Check once per session whether the lab can be built (it creates a namespace).

    When it can, also remove labs left behind by dead test runs (never those of live ones).
    """
    global _reason, _checked
    if not _checked:
        _reason = lab_unavailable_reason()
        _checked = True
        if _reason is None:
            cleanup_stale()
    return _reason


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/lab with ``lab``."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _skip_without_lab(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is None:
        return
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"NAT lab unavailable: {reason}")


@pytest.fixture
def nat_lab() -> Iterator[NatLabFactory]:
    """Factory: ``lab = nat_lab({"a": "port", "b": "port"}, loss=...)`` builds a started lab.

    Every lab built through the factory is torn down at the end of the test, also when the
    test failed.
    """
    labs: list[NatLab] = []

    def make(sides: dict[str, str], **kwargs: object) -> NatLab:
        lab = NatLab(sides, **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        lab.open()
        return lab

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception as exc:  # keep closing the others
            errors.append(exc)
    if errors:
        raise errors[0]
