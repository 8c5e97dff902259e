"""A pop happens once (issue 14, item 2), against the real embedded server.

* The server keeps client-chosen pop ids: a pop repeated with the same ``pop_id`` answers the
  same entry and takes nothing more; the token declares the extension (``hpcagent_features``).
* Replies lost between client and server (tests/faults.py's proxy: the server popped, the
  client never heard) strand no task: the client repeats a pop that has a pop id, and never
  repeats one that has none (a real ClearML server), nor any other non-repeatable call.
* A log request whose reply was lost is not sent again blindly: the shipper spools it and
  sends it again only if the server does not have it (each line stored once).
* A task stranded anyway (queued with no entry) is put back by the submitter's sweep and runs
  exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import LossyProxy
from test_submitter_loop import TEMPLATE, Rig

from hpcagent.api import ApiClient
from hpcagent.api.spool import make_sender, make_verifier
from hpcagent.errors import ApiError, UnconfirmedCall
from hpcagent.executor.logs import LogShipper
from hpcagent.submitter.options import QueueRef, job_name


def _client(url: str, server: Any, **kw: Any) -> ApiClient:
    kw.setdefault("retries", 4)
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    return ApiClient(url, server.access_key, server.secret_key, **kw)


@pytest.fixture
def client(embedded_server: Any) -> Iterator[ApiClient]:
    c = _client(embedded_server.url, embedded_server)
    yield c
    c.close()


@pytest.fixture
def proxy(embedded_server: Any) -> Iterator[LossyProxy]:
    p = LossyProxy(embedded_server.url)
    yield p
    p.close()


def _queue_with_tasks(client: ApiClient, name: str, n: int) -> tuple[str, list[str]]:
    qid = str(client.send("queues.create", {"name": name})["id"])
    tids = []
    for i in range(n):
        tid = str(client.send("tasks.create", {"name": f"{name} {i}", "type": "training"})["id"])
        client.send("tasks.enqueue", {"task": tid, "queue": qid})
        tids.append(tid)
    return qid, tids


def _entries(client: ApiClient, qid: str) -> list[str]:
    queue = client.send("queues.get_by_id", {"queue": qid})["queue"]
    return [str(e["task"]) for e in queue["entries"]]


def test_server_declares_pop_ids_and_a_repeat_answers_the_same_entry(client: ApiClient) -> None:
    assert client.compat.pop_ids()
    qid, (t0, t1, t2) = _queue_with_tasks(client, "popid", 3)
    first = client.send("queues.get_next_task", {"queue": qid, "pop_id": "p-1"})
    again = client.send("queues.get_next_task", {"queue": qid, "pop_id": "p-1"})
    assert first["entry"]["task"] == t0
    assert again["entry"] == first["entry"]
    assert _entries(client, qid) == [t1, t2]  # the repeat took nothing
    other = client.send("queues.get_next_task", {"queue": qid, "pop_id": "p-2"})
    assert other["entry"]["task"] == t1
    other_q, _ = _queue_with_tasks(client, "popid-other", 1)
    with pytest.raises(ApiError) as info:
        client.send("queues.get_next_task", {"queue": other_q, "pop_id": "p-1"})
    assert (info.value.result_code, info.value.subcode) == (400, 12)
    with pytest.raises(ApiError):
        client.send("queues.get_next_task", {"queue": qid, "pop_id": "x" * 129})
    assert _entries(client, qid) == [t2]


def test_lost_pop_replies_are_repeated_with_the_pop_id(
    client: ApiClient, proxy: LossyProxy, embedded_server: Any
) -> None:
    qid, tids = _queue_with_tasks(client, "lossy-pops", 3)
    via = _client(proxy.url, embedded_server)
    proxy.lose("queues.get_next_task", 2)  # the server pops, the client never hears (twice)
    popped = [via.queues.get_next_task(qid) for _ in range(3)]
    assert [p["task"] for p in popped if p] == tids  # each task once, in queue order
    assert proxy.lost == ["queues.get_next_task"] * 2
    assert proxy.seen["queues.get_next_task"] == 5
    assert _entries(client, qid) == []
    assert via.queues.get_next_task(qid) is None


def test_without_pop_ids_a_pop_is_never_sent_twice(
    client: ApiClient, proxy: LossyProxy, embedded_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ClearML server declares no pop ids: a lost reply is UnconfirmedCall, one request."""
    qid, (t0, t1) = _queue_with_tasks(client, "plain-pops", 2)
    via = _client(proxy.url, embedded_server)
    monkeypatch.setattr(via.compat, "pop_ids", lambda: False)
    proxy.lose("queues.get_next_task")
    with pytest.raises(UnconfirmedCall, match="not sent again"):
        via.queues.get_next_task(qid)
    assert proxy.seen["queues.get_next_task"] == 1
    assert _entries(client, qid) == [t1]  # t0 was taken: stranded, queued without an entry
    assert client.tasks.get_by_id(t0)["status"] == "queued"


