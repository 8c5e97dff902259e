"""GPU lists, queue demands, the GPU pool and the daemon's slot hooks.

The pool and the slots are property-tested with hypothesis: random demands, random
allocation/release orders, and a simulation of 50 random tasks over ``--gpus 0-7 --queue
quad=4 dual=2 opportunistic=1-4`` that checks after every step that no GPU has two holders,
that each task got what its queue specifies, and that a task is refused only when too few
GPUs are free.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcagent.daemon.gpus import GpuDemand, GpuPool, parse_gpus, parse_queue
from hpcagent.daemon.slots import GPU_VAR, NVIDIA_VAR, Slots
from hpcagent.errors import UsageError
from hpcagent.submitter.ledger import Ledger
from hpcagent.submitter.options import QueueRef

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", ["0"]),
        ("0,1", ["0", "1"]),
        ("0-3", ["0", "1", "2", "3"]),
        ("0-2,6", ["0", "1", "2", "6"]),
        (" 1 , 1,0", ["1", "0"]),
        ("01", ["1"]),
        ("GPU-8f3a-11", ["GPU-8f3a-11"]),
    ],
)
def test_parse_gpus(text: str, want: list[str]) -> None:
    assert parse_gpus(text) == want


@pytest.mark.parametrize("text", ["", ",", "3-1", "0;1", "a b"])
def test_parse_gpus_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_gpus(text)


@pytest.mark.parametrize(
    ("text", "name", "demand"),
    [
        ("quad=4", "quad", GpuDemand(4, 4)),
        ("opportunistic=1-4", "opportunistic", GpuDemand(1, 4)),
        ("plain", "plain", None),
        ("a=b=2", "a=b", GpuDemand(2, 2)),
    ],
)
def test_parse_queue(text: str, name: str, demand: GpuDemand | None) -> None:
    assert parse_queue(text) == (name, demand)


def test_bad_demand_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_queue("q=4-2")
    with pytest.raises(UsageError):
        GpuDemand(0, 0)


# -- the pool ---------------------------------------------------------------------------------

demands = st.builds(
    lambda lo, extra: GpuDemand(lo, max(1, lo + extra)),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=4),
)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=8),
    ops=st.lists(st.tuples(st.booleans(), demands, st.integers(0, 50)), max_size=60),
)
def test_pool_never_overallocates(size: int, ops: list[tuple[bool, GpuDemand, int]]) -> None:
    pool = GpuPool([str(i) for i in range(size)])
    wanted: dict[str, GpuDemand] = {}
    for n, (alloc, demand, pick) in enumerate(ops):
        if alloc or not pool.held:
            free_before = len(pool.free())
            assert pool.fits(demand) == (free_before >= demand.min)
            if pool.fits(demand):
                got = pool.allocate(f"t{n}", demand)
                assert len(got) == min(demand.max, free_before)
                wanted[f"t{n}"] = demand
            else:
                with pytest.raises(ValueError, match="free"):
                    pool.allocate(f"t{n}", demand)
        else:
            key = sorted(pool.held)[pick % len(pool.held)]
            held = pool.held[key]
            assert pool.release(key) == held
        # invariants: disjoint holders, every GPU accounted for exactly once, demands met
        all_held = [g for gs in pool.held.values() for g in gs]
        assert len(all_held) == len(set(all_held))
        assert sorted(all_held + pool.free(), key=int) == [str(i) for i in range(size)]
        for key, gs in pool.held.items():
            assert wanted[key].min <= len(gs) <= wanted[key].max


def test_pool_refuses_a_second_allocation_for_one_key() -> None:
    pool = GpuPool(["0", "1"])
    pool.allocate("t", GpuDemand(1, 1))
    with pytest.raises(ValueError, match="already holds"):
        pool.allocate("t", GpuDemand(1, 1))


def test_pool_save_load_keeps_holders_and_drops_conflicts(tmp_path: Path) -> None:
    pool = GpuPool([str(i) for i in range(4)])
    pool.allocate("a", GpuDemand(2, 2))
    pool.allocate("b", GpuDemand(1, 1))
    path = tmp_path / "gpus.json"
    pool.save(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = GpuPool([str(i) for i in range(4)])
    again.load(path)
    assert again.held == pool.held
    # a smaller pool after a restart: GPUs that are gone are dropped, never shared
    path.write_text('{"a": ["0", "1", "9"], "b": ["1", "2"], "c": "junk"}')
    small = GpuPool(["0", "1", "2"])
    small.load(path)
    assert small.held == {"a": ("0", "1"), "b": ("2",)}
    small.load(tmp_path / "missing.json")  # nothing to load is fine
    assert small.free() == []


# -- the daemon's slots over a real ledger ---------------------------------------------------

QUEUES = {"quad": GpuDemand(4, 4), "dual": GpuDemand(2, 2), "opportunistic": GpuDemand(1, 4)}


def _refs(template: Path) -> dict[str, QueueRef]:
    return {name: QueueRef(id=f"id-{name}", name=name, template=template) for name in QUEUES}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_dynamic_slots_pack_fifty_random_tasks(seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        refs = _refs(Path(tmp) / "t")
        slots = Slots(
            ledger,
            gpus=[str(i) for i in range(8)],
            limit=None,
            demands={refs[n].id: d for n, d in QUEUES.items()},
            state_file=Path(tmp) / "gpus.json",
        )
        pending = [rng.choice(list(QUEUES)) for _ in range(50)]
        running: dict[str, tuple[str, list[str]]] = {}
        done = 0
        n = 0
        while pending or running:
            start = pending and (not running or rng.random() < 0.6)
            if start:
                q = refs[pending[0]]
                if slots.can_start(q):
                    tid = f"task{n}"
                    n += 1
                    ledger.record_pulled(tid, q.id, q.name)
                    env = slots.task_vars(tid, q)
                    gpus = env[GPU_VAR].split(",")
                    assert env[NVIDIA_VAR] == env[GPU_VAR]
                    d = QUEUES[q.name]
                    assert d.min <= len(gpus) <= d.max
                    running[tid] = (q.name, gpus)
                    pending.pop(0)
                else:
                    # refused only when the queue's minimum is not free
                    in_use = sum(len(g) for _, g in running.values())
                    assert 8 - in_use < QUEUES[q.name].min
                    start = False
            if not start and running:
                tid = rng.choice(sorted(running))
                del running[tid]
                ledger.mark_finished(tid, "completed")
                done += 1
            held = [g for _, gs in running.values() for g in gs]
            assert len(held) == len(set(held)) <= 8
        assert done == 50
        assert slots.can_start(refs["quad"])  # syncs: every GPU is back
        assert slots.pool is not None
        assert slots.pool.held == {}
        ledger.close()


def test_static_slots_limit_and_gpu_values(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    q = QueueRef(id="qid", name="q", template=tmp_path / "t")
    one = Slots(ledger, gpus=["0", "1"], limit=1)
    assert one.can_start(q)
    ledger.record_pulled("t1", q.id, q.name)
    assert one.task_vars("t1", q) == {GPU_VAR: "0,1", NVIDIA_VAR: "0,1"}
    assert not one.can_start(q)  # one task at a time without services mode
    ledger.mark_finished("t1", "completed")
    assert one.can_start(q)
    assert Slots(ledger, gpus=[], limit=1).task_vars("t2", q) == {GPU_VAR: "", NVIDIA_VAR: "none"}
    assert Slots(ledger, gpus=None, limit=1).task_vars("t3", q) == {}
    for i in range(3):
        ledger.record_pulled(f"s{i}", q.id, q.name)
    assert not Slots(ledger, gpus=[], limit=3).can_start(q)
    assert Slots(ledger, gpus=[], limit=4).can_start(q)
    assert Slots(ledger, gpus=[], limit=None).can_start(q)
    ledger.close()


def test_dynamic_slots_restart_keeps_gpus_of_live_tasks(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    q = QueueRef(id="qid", name="quad", template=tmp_path / "t")
    state = tmp_path / "gpus.json"
    demands = {"qid": GpuDemand(4, 4)}
    first = Slots(ledger, gpus=[str(i) for i in range(8)], limit=None, demands=demands,
                  state_file=state)  # fmt: skip
    ledger.record_pulled("a", q.id, q.name)
    first.task_vars("a", q)
    ledger.record_pulled("b", q.id, q.name)
    first.task_vars("b", q)
    ledger.mark_finished("b", "completed")
    second = Slots(ledger, gpus=[str(i) for i in range(8)], limit=None, demands=demands,
                   state_file=state)  # fmt: skip
    assert second.pool is not None
    assert second.pool.held == {"a": ("0", "1", "2", "3")}
    assert second.can_start(q)
    ledger.record_pulled("c", q.id, q.name)
    assert second.task_vars("c", q)[GPU_VAR] == "4,5,6,7"
    assert not second.can_start(q)
    ledger.close()
