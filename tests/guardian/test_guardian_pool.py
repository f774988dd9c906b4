"""GuardianPool: checks on worker threads, in order per key, never blocking poll()."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from guardian_texts import seeded_prose

from lil_sparse.guardian import Guardian, GuardianPool, zlib_compressed_size
from lil_sparse.options import GuardianOptions

OPTIONS = GuardianOptions(enabled=True, interval_tokens=10)
TEXT = seeded_prose(3000).encode()


def gated(gate: threading.Event, threads: list[str]) -> Callable[[bytes], int]:
    """The production compressor, held until ``gate`` opens; records the thread it ran on."""

    def compressed_size(sequence: bytes) -> int:
        threads.append(threading.current_thread().name)
        if not gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        return zlib_compressed_size(sequence)

    return compressed_size


def test_poll_does_not_block_while_a_check_runs_on_a_worker() -> None:
    gate, threads = threading.Event(), list[str]()
    guardian = Guardian(OPTIONS, b"", compressed_size=gated(gate, threads))
    with GuardianPool[str](2) as pool:
        pool.submit("a", guardian, TEXT[:1000], 10)
        assert pool.poll() == []  # returns although the check is still held
        assert pool.pending("a") == 1
        assert pool.wait("a", timeout=0.01) is False
        gate.set()
        assert pool.wait("a", timeout=30) is True
        assert pool.pending("a") == 0
        results = pool.poll()
    assert threads[0].startswith("guardian") and threads[0] != threading.current_thread().name
    assert [(key, record.generated_tokens) for key, record in results] == [("a", 10)]
    assert results[0][1].compressed_bytes == zlib_compressed_size(TEXT[:1000])
    assert pool.poll() == []  # delivered once


def test_checks_of_one_key_run_in_submission_order() -> None:
    """Incremental Guardians raise if they see a sequence out of order; many keys on few
    workers must give exactly the inline trajectory."""
    keys = [f"request-{i}" for i in range(6)]
    incremental = GuardianOptions(enabled=True, interval_tokens=10, mode="incremental")
    trajectories: dict[int, dict[str, list[tuple[int, int]]]] = {}
    for workers in (0, 3):
        guardians = {key: Guardian(incremental, b"") for key in keys}
        seen: dict[str, list[tuple[int, int]]] = {key: [] for key in keys}
        with GuardianPool[str](workers) as pool:
            for step in range(1, 31):
                for offset, key in enumerate(keys):
                    sequence = TEXT[offset * 100 : offset * 100 + step * 300]
                    pool.submit(key, guardians[key], sequence, step * 10)
                for key, record in pool.poll():
                    seen[key].append((record.generated_tokens, record.compressed_bytes))
            for key in keys:
                assert pool.wait(key, timeout=30)
            for key, record in pool.poll():
                seen[key].append((record.generated_tokens, record.compressed_bytes))
        trajectories[workers] = seen
    assert trajectories[3] == trajectories[0]
    assert all(
        [step for step, _ in checks] == list(range(10, 301, 10)) for checks in trajectories[0].values()
    )


def test_inline_mode_runs_the_check_inside_submit() -> None:
    threads: list[str] = []
    gate = threading.Event()
    gate.set()
    guardian = Guardian(OPTIONS, b"", compressed_size=gated(gate, threads))
    pool = GuardianPool[int](0)
    pool.submit(7, guardian, TEXT[:500], 10)
    assert threads == [threading.current_thread().name]
    assert pool.pending(7) == 0
    assert [(key, record.generated_tokens) for key, record in pool.poll()] == [(7, 10)]
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(7, guardian, TEXT[:600], 20)


def test_cancel_drops_queued_and_running_checks() -> None:
    gate, threads = threading.Event(), list[str]()
    guardian = Guardian(OPTIONS, b"", compressed_size=gated(gate, threads))
    with GuardianPool[str](1) as pool:
        pool.submit("a", guardian, TEXT[:100], 10)
        pool.submit("a", guardian, TEXT[:200], 20)
        pool.cancel("a")
        assert pool.pending("a") == 0
        gate.set()
        other = Guardian(OPTIONS, b"")
        pool.submit("b", other, TEXT[:300], 10)  # runs after the cancelled check on the one worker
        assert pool.wait("b", timeout=30)
        assert [key for key, _ in pool.poll()] == ["b"]
    assert len(threads) == 1  # the queued check never ran
    assert [c.generated_tokens for c in guardian.checks] == [10]


def test_a_failing_check_comes_back_as_its_keys_result_only() -> None:
    guardian = Guardian(GuardianOptions(enabled=True, mode="incremental"), b"")
    other = Guardian(GuardianOptions(enabled=True, mode="incremental"), b"")
    with GuardianPool[str](0) as pool:
        pool.submit("a", guardian, b"abc", 10)
        pool.submit("a", guardian, b"xyz", 20)  # does not extend b"abc"
        pool.submit("b", other, b"abc", 10)
        results = pool.poll()
        assert [key for key, _ in results] == ["a", "a", "b"]
        assert [r.generated_tokens for _, r in results if not isinstance(r, Exception)] == [10, 10]
        error = results[1][1]
        assert isinstance(error, ValueError) and "extend" in str(error)
        assert pool.poll() == []
    with pytest.raises(ValueError, match="max_workers"):
        GuardianPool(-1)