def test_other_non_repeatable_calls_are_not_repeated_after_a_lost_reply(
    client: ApiClient, proxy: LossyProxy, embedded_server: Any
) -> None:
    qid = str(client.send("queues.create", {"name": "lossy-enqueue"})["id"])
    tid = str(client.send("tasks.create", {"name": "lossy", "type": "training"})["id"])
    via = _client(proxy.url, embedded_server)
    proxy.lose("tasks.enqueue")
    with pytest.raises(UnconfirmedCall):
        via.send("tasks.enqueue", {"task": tid, "queue": qid})
    assert proxy.seen["tasks.enqueue"] == 1
    assert _entries(client, qid) == [tid]  # one entry, not two
    proxy.lose("tasks.get_all")  # a read is repeated
    assert via.send("tasks.get_all", {"id": [tid]})["tasks"][0]["id"] == tid
    assert proxy.seen["tasks.get_all"] == 2


def test_a_log_request_with_a_lost_reply_is_stored_once(
    tmp_path: Path, client: ApiClient, proxy: LossyProxy, embedded_server: Any
) -> None:
    """The server stores an events.add_batch whose reply is lost: the client does not repeat
    it; the shipper spools it, its verifier finds it stored, and nothing is stored twice."""
    tid = str(client.send("tasks.create", {"name": "lossy log", "type": "training"})["id"])
    via = _client(proxy.url, embedded_server)
    shipper = LogShipper(
        make_sender(via),
        task=tid,
        worker="w",
        spool_dir=tmp_path / "spool",
        verifier=make_verifier(via, tid),
    )
    proxy.lose("events.add_batch")
    for i in range(5):
        shipper.emit(f"first {i}")
    assert not shipper.flush_once()  # no reply: spooled, not sent again by the client
    assert proxy.seen["events.add_batch"] == 1
    for i in range(5):
        shipper.emit(f"then {i}")
    assert shipper.close(timeout=30.0)
    assert proxy.seen["events.add_batch"] == 2  # the verifier found the first one stored
    log = client.send("events.get_task_log", {"task": tid, "batch_size": 100, "order": "asc"})
    lines = [x for e in log["events"] for x in str(e["msg"]).split("\n")]
    assert lines == [f"first {i}" for i in range(5)] + [f"then {i}" for i in range(5)]


def test_a_timed_out_pop_is_repeated_with_its_pop_id(
    client: ApiClient, embedded_server: Any
) -> None:
    """The reply comes after the client's read timeout (a paused server): same entry."""
    hold = LossyProxy(embedded_server.url, mode="hold", hold_s=3.0)
    try:
        qid, tids = _queue_with_tasks(client, "slow-pops", 2)
        via = _client(hold.url, embedded_server, timeout_s=1.0)
        via.token_claims()  # log in first (the hold is for the pop)
        hold.lose("queues.get_next_task")
        first = via.queues.get_next_task(qid)
        assert first is not None
        assert first["task"] == tids[0]
        assert _entries(client, qid) == [tids[1]]
    finally:
        hold.close()


def test_submitter_puts_a_stranded_task_back_and_runs_it_once(
    tmp_path: Path,
    client: ApiClient,
    proxy: LossyProxy,
    embedded_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against a server without pop ids, the submitter's lost pop strands the task; its sweep
    puts it back at the front, the next pull runs it, and it ran in exactly one job."""
    via = _client(proxy.url, embedded_server)
    monkeypatch.setattr(via.compat, "pop_ids", lambda: False)
    rig = Rig(tmp_path, via, embedded_server)
    try:
        qid = rig.queue("stranding")
        tids = [rig.task(f"stranded {i}", qid) for i in range(2)]
        s = rig.submitter([QueueRef(qid, "stranding", rig.template(TEMPLATE))], stranded_grace_s=0)
        proxy.lose("queues.get_next_task")
        with caplog.at_level(logging.WARNING, logger="hpcagent.submitter"):
            assert s.pull() == 0
        assert "the stranded-task sweep settles it" in caplog.text
        assert _entries(client, qid) == [tids[1]]
        assert s.stranded.sweep() == [tids[0]]
        assert _entries(client, qid) == tids  # back at the front
        rig.until_settled(s)
        assert [rig.get(t)["status"] for t in tids] == ["completed", "completed"]
        for tid in tids:
            assert len(rig.scheduler.find_by_name(job_name(tid))) == 1
        assert s.stranded.sweep() == []
        s.shutdown()
    finally:
        rig.ledger.close()


def test_sweep_leaves_tasks_that_others_hold(
    rig: Rig, client: ApiClient, embedded_server: Any
) -> None:
    """A popped task with another worker's job record, or one not stranded for the grace
    yet, is left alone."""
    qid = rig.queue("held")
    held, fresh = rig.task("held", qid), rig.task("fresh", qid)
    for _ in range(2):
        client.queues.get_next_task(qid)
    client.send(
        "tasks.edit_hyper_params",
        {
            "task": held,
            "hyperparams": [
                {"section": "properties", "name": "job-worker", "value": "other:submitter"}
            ],
        },
    )
    s = rig.submitter([QueueRef(qid, "held", rig.template(TEMPLATE))], stranded_grace_s=3600)
    assert s.stranded.sweep() == []  # fresh: seen once, not for the grace yet
    s.stranded.grace_s = 0
    assert s.stranded.sweep() == [fresh]
    assert _entries(client, qid) == [fresh]
    assert rig.get(held)["status"] == "queued"
    s.shutdown()
