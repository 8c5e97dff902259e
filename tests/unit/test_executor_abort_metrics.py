"""Abort decisions, the abort watcher thread, and metrics sampling without NVML."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from hpcagent.executor.abort import AbortRequest, AbortWatcher, judge
from hpcagent.executor.metrics import GpuProbe, Monitor, Sampler, machine_scalars


def test_judge() -> None:
    assert judge("in_progress", "", 0) is None
    stop = judge("in_progress", "stopping", 0)
    assert stop is not None
    assert stop.write_status
    ext = judge("stopped", "", 0)
    assert ext is not None
    assert not ext.write_status
    assert judge("created", "", 3) is None
    assert judge("created", "", 4) is not None


def test_watcher_aborts_on_stopping_and_ignores_errors() -> None:
    answers: list[Any] = [
        ConnectionError("down"),
        {"tasks": [{"status": "in_progress", "status_message": ""}]},
        {"tasks": [{"status": "in_progress", "status_message": "stopping"}]},
    ]
    calls: list[str] = []

    def send(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        calls.append(endpoint)
        if endpoint == "tasks.ping":
            return {}
        answer = answers.pop(0) if answers else {"tasks": []}
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    got = threading.Event()
    seen: list[AbortRequest] = []

    def on_abort(req: AbortRequest) -> None:
        seen.append(req)
        got.set()

    watcher = AbortWatcher(send, "t", interval=0.05, ping_interval=0.0, on_abort=on_abort).start()
    assert got.wait(5.0)
    watcher.stop()
    assert seen[0].write_status
    assert "stopped by user" in seen[0].reason
    assert "tasks.ping" in calls


def test_sampler_reports_clearml_keys_and_process_tree() -> None:
    import os

    s = Sampler(root_pid=os.getpid())
    stats = s.sample()
    for key in ("cpu_usage", "memory_used", "memory_free", "process_memory_gb", "process_io_write"):
        assert key in stats
    assert stats["process_memory_gb"] > 0
    scalars = machine_scalars(stats)
    assert scalars["memory_used_gb"] > 0
    assert "process_memory_gb" in scalars


def _report_once(gpu: GpuProbe, log: Callable[[str], None]) -> list[tuple[str, Any]]:
    """One report of a Monitor with ``gpu``; every request it sent (endpoint, body or items)."""
    sent: list[tuple[str, Any]] = []
    mon = Monitor(
        lambda ep, body: sent.append((ep, body)),
        lambda ep, items: sent.append((ep, list(items))),
        task_id="t",
        worker="w",
        interval=1.0,
        log=log,
        gpu=gpu,
    )
    mon.report_once()
    return sent


def test_monitor_without_nvml_logs_once_and_sends_no_gpu_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like a node without NVML
    gpu = GpuProbe("0")
    assert not gpu.available
    notes: list[str] = []
    sent = _report_once(gpu, notes.append)
    assert len([n for n in notes if "NVML" in n]) == 1
    endpoints = [ep for ep, _ in sent]
    assert endpoints == ["workers.status_report", "events.add_batch"]
    status_body = sent[0][1]
    assert "cpu_usage" in status_body["machine_stats"]
    assert not any(k.startswith("gpu") for k in status_body["machine_stats"])
    events = sent[1][1]
    assert {e["metric"] for e in events} == {":monitor:machine"}
    assert all(e["type"] == "training_stats_scalar" for e in events)


class _FakeNvml:
    """Stands in for the NVML library at its seam (this machine has no GPU/driver): 4 boards."""

    NVML_TEMPERATURE_GPU = 0

    class _Util:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    class _Mem:
        def __init__(self, used: int, total: int) -> None:
            self.used, self.total, self.free = used, total, total - used

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 4

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        if not uuid.startswith("GPU-"):
            raise ValueError("bad uuid")
        return int(uuid[-1])

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return self._Util(10 * (h + 1))

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return self._Mem((h + 1) * 1024**3, 80 * 1024**3)

    def nvmlDeviceGetTemperature(self, h: int, _kind: int) -> int:
        return 40 + h

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 100_000 + h


@pytest.mark.parametrize(
    ("visible", "boards"),
    [(None, [0, 1, 2, 3]), ("2,0", [2, 0]), ("GPU-aaaa-3,7,x", [3]), ("", [])],
)
def test_gpu_selection_honours_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, boards: list[int]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    probe = GpuProbe(visible)
    assert probe.available
    assert [h for _, h in probe.handles] == boards
    samples = probe.sample()
    assert [s["utilization"] for s in samples] == [10.0 * (b + 1) for b in boards]
    assert all(s["power_draw_w"] >= 100 for s in samples)


def test_monitor_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    sent = _report_once(GpuProbe("1"), lambda _m: None)
    stats = sent[0][1]["machine_stats"]
    assert stats["gpu_usage"] == [20.0]
    assert stats["gpu_memory_used"] == [2048.0]
    gpu_events = {e["variant"]: e["value"] for e in sent[1][1] if e["metric"] == ":monitor:gpu"}
    assert gpu_events["gpu_0_utilization"] == 20.0
    assert gpu_events["gpu_0_temperature"] == 41.0
