"""The SQL of a sorted, filtered task listing (``tasks.get_all``) that stays fast at lab scale.

A first page must cost a page, not the history: the tasks have to come out of an index already
in the requested order, so that reading stops when the page is full. SQLite can read an index in
order for one value of its leading column only (``project = ?``); for ``project IN (a, b)``, or
``status IN (...)``, it reads every match and sorts them (a million-task lab: seconds). So when
the listing is filtered by project (or, without a project, by status) and sorted by a column
with a ``(project, column)`` / ``(status, column)`` index (:data:`MERGED_ORDERS`), each value
gets its own in-order cursor and :func:`stream` merges them (``heapq.merge``): reading stays in
proportion to the rows returned. The other filters (id, the other column) are plain terms of
each cursor, the status one written ``+status`` so SQLite never trades the ordered index for the
``(project, status)`` one. Any other shape is one query, as before.

Ordering matches SQL's in every case: NULL first ascending and last descending, ties broken by
``created`` ascending.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterator
from functools import total_ordering
from typing import Any

import orjson

#: Task fields that are columns, so tasks.get_all can sort and page them in SQL.
TASK_SORT_COLUMNS = frozenset(
    {"id", "name", "project", "status", "created", "started", "last_update"}
)
#: Sort columns with ``(project, column, status)`` and ``(status, column)`` indexes (store.SCHEMA).
MERGED_ORDERS = frozenset({"created", "last_update"})
#: The most cursors one listing merges (a longer value list is one query that sorts).
MAX_MERGED = 64

Filters = tuple[tuple[str, list[str] | None], ...]


@total_ordering
class _Desc:
    """A sort key that compares reversed (a descending column within an ascending merge)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.key < self.key)

    def __hash__(self) -> int:
        return hash(self.key)


def where_in(filters: Filters) -> tuple[str, list[Any]]:
    """``WHERE column IN (...) AND ...`` for every filter whose values are not None; a column
    written ``+name`` is compared but never used to pick an index."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, values in filters:
        if values is not None:
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _order_by(order: list[tuple[str, bool]]) -> str:
    # NULL sorts first ascending, last descending: as "" does in tasks.get_all's Python sort
    # (str(value or "")), so both orders agree, and the bare column keeps its index usable.
    terms = [f"{column} {'DESC' if desc else 'ASC'}" for column, desc in order]
    return ", ".join([*terms, "created"])


def _merge_key(order: list[tuple[str, bool]]) -> Any:
    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for index, (_column, desc) in enumerate(order):
            value = row[index]
            part = (value is not None, value if value is not None else "")
            parts.append(_Desc(part) if desc else part)
        parts.append(row[len(order)])  # created, ascending
        return tuple(parts)

    return key


def _split(
    ids: list[str] | None, projects: list[str] | None, statuses: list[str] | None, first: str
) -> tuple[str, list[str], Filters] | None:
    """``(column, values, other filters)`` when the listing is merged from in-order cursors."""
    if ids is not None or first not in MERGED_ORDERS:
        return None
    if projects is not None and 0 < len(projects) <= MAX_MERGED:
        return "project", projects, (("+status", statuses),)
    if projects is None and statuses is not None and 0 < len(statuses) <= MAX_MERGED:
        return "status", statuses, ()
    return None


def stream(
    conn: sqlite3.Connection,
    ids: list[str] | None,
    projects: list[str] | None,
    statuses: list[str] | None,
    order: list[tuple[str, bool]],
) -> Iterator[dict[str, Any]]:
    """Task documents filtered by id/project/status, in ``order`` (``(column, descending)``
    over :data:`TASK_SORT_COLUMNS`; others are ignored) then ``created``, read lazily."""
    order = [(column, desc) for column, desc in order if column in TASK_SORT_COLUMNS]
    split = _split(ids, projects, statuses, order[0][0] if order else "created")
    if split is None:
        where, args = where_in((("id", ids), ("project", projects), ("status", statuses)))
        sql = f"SELECT doc FROM tasks {where} ORDER BY {_order_by(order)}"  # noqa: S608
        cursor = conn.execute(sql, args)
        try:
            for (doc,) in cursor:
                yield orjson.loads(doc)
        finally:
            cursor.close()
        return
    column, values, others = split
    merged = order or [("created", False)]
    selected = ", ".join([c for c, _ in merged] + ["created", "doc"])
    cursors = []
    for value in dict.fromkeys(values):  # each value once, as IN would
        where, args = where_in(((column, [value]), *others))
        sql = f"SELECT {selected} FROM tasks {where} ORDER BY {_order_by(merged)}"  # noqa: S608
        cursors.append(conn.execute(sql, args))
    rows = cursors[0] if len(cursors) == 1 else heapq.merge(*cursors, key=_merge_key(merged))
    try:
        for row in rows:
            yield orjson.loads(row[-1])
    finally:  # a caller that stops early ends every statement (no read lock left behind)
        for cursor in cursors:
            cursor.close()
