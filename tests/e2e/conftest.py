"""Every end-to-end flow (the official SDK, clearml-agent, hpcagent's own parts) fails when the
embedded server refused a field it sent (tests/conftest.py::no_field_refused)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _strict_fields(no_field_refused: None) -> None:
    """See tests/conftest.py::no_field_refused."""
