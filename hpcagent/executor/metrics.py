"""Machine and GPU monitoring while the task runs.

Every ``interval`` seconds the monitor samples the node and the task's process tree with psutil
and the GPUs the job may use with NVML (pynvml), then:

* sends ``workers.status_report`` with ``machine_stats`` in the keys ClearML's agent uses
  (clearml-api.md §2a.6: ``cpu_usage[]``, ``memory_used``/``memory_free`` MB, ``disk_free_home`` %,
  ``disk_read``/``disk_write``/``network_rx``/``network_tx`` MB/s, ``gpu_*[]``);
* reports task scalars (``training_stats_scalar``) under metric ``:monitor:machine`` and
  ``:monitor:gpu`` as the ClearML SDK's resource monitor does, with the elapsed seconds as
  iteration, so the web UI and ``events.scalar_metrics_iter_histogram`` show them.

GPU selection honours ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-…`` UUIDs). Without NVML there
are no GPU series and a single info line; that is not an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from hpcagent.executor.background import BackgroundThread

Reporter = Callable[[str, dict[str, Any]], Any]
Logger = Callable[[str], None]
MB = 1024.0 * 1024.0
log = logging.getLogger(__name__)


class GpuProbe:
    """NVML access for the visible GPUs; ``available`` is False when NVML cannot start."""

    def __init__(self, visible: str | None = None) -> None:
        self.available = False
        self.error = ""
        self._nvml: Any = None
        self.handles: list[tuple[int, Any]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            count = int(pynvml.nvmlDeviceGetCount())
            self.handles = self._select(pynvml, count, visible)
            self.available = True
        except Exception as exc:  # no driver, no library, no GPU: all mean "no GPU series"
            self.error = f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _select(nvml: Any, count: int, visible: str | None) -> list[tuple[int, Any]]:
        if visible is None:
            return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        handles: list[tuple[int, Any]] = []
        for pos, item in enumerate(x.strip() for x in visible.split(",") if x.strip()):
            try:
                if item.isdigit():
                    if int(item) < count:
                        handles.append((pos, nvml.nvmlDeviceGetHandleByIndex(int(item))))
                else:
                    handles.append((pos, nvml.nvmlDeviceGetHandleByUUID(item)))
            except Exception as exc:  # an invalid entry hides that device, as CUDA does
                log.debug("CUDA_VISIBLE_DEVICES entry %s skipped: %s", item, exc)
        return handles

    def sample(self) -> list[dict[str, float]]:
        """One dict per visible GPU: util %, mem used/free GB, temperature C, power W."""
        if not self.available:
            return []
        nv = self._nvml
        out: list[dict[str, float]] = []
        for _, h in self.handles:
            item: dict[str, float] = {}
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                item["utilization"] = float(util.gpu)
                item["mem_used_gb"] = float(mem.used) / 1024**3
                item["mem_free_gb"] = float(mem.free) / 1024**3
                item["mem_usage"] = 100.0 * float(mem.used) / max(1.0, float(mem.total))
                item["temperature"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            except Exception as exc:
                log.debug("GPU sample failed: %s", exc)
                continue
            with contextlib.suppress(Exception):  # power is not supported on every board
                item["power_draw_w"] = float(nv.nvmlDeviceGetPowerUsage(h)) / 1000.0
            out.append(item)
        return out


class Sampler:
    """Rates need two samples; this keeps the previous counters."""

    def __init__(
        self, root_pid: int | None = None, extra_roots: Callable[[], list[int]] | None = None
    ) -> None:
        self.root_pid = root_pid
        self.extra_roots = extra_roots
        self._t = time.monotonic()
        self._disk = psutil.disk_io_counters()
        self._net = psutil.net_io_counters()
        self._procs: dict[int, psutil.Process] = {}
        self._io: dict[int, tuple[int, int]] = {}
        psutil.cpu_percent(percpu=True)

    def _tree(self) -> list[psutil.Process]:
        """The task's processes: the child's tree plus the trees of ``extra_roots()`` (a Docker
        container's init, which is the daemon's child, not ours)."""
        if self.root_pid is None:
            return []
        roots = [self.root_pid]
        if self.extra_roots is not None:
            try:
                roots += [pid for pid in self.extra_roots() if pid not in roots]
            except Exception as exc:  # metrics are best effort; the child's tree still counts
                log.debug("container pids unavailable: %s", exc)
        procs: list[psutil.Process] = []
        for pid in roots:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        # Reuse Process objects so cpu_percent() measures since the previous sample.
        keep: dict[int, psutil.Process] = {}
        for p in procs:
            keep[p.pid] = self._procs.get(p.pid, p)
        self._procs = keep
        return list(keep.values())

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(1e-3, now - self._t)
        self._t = now
        vm = psutil.virtual_memory()
        stats: dict[str, Any] = {
            "cpu_usage": [float(x) for x in psutil.cpu_percent(percpu=True)],
            "memory_used": (vm.total - vm.available) / MB,
            "memory_free": vm.available / MB,
        }
        with contextlib.suppress(OSError):
            stats["disk_free_home"] = 100.0 - psutil.disk_usage(str(Path.home())).percent
        disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
        if disk is not None and self._disk is not None:
            stats["disk_read"] = (disk.read_bytes - self._disk.read_bytes) / MB / dt
            stats["disk_write"] = (disk.write_bytes - self._disk.write_bytes) / MB / dt
        if net is not None and self._net is not None:
            stats["network_rx"] = (net.bytes_recv - self._net.bytes_recv) / MB / dt
            stats["network_tx"] = (net.bytes_sent - self._net.bytes_sent) / MB / dt
        self._disk, self._net = disk, net
        cpu = rss = 0.0
        io_now: dict[int, tuple[int, int]] = {}
        for p in self._tree():
            try:
                cpu += p.cpu_percent()
                rss += p.memory_info().rss
                io = p.io_counters()
                io_now[p.pid] = (io.read_bytes, io.write_bytes)
            except (psutil.Error, AttributeError, OSError):
                continue
        if self.root_pid is not None:
            stats["process_cpu"] = cpu
            stats["process_memory_gb"] = rss / 1024**3
            # I/O rate of the tree: growth of each process' counters since the last sample
            # (a process that appeared meanwhile counts from zero).
            read = sum(max(0, r - self._io.get(pid, (0, 0))[0]) for pid, (r, _) in io_now.items())
            write = sum(max(0, w - self._io.get(pid, (0, 0))[1]) for pid, (_, w) in io_now.items())
            stats["process_io_read"] = read / MB / dt
            stats["process_io_write"] = write / MB / dt
        self._io = io_now
        return stats


def machine_scalars(stats: dict[str, Any]) -> dict[str, float]:
    """The ``:monitor:machine`` series (names as the ClearML SDK resource monitor)."""
    cpus = stats.get("cpu_usage") or []
    out = {
        "cpu_usage": sum(cpus) / len(cpus) if cpus else 0.0,
        "memory_used_gb": stats.get("memory_used", 0.0) / 1024.0,
        "memory_free_gb": stats.get("memory_free", 0.0) / 1024.0,
    }
    for src, dst in (
        ("disk_free_home", "disk_free_percent"),
        ("disk_read", "io_read_mbs"),
        ("disk_write", "io_write_mbs"),
        ("network_rx", "network_rx_mbs"),
        ("network_tx", "network_tx_mbs"),
        ("process_cpu", "process_cpu_usage"),
        ("process_memory_gb", "process_memory_gb"),
        ("process_io_read", "process_io_read_mbs"),
        ("process_io_write", "process_io_write_mbs"),
    ):
        if src in stats:
            out[dst] = float(stats[src])
    return out


class Monitor(BackgroundThread):
    """The reporting thread."""

    thread_name = "hpcagent-metrics"

    def __init__(
        self,
        send: Reporter,
        send_lines: Callable[[str, list[dict[str, Any]]], Any],
        *,
        task_id: str,
        worker: str,
        interval: float,
        log: Logger,
        root_pid: int | None = None,
        gpu: GpuProbe | None = None,
        extra_roots: Callable[[], list[int]] | None = None,
        first_report_s: float | None = None,
    ) -> None:
        super().__init__()
        #: Seconds before the first report (default ``min(3 s, interval)``, like the agent).
        self.first_report_s = (
            min(3.0, max(0.5, interval)) if first_report_s is None else first_report_s
        )
        self._send = send
        self._send_lines = send_lines
        self.task_id = task_id
        self.worker = worker
        self.interval = max(0.5, interval)
        self.log = log
        self.sampler = Sampler(root_pid, extra_roots)
        self.gpu = gpu if gpu is not None else GpuProbe(os.environ.get("CUDA_VISIBLE_DEVICES"))
        if not self.gpu.available:
            self.log(f"GPU monitoring off: NVML not available ({self.gpu.error or 'no GPU'})")
        self._start = time.monotonic()
        self.reports = 0

    def _loop(self) -> None:
        if self._stop.wait(self.first_report_s):  # like the agent: a first report soon
            return
        while True:
            self.report_once()
            if self._stop.wait(self.interval):
                return

    def report_once(self) -> None:
        """Sample and send one report; errors are swallowed (monitoring is best effort)."""
        stats = self.sampler.sample()
        gpus = self.gpu.sample()
        if gpus:
            stats["gpu_usage"] = [g.get("utilization", 0.0) for g in gpus]
            stats["gpu_temperature"] = [g.get("temperature", 0.0) for g in gpus]
            stats["gpu_memory_used"] = [g.get("mem_used_gb", 0.0) * 1024 for g in gpus]
            stats["gpu_memory_free"] = [g.get("mem_free_gb", 0.0) * 1024 for g in gpus]
        now_ms = int(time.time() * 1000)
        machine_stats = {k: v for k, v in stats.items() if not k.startswith("process_")}
        try:
            self._send(
                "workers.status_report",
                {
                    "worker": self.worker,
                    "task": self.task_id,
                    "timestamp": now_ms,
                    "machine_stats": machine_stats,
                },
            )
        except Exception as exc:
            log.debug("workers.status_report failed: %s", exc)
        it = int(time.monotonic() - self._start)
        events = [
            _scalar(self.task_id, now_ms, it, ":monitor:machine", k, v)
            for k, v in machine_scalars(stats).items()
        ]
        for gi, g in enumerate(gpus):
            for k, v in g.items():
                events.append(_scalar(self.task_id, now_ms, it, ":monitor:gpu", f"gpu_{gi}_{k}", v))
        try:
            self._send_lines("events.add_batch", events)
            self.reports += 1
        except Exception as exc:
            log.debug("monitor scalars failed: %s", exc)


def _scalar(task: str, ts: int, it: int, metric: str, variant: str, value: float) -> dict[str, Any]:
    return {
        "type": "training_stats_scalar",
        "task": task,
        "timestamp": ts,
        "iter": it,
        "metric": metric,
        "variant": variant,
        "value": float(value),
    }
