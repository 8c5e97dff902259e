"""Pure unit tests of the server's status machine and field helpers (no server process)."""

from __future__ import annotations

from typing import Any

import pytest

from hpcagent.server.fields import (
    ApiFault,
    ListMatch,
    match_tags,
    opt_bool,
    opt_int,
    opt_str_list,
    project_fields,
    req_str,
)
from hpcagent.server.statemachine import (
    STATUSES,
    TRANSITIONS,
    can_transition,
    check_transition,
    has_active_worker,
    set_status,
)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        ("created", "queued", True),
        ("created", "completed", False),
        ("queued", "stopped", True),
        ("queued", "failed", False),
        ("in_progress", "completed", True),
        ("in_progress", "queued", False),
        ("stopped", "queued", True),
        ("failed", "queued", True),
        ("completed", "failed", False),
        ("completed", "in_progress", True),
        ("published", "created", False),
        ("publishing", "published", True),
        ("in_progress", "in_progress", True),
    ],
)
def test_transitions(current: str, new: str, allowed: bool) -> None:
    assert can_transition(current, new) is allowed
    task = {"id": "t", "status": current}
    if allowed:
        check_transition(task, new, force=False)
    else:
        with pytest.raises(ApiFault) as info:
            check_transition(task, new, force=False)
        assert (info.value.code, info.value.subcode) == (400, 110)
        check_transition(task, new, force=True)  # force skips the check


def test_transition_table_only_names_known_statuses() -> None:
    for current, targets in TRANSITIONS.items():
        assert current in STATUSES
        assert targets <= STATUSES
    with pytest.raises(ApiFault):
        check_transition({"status": "created"}, "stopping", force=True)


def test_set_status_times() -> None:
    task: dict[str, Any] = {"status": "queued"}
    fields = set_status(task, "in_progress", "T1", reason="r", message="m")
    assert fields["started"] == "T1"
    assert (task["status_reason"], task["status_message"], task["status_changed"]) == (
        "r", "m", "T1",
    )  # fmt: skip
    set_status(task, "in_progress", "T2")
    assert task["started"] == "T1"
    assert task["status_message"] == ""
    set_status(task, "stopped", "T3")
    assert task["completed"] == "T3"


def test_has_active_worker() -> None:
    assert not has_active_worker({"last_worker": None}, 0.0)
    task = {"last_worker": "w", "last_update": "2026-01-01T00:00:00+00:00"}
    from datetime import datetime, timezone

    at = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert has_active_worker(task, at + 60)
    assert not has_active_worker(task, at + 601)


def test_field_helpers() -> None:
    body = {"s": "x", "n": "12", "b": "true", "l": "one", "bad": 3}
    assert req_str(body, "s") == "x"
    assert opt_int(body, "n") == 12
    assert opt_bool(body, "b") is True
    assert opt_str_list(body, "l") == ["one"]
    with pytest.raises(ApiFault, match="'bad'"):
        req_str(body, "bad")
    with pytest.raises(ApiFault, match="'missing'"):
        req_str(body, "missing")
    with pytest.raises(ApiFault):
        opt_int({"n": 2**63}, "n")
    with pytest.raises(ApiFault):
        opt_bool({"b": "maybe"}, "b")


def test_project_fields_and_tags() -> None:
    doc = {"id": "i", "a": {"b": 1, "c": 2}, "d": 3}
    assert project_fields(doc, ["a.b", "x.y"]) == {"id": "i", "a": {"b": 1}}
    assert project_fields(doc, None) is doc
    assert match_tags(["a", "b"], ["-c"])
    assert not match_tags(["a"], ["-a"])
    assert match_tags(["a"], ["a", "z"])
    assert not match_tags([], ["a"])
    # ClearML's operators: AND context, NOT for the next value, back to OR; "-" only with dash
    assert match_tags(["a", "b"], ["__$all", "a", "b", "__$not", "c"])
    assert not match_tags(["a"], ["__$all", "a", "b"])
    assert not match_tags(["a", "c"], ["__$all", "a", "__$not", "c"])
    assert match_tags(["z"], ["__$all", "__$or", "y", "z"])
    assert not match_tags(["x"], ["__$not", "x"])
    assert not match_tags(["x"], ["-x"])  # tags: "-x" excludes x; other fields: a name
    match = ListMatch.parse(["-x"])
    assert match is not None
    assert match.admits(["-x"])
    assert match.plain == ["-x"]
    assert ListMatch.parse([]) is None
    not_created = ListMatch.parse(["__$not", "created"])
    assert not_created is not None
    assert not_created.plain is None
    assert not not_created.admits(["created"])
    assert not_created.admits(["queued"])
