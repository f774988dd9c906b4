"""Reading a records file a killed sweep left, and writing records whole problems at a time."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest

from eval.completion import Completion, Job
from eval.records import (
    GuardianOnline,
    SampleRecord,
    read_records,
    read_records_for_resume,
    replace_records,
    write_records,
)
from eval.sweep_writer import PrefixWriter


def record(position: int, policy: str = "full") -> SampleRecord:
    return SampleRecord(
        dataset="gsm8k",
        problem_id=f"gsm8k-{position}",
        model="m",
        device="cpu",
        backend="reference",
        policy=policy,
        budget_tokens=0 if policy == "full" else 32,
        max_new_tokens=8,
        prompt_tokens=3,
        output_tokens=2,
        output_text=f"answer {position} ünïcode",
        gold="1",
        finish_reason="length",
        ttft_seconds=0.1,
        decode_seconds=0.1,
        jct_seconds=0.2,
        queue_seconds=0.0,
        mean_attended_pages=1.0,
        peak_kv_pages=2,
        problem_position=position,
    )


RECORDS = [record(p, policy) for p in range(3) for policy in ("full", "quest")]


def test_a_torn_last_line_is_dropped_and_the_file_rewritten_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_records(path, RECORDS[:4])
    with path.open("a", encoding="utf-8") as out:
        out.write(RECORDS[4].to_json()[:57])  # killed mid-write
    recovered = read_records_for_resume(path)
    assert recovered.records == RECORDS[:4]
    assert recovered.torn.startswith("line 5 (57 bytes) is cut short") and recovered.needs_rewrite
    replace_records(path, recovered.records)
    write_records(path, RECORDS[4:], append=True)
    assert list(read_records(path)) == RECORDS
    assert not read_records_for_resume(path).torn and not read_records_for_resume(path).needs_rewrite


def test_a_last_record_without_its_newline_is_kept_but_the_file_needs_rewriting(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in RECORDS[:2]) + RECORDS[2].to_json())
    recovered = read_records_for_resume(path)
    assert recovered.records == RECORDS[:3] and recovered.torn == "" and recovered.needs_rewrite


def test_anything_else_corrupt_is_refused_naming_the_line(tmp_path: Path) -> None:
    lines = [r.to_json() for r in RECORDS[:3]]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:2: "):
        read_records_for_resume(path)
    path.write_text("\n".join([lines[0], lines[1][:30], lines[2][:30]]))  # two torn lines
    with pytest.raises(ValueError, match=r"r\.jsonl:2: "):
        read_records_for_resume(path)
    path.write_text("\n".join([lines[0], '{"dataset": "gsm8k"}']) + "\n")  # parses, but no record
    with pytest.raises(ValueError, match=r"r\.jsonl:2: "):
        read_records_for_resume(path)


def test_a_gzip_file_cut_anywhere_gives_the_whole_lines_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    member_ends = [0]
    for start in range(0, len(RECORDS), 2):  # one gzip member per append, as a sweep writes them
        write_records(path, RECORDS[start : start + 2], append=True)
        member_ends.append(path.stat().st_size)
    whole = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    intact, counts = [], []
    for size in range(len(whole) + 1):
        cut.write_bytes(whole[:size])
        recovered = read_records_for_resume(cut)
        assert recovered.records == RECORDS[: len(recovered.records)]
        assert recovered.needs_rewrite == bool(recovered.torn)
        if not recovered.torn:
            intact.append(size)
        counts.append(len(recovered.records))
    assert intact == member_ends  # anywhere else the cut is seen and the file must be rewritten
    assert [counts[end] for end in member_ends] == [0, 2, 4, 6]
    # More records the longer the file, one line at a time: no whole line before the cut is lost.
    assert counts == sorted(counts) and set(counts) == set(range(len(RECORDS) + 1))


def test_corrupt_gzip_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    write_records(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt gzip data"):
        read_records_for_resume(path)
    path.write_bytes(gzip.compress(b"") + b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt gzip data"):
        read_records_for_resume(path)


def completion(key: int, finish_reason: str = "length") -> Completion:
    return Completion(
        key, 3, (1, 2), f"out {key}", finish_reason, 0.1, 0.2, 0.3, 0.0, 1.0, 2, GuardianOnline()
    )


def test_the_writer_appends_whole_problems_in_job_order(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_records(path, [])
    # Problem 1 was recorded before (a resumed sweep): its keys 2 and 3 are not jobs.
    jobs = [Job(key, (1,), key // 2) for key in (0, 1, 4, 5, 6, 7)]

    def build(completions: list[Completion]) -> list[SampleRecord]:
        return [
            replace(RECORDS[0], output_text=c.output_text, problem_position=c.key // 2) for c in completions
        ]

    writer = PrefixWriter(path, jobs, build)
    written = []
    for key in (4, 1, 5, 7, 0, 6):
        writer.add(completion(key))
        written.append([r.output_text for r in read_records(path)])
    assert written == [
        [],
        [],
        [],
        [],
        ["out 0", "out 1", "out 4", "out 5"],  # problems 0 and 2 complete; 3 waits for key 6
        ["out 0", "out 1", "out 4", "out 5", "out 6", "out 7"],
    ]
    assert writer.unwritten == [] and [c.key for c in writer.completions] == [0, 1, 4, 5, 6, 7]


def test_the_writer_refuses_to_write_an_aborted_problem(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    jobs = [Job(key, (1,), key // 2) for key in range(4)]
    writer = PrefixWriter(path, jobs, lambda cs: [RECORDS[0] for _ in cs])
    writer.add(completion(0))
    writer.add(completion(1))
    writer.add(completion(3))
    with pytest.raises(RuntimeError, match=r"problems \[1\] were aborted"):
        writer.add(completion(2, "aborted"))
    assert len(list(read_records(path))) == 2
