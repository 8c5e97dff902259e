"""The hostile-record corpus (issue 14 items 5 and 8): bad payloads for every endpoint of the
embedded server, as data, and :func:`run_corpus`, which sends them to a server and then reads
every stored record back.

The rule it checks (docs/server.md, "Validation"): every answer is a 2xx or a 4xx in a ClearML
envelope (``meta.result_code`` == the HTTP status, ``result_subcode``, ``result_msg``), never a
5xx; and after the corpus, every read endpoint still answers 200 for every stored task.

It talks plain HTTP only (``requests``), so ``make chaos`` runs it against any server URL with
any credentials: ``run_corpus(url, key, secret)`` returns a :class:`CorpusResult` of counts.
tests/unit/test_server_hostile.py runs it against a fresh ``hpcagent server``.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from hpcagent.server.accepted import ACCEPTED, SELF_CHECKED


def _nested_list(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


def _nested_dict(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": value}
    return value


#: Values put, one at a time, in every field an endpoint accepts: wrong types, edge numbers,
#: control characters, lone surrogates, deep nesting, big strings, injection-looking text.
HOSTILE_VALUES: list[Any] = [
    1, -1, 0, 2**63, -(2**70), 1.5, 1e308, True, False, None,
    "", " ", "x", "\x00", "a\x00b", "\ud800", "\udcff tail", "é 𝄞 名前", "\x1b[31m", "\n\r\t",
    "x" * 200_000, "../../../../etc/passwd", "'; DROP TABLE tasks; --", "$(reboot)", "<script>",
    "(a+)+$", "[", "-", "__$all", "%s%n%x",
    [], [1], [None], ["ok", 2], [[[]]], [{}], ["x" * 10_000] * 50,
    {}, {"a": 5}, {"properties": 5}, {"$where": "1"}, {"": {"": {"": None}}},
    {"Args": {"lr": 5}}, {"k": [1, {"v": None}]},
    _nested_list(300), _nested_dict(300), _nested_list(120), _nested_dict(90),
]  # fmt: skip

#: Whole bodies that are no JSON object (sent raw to every endpoint).
RAW_BODIES: list[bytes] = [
    b"\xff\xfe\xfd", b"{", b"[]", b"null", b"42", b'"text"', b'{"a":', b"\x00\x00",
    b'{"task": "\xff\xfe"}', b'{"a": "\\ud800"}', b'{"a": 1e999}',
    b'{"a": 1234567890123456789012345}',
    b"[" * 300 + b"]" * 300, b'{"a":' * 300 + b"1" + b"}" * 300, b'{"a": NaN}', b"{}" * 1000,
]  # fmt: skip

#: Literal payloads from the issues: a record each of these stored used to break later reads.
SPECIFIC: dict[str, list[dict[str, Any]]] = {
    "tasks.create": [
        {"name": "hostile tags", "type": "training", "tags": [1]},
        {"name": "hostile hp", "type": "training", "hyperparams": {"properties": 5}},
        {"name": "hostile hp2", "type": "training", "hyperparams": {"Args": {"lr": "0.1"}}},
        {"name": "hostile cfg", "type": "training", "configuration": {"c": 7}},
        {"name": "hostile exec", "type": "training", "execution": {"artifacts": "none"}},
        {"name": "hostile models", "type": "training", "models": {"input": 5}},
        {"name": "hostile script", "type": "training", "script": {"requirements": 5}},
        {"name": "hostile\x00nul", "type": "training"},
        {"name": "\ud800 surrogate", "type": "training"},
        {"name": "x" * 100_000, "type": "training"},
        {"name": "hostile type", "type": "training", "container": {"image": 5}},
        {"name": "hostile deep", "type": "training", "runtime": _nested_dict(300)},
    ],
    "tasks.edit": [
        {"task": "{task}", "execution": {"queue": 5}},
        {"task": "{task}", "execution": {"parameters": [1]}},
        {"task": "{task}", "output": {"destination": 5}},
        {"task": "{task}", "models": {"output": [{"model": 5}]}},
        {"task": "{task}", "script": {"diff": 5, "entry_point": []}},
        {"task": "{task}", "configuration": {"c": {"value": 5}}},
        {"task": "{task}", "hyperparams": {"Args": {"lr": {"value": 5}}}},
        {"task": "{task}", "container": {"image": ["x"]}},
        {"task": "{task}", "runtime": {"k": _nested_list(300)}},
    ],
    "tasks.update": [
        {"task": "{task}", "tags": [1]},
        {"task": "{task}", "system_tags": [None]},
        {"task": "{task}", "status_message": 5},
        {"task": "{task}", "comment": "\x00" * 100},
    ],
    "tasks.edit_hyper_params": [
        {"task": "{task}", "hyperparams": [{"section": "properties", "name": "n", "value": 5}]},
        {"task": "{task}", "hyperparams": [{"section": 5, "name": "n", "value": "v"}]},
        {
            "task": "{task}",
            "hyperparams": [
                {"section": "Args", "name": "n", "value": "v", "type": _nested_dict(300)}
            ],
        },
        {"task": "{task}", "hyperparams": [5]},
    ],
    "events.add_batch": [
        {"task": "{task}", "type": "log", "msg": _nested_dict(300)},
        {"task": "{task}", "type": "log", "msg": "\x00 nul \ud800"},
        {"task": "{task}", "type": "log", "msg": 5, "level": []},
        {
            "task": "{task}",
            "type": "training_stats_scalar",
            "metric": 5,
            "variant": [],
            "value": "NaN",
            "iter": 2**70,
        },
        {
            "task": "{task}",
            "type": "training_stats_scalar",
            "metric": "m",
            "variant": "v",
            "value": 1e308,
            "iter": -(2**63),
        },
        {
            "task": "{task}",
            "type": "plot",
            "metric": "m",
            "variant": "v",
            "iter": 1,
            "plot_str": 5,
        },
        {
            "task": "{task}",
            "type": "training_debug_image",
            "metric": "m",
            "variant": "v",
            "iter": 1,
            "url": 5,
        },
        {"task": "{task}", "type": 5},
        {"task": 5, "type": "log"},
        {"task": "{task}", "type": "log", "timestamp": "yesterday"},
    ],
    "tasks.add_or_update_artifacts": [
        {
            "task": "{task}",
            "force": True,
            "artifacts": [{"key": "k", "type": "t", "type_data": {"x": _nested_list(300)}}],
        },
        {
            "task": "{task}",
            "force": True,
            "artifacts": [{"key": "k", "type": "t", "display_data": [[1, 2]]}],
        },
    ],
    "models.add_or_update_metadata": [
        {"model": "{model}", "metadata": [{"key": 5, "type": "t", "value": "v"}]},
        {"model": "{model}", "metadata": {"k": 5}},
    ],
    "workers.status_report": [
        {"worker": "hostile:w", "machine_stats": _nested_dict(300)},
        {"worker": "hostile:w", "machine_stats": {"cpu_usage": "high"}, "timestamp": "now"},
    ],
    "workers.set_runtime_properties": [
        {
            "worker": "hostile:w",
            "runtime_properties": [{"key": "k", "value": _nested_dict(300), "expiry": 1e308}],
        },
    ],
    "projects.update": [{"project": "{project}", "system_tags": [5]}],
    "queues.update": [{"queue": "{queue}", "tags": [5]}],
}

#: The fields the self-checking endpoints read, to put hostile values in.
SELF_CHECKED_FIELDS: dict[str, tuple[str, ...]] = {
    "tasks.create": ("name", "type", "tags", "hyperparams", "configuration", "script",
                     "execution", "container", "runtime", "output", "models", "output_dest",
                     "project", "parent", "comment", "system_tags"),
    "tasks.edit": ("task", "force", "name", "tags", "hyperparams", "configuration", "script",
                   "execution", "container", "runtime", "output", "models", "output_dest"),
    "projects.update": ("project", "name", "description", "tags", "system_tags",
                        "default_output_destination"),
    "workers.get_all": ("last_seen",),
}  # fmt: skip
_GET_ALL_FIELDS = ("id", "name", "tags", "system_tags", "only_fields", "order_by", "page",
                   "page_size", "search_hidden", "_all_", "_any_", "project", "status")  # fmt: skip

#: Endpoints that delete what later cases use: run last.
DESTRUCTIVE = ("tasks.delete", "queues.delete", "models.delete", "workers.unregister")


def endpoint_fields(endpoint: str) -> tuple[str, ...]:
    """The fields hostile values go into for ``endpoint``."""
    known = ACCEPTED[endpoint]
    if known != SELF_CHECKED:
        return known
    return SELF_CHECKED_FIELDS.get(endpoint, _GET_ALL_FIELDS)


@dataclass
class Ids:
    """Valid ids the payloads refer to (``{task}`` etc. in :data:`SPECIFIC`)."""

    task: str
    model: str
    queue: str
    project: str
    worker: str = "hostile:worker"

    def valid_body(self, endpoint: str) -> dict[str, Any]:
        base = {"task": self.task, "model": self.model, "queue": self.queue,
                "project": self.project, "worker": self.worker, "tasks": [self.task],
                "ids": [self.model], "name": f"hostile {uuid.uuid4().hex[:8]}",
                "type": "training"}  # fmt: skip
        if endpoint == "tasks.add_or_update_model":
            base["type"] = "input"
        return {k: v for k, v in base.items() if k in endpoint_fields(endpoint)}

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.format(task=self.task, model=self.model, queue=self.queue,
                                project=self.project) if "{" in value else value  # fmt: skip
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value


def _encode(body: Any) -> bytes:
    """JSON as a client may send it: lone surrogates stay ``\\udXXX`` escapes."""
    return json.dumps(body, ensure_ascii=True).encode()


def corpus(ids: Ids, *, sample: int | None = None, seed: int = 14) -> Iterator[tuple[str, bytes]]:
    """``(endpoint, raw body)`` pairs: every accepted field of every endpoint with each
    hostile value (``sample``: that many values per field, chosen with ``seed``), an unknown
    field, the raw bodies, then :data:`SPECIFIC`; destructive endpoints last."""
    rng = random.Random(seed)
    endpoints = sorted(ACCEPTED, key=lambda e: (e in DESTRUCTIVE, e))
    for endpoint in endpoints:
        valid = ids.valid_body(endpoint)
        yield endpoint, _encode({**valid, "hostile_unknown_field": 1})
        for body in SPECIFIC.get(endpoint, []):
            yield endpoint, _encode(ids.fill(body))
        for raw in RAW_BODIES if sample is None else rng.sample(RAW_BODIES, min(sample, 4)):
            yield endpoint, raw
        for name in endpoint_fields(endpoint):
            values = HOSTILE_VALUES if sample is None else rng.sample(HOSTILE_VALUES, sample)
            for value in values:
                yield endpoint, _encode({**valid, name: value})


@dataclass
class CorpusResult:
    """What :func:`run_corpus` saw."""

    sent: int = 0
    accepted: int = 0  # 2xx
    refused: int = 0  # 4xx with an envelope
    server_errors: int = 0  # 5xx
    bad_envelopes: int = 0  # no ClearML envelope, or meta.result_code != HTTP status
    reads: int = 0
    failed_reads: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.bad_envelopes or self.failed_reads)


class _Client:
    def __init__(self, url: str, key: str, secret: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        reply = self.http.get(f"{self.url}/auth.login", auth=(key, secret), timeout=timeout)
        reply.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {reply.json()['data']['token']}"

    def raw(self, endpoint: str, data: bytes, method: str = "POST") -> requests.Response:
        return self.http.request(
            method, f"{self.url}/{endpoint}", data=data, timeout=self.timeout,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip

    def send(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.raw(endpoint, _encode(body))
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()["data"]
        return data


def envelope_problem(reply: requests.Response) -> str | None:
    """Why ``reply`` is no proper ClearML envelope (None when it is one)."""
    try:
        meta = reply.json()["meta"]
    except (ValueError, KeyError, TypeError):
        return f"no JSON envelope: {reply.text[:120]!r}"
    if not isinstance(meta, dict) or meta.get("result_code") != reply.status_code:
        return f"meta.result_code != {reply.status_code}"
    if not isinstance(meta.get("result_subcode"), int) or not isinstance(
        meta.get("result_msg"), str
    ):
        return "meta without result_subcode/result_msg"
    return None


def _fixtures(client: _Client) -> Ids:
    tag = uuid.uuid4().hex[:8]
    project = client.send("projects.create", {"name": f"hostile project {tag}"})["id"]
    task = client.send("tasks.create", {"name": f"hostile task {tag}", "type": "training",
                                        "project": project})["id"]  # fmt: skip
    model = client.send("models.create", {"name": f"hostile model {tag}", "task": task})["id"]
    queue = client.send("queues.create", {"name": f"hostile queue {tag}"})["id"]
    return Ids(task=task, model=model, queue=queue, project=project)


def _reads(client: _Client) -> Iterator[tuple[str, dict[str, Any]]]:
    everything = {"search_hidden": True, "only_fields": ["id"]}
    tasks = client.send("tasks.get_all", everything)["tasks"]
    for name in ("queues.get_all", "models.get_all", "workers.get_all"):
        yield name, {}
    yield "projects.get_all", {"include_stats": True, "search_hidden": True}
    yield "tasks.get_all", {"search_hidden": True, "order_by": ["-last_update", "name"]}
    yield "tasks.get_all", {"tags": ["a", "-b"], "system_tags": ["-archived"]}
    yield "models.get_all", {"tags": ["a", "-b"], "order_by": ["name"]}
    # filters that look into every stored record, whatever shape it holds (CI once met a 500
    # from a name filter over a task whose name is a number)
    yield "tasks.get_all_ex", {"name": "planted|hostile", "search_hidden": True}
    yield "tasks.get_all", {"name": "^a", "tags": ["__$all", "a", "__$not", "b"]}
    yield "tasks.get_all", {"system_tags": ["__$not", "archived"], "order_by": ["name"]}
    yield "tasks.get_all", {"status": ["__$not", "published"], "type": ["__$not", "annotation"]}
    yield "tasks.get_all", {"user": ["__$all", "x"], "parent": ["__$not", "y"]}
    yield "projects.get_all", {"name": "a", "tags": ["-x"]}
    yield "models.get_all", {"name": "a", "system_tags": ["__$not", "archived"]}
    yield "queues.get_all", {"name": "a", "tags": ["-x"]}
    for task in (t["id"] for t in tasks):
        yield "tasks.get_by_id", {"task": task}
        yield (
            "tasks.get_all",
            {"id": [task], "tags": ["-x"], "_any_": {"fields": ["name"], "pattern": "."}},
        )
        yield "tasks.get_hyper_params", {"tasks": [task]}
        yield "events.get_task_log", {"task": task}
        yield "events.get_task_events", {"task": task}
        yield "events.scalar_metrics_iter_histogram", {"task": task}
        yield "events.get_task_plots", {"task": task}
        yield "events.get_task_single_value_metrics", {"tasks": [task]}
        yield "events.debug_images", {"metrics": [{"task": task}]}


def run_corpus(
    url: str,
    access_key: str,
    secret_key: str,
    *,
    sample: int | None = None,
    seed: int = 14,
    timeout: float = 60.0,
    keep_failures: int = 50,
) -> CorpusResult:
    """Send the corpus to the server at ``url`` (as ``access_key``/``secret_key``), then read
    back every stored task; count what came back. ``sample`` limits the hostile values per
    field (the short form), ``seed`` makes the choice repeatable."""
    client = _Client(url, access_key, secret_key, timeout)
    result = CorpusResult()

    def note(kind: str, endpoint: str, reply: requests.Response, body: bytes) -> None:
        if len(result.failures) < keep_failures:
            result.failures.append(
                f"{kind} {endpoint} {reply.status_code} {body[:160]!r} -> {reply.text[:300]}"
            )

    for endpoint, body in corpus(_fixtures(client), sample=sample, seed=seed):
        reply = client.raw(endpoint, body)
        result.sent += 1
        problem = envelope_problem(reply)
        if reply.status_code >= 500:
            result.server_errors += 1
            note("5xx", endpoint, reply, body)
        elif problem is not None:
            result.bad_envelopes += 1
            note(problem, endpoint, reply, body)
        elif reply.status_code < 300:
            result.accepted += 1
        else:
            result.refused += 1
    _read_back(client, result, note)
    return result


def read_everything(url: str, access_key: str, secret_key: str, *, timeout: float = 60.0,
                    keep_failures: int = 50) -> CorpusResult:  # fmt: skip
    """Only the read-back of :func:`run_corpus`: every read endpoint for every stored task
    (for records that reached the database some other way: an older server, a database edit)."""
    client = _Client(url, access_key, secret_key, timeout)
    result = CorpusResult()

    def note(kind: str, endpoint: str, reply: requests.Response, body: bytes) -> None:
        if len(result.failures) < keep_failures:
            result.failures.append(f"{kind} {endpoint} {reply.status_code} {body[:160]!r} -> "
                                   f"{reply.text[:300]}")  # fmt: skip

    _read_back(client, result, note)
    return result


def _read_back(client: _Client, result: CorpusResult, note: Any) -> None:
    for endpoint, read in _reads(client):
        reply = client.raw(endpoint, _encode(read))
        result.reads += 1
        if reply.status_code != 200:
            result.failed_reads += 1
            note("read", endpoint, reply, _encode(read))
