"""Guardian's verdicts on real text, both modes, both sources."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

import pytest
from guardian_texts import CHARS_PER_TOKEN, seeded_prose, stdlib_source, text_sequence_at, with_loop

from lil_sparse.guardian import (
    ZLIB_LEVEL,
    Guardian,
    StreamCompressedSize,
    replay,
    sequence_bytes,
    zlib_compressed_size,
)
from lil_sparse.options import GuardianMode, GuardianOptions

PROMPT = "<|im_start|>user\nPlease reason step by step.<|im_end|>\n<|im_start|>assistant\n"


def options(**overrides: object) -> GuardianOptions:
    return GuardianOptions(enabled=True, **overrides)  # type: ignore[arg-type]


def test_due_on_positive_multiples_of_the_interval() -> None:
    guardian = Guardian(options(interval_tokens=50), b"")
    assert [k for k in range(0, 201) if guardian.due(k)] == [50, 100, 150, 200]


def test_full_mode_size_is_zlib_at_level_6() -> None:
    sequence = (PROMPT + seeded_prose(300)).encode()
    record = Guardian(options(), PROMPT.encode()).check(sequence, 250)
    assert ZLIB_LEVEL == 6
    assert record.compressed_bytes == len(zlib.compress(sequence, 6))
    assert record.growth_bytes is None
    assert record.stop is False  # the first check never stops
    assert record.cpu_seconds >= 0.0


def test_growth_and_stop_follow_the_threshold() -> None:
    guardian = Guardian(options(threshold_bytes=20), b"")
    first = guardian.check(b"a" * 1000, 10)
    same = guardian.check(b"a" * 1000 + b"a" * 10, 20)
    assert same.growth_bytes == same.compressed_bytes - first.compressed_bytes
    assert same.growth_bytes is not None and same.growth_bytes < 20
    assert same.stop is True
    assert guardian.stop_step == 20
    later = guardian.check(b"a" * 1010 + bytes(range(256)), 30)
    assert later.stop is False
    report = guardian.report()
    assert report.stop_step == 20  # the first stop is remembered
    assert [c.generated_tokens for c in report.checks] == [10, 20, 30]
    assert report.cpu_seconds == pytest.approx(sum(c.cpu_seconds for c in report.checks))
    assert report.enabled is True and report.applied_at_step is None


@pytest.mark.parametrize("mode", ["full", "incremental"])
@pytest.mark.parametrize("make_text", [seeded_prose, lambda _: stdlib_source()], ids=["prose", "python"])
def test_varied_text_never_stops(mode: GuardianMode, make_text: Callable[[int], str]) -> None:
    output = make_text(5000)
    num_tokens = len(output) // CHARS_PER_TOKEN
    report = replay(options(mode=mode), text_sequence_at(PROMPT, output), num_tokens, stop_at_first=False)
    assert len(report.checks) >= 10
    assert report.stop_step is None
    assert all(c.growth_bytes is None or c.growth_bytes >= 40 for c in report.checks)


@pytest.mark.parametrize("mode", ["full", "incremental"])
@pytest.mark.parametrize("interval", [50, 100, 250])
def test_repetition_stops_at_the_first_check_inside_it(mode: GuardianMode, interval: int) -> None:
    novel = seeded_prose(1500, seed=1)
    output = with_loop(novel, sentences=3, repeats=40)
    loop_start_token = -(-(len(novel) + 1) // CHARS_PER_TOKEN)
    report = replay(options(mode=mode, interval_tokens=interval), text_sequence_at(PROMPT, output), 4000)
    # The first check whose whole interval is repetition: its growth is only back-references.
    first_inside = -(-(loop_start_token + interval) // interval) * interval
    assert report.stop_step == first_inside
    assert all(not c.stop for c in report.checks[:-1])


def test_token_ids_source_stops_on_a_token_loop() -> None:
    rng = random.Random(0)
    prompt_ids = [rng.randrange(384) for _ in range(40)]
    novel = [rng.randrange(384) for _ in range(600)]
    output_ids = novel + novel[-17:] * 60  # loops over its last 17 tokens
    sequence = sequence_bytes("", "", prompt_ids, output_ids, "token_ids")
    assert sequence == struct.pack(f"<{len(prompt_ids) + len(output_ids)}I", *prompt_ids, *output_ids)

    def sequence_at(k: int) -> bytes:
        return sequence_bytes("", "", prompt_ids, output_ids[:k], "token_ids")

    for mode in ("full", "incremental"):
        report = replay(
            options(interval_tokens=100, mode=mode, source="token_ids"), sequence_at, len(output_ids)
        )
        assert report.stop_step == 700, mode  # checks at 100..600 see random ids; 700 sees 600..700


def test_sequence_bytes_text_drops_an_unfinished_character() -> None:
    assert sequence_bytes("p", "é\ufffd", [], [], "text") == "pé".encode()
    assert sequence_bytes("p", "a\ufffdb", [], [], "text") == "pa\ufffdb".encode()
    with pytest.raises(ValueError, match="token_ids"):
        sequence_bytes("", "", [-1], [], "token_ids")


def _texts() -> dict[str, str]:
    """Varied and repetitive outputs: prose, Python source, prose that loops, a one-sentence loop,
    multi-byte UTF-8, and text longer than zlib's 32 KiB window."""
    prose = seeded_prose(3000, seed=2)
    return {
        "prose": prose,
        "python": stdlib_source(),
        "prose_then_loop": with_loop(prose, sentences=2, repeats=30),
        "one_sentence_loop": with_loop(seeded_prose(200, seed=3), sentences=1, repeats=200),
        "unicode": "".join(f"Schritt {i}: Größe ≈ {i * i} µm; 答案是 {i % 7}。 " for i in range(900)),
        "long": seeded_prose(12000, seed=4) + stdlib_source(),
    }


@pytest.mark.parametrize("name", list(_texts()))
@pytest.mark.parametrize(("interval", "threshold"), [(25, 5), (50, 10), (100, 20), (250, 20), (250, 40)])
def test_incremental_sizes_equal_full_recompression_at_every_check(
    name: str, interval: int, threshold: int
) -> None:
    output = _texts()[name]
    sequence_at = text_sequence_at(PROMPT, output)
    num_tokens = len(output) // CHARS_PER_TOKEN
    full, incremental = (
        replay(
            options(interval_tokens=interval, threshold_bytes=threshold, mode=mode),
            sequence_at,
            num_tokens,
            stop_at_first=False,
        )
        for mode in ("full", "incremental")
    )
    assert len(full.checks) == num_tokens // interval
    expected = [zlib_compressed_size(sequence_at(c.generated_tokens)) for c in full.checks]
    assert [c.compressed_bytes for c in full.checks] == expected
    assert [c.compressed_bytes for c in incremental.checks] == expected
    assert [c.stop for c in incremental.checks] == [c.stop for c in full.checks]
    assert incremental.stop_step == full.stop_step
    if "loop" in name:
        assert full.stop_step is not None


def test_stream_compressed_size_is_zlib_compress_for_any_split() -> None:
    """Bytes fed in uneven pieces, including single bytes, random bytes (stored blocks) and more
    than one deflate block, still give ``len(zlib.compress(...))`` at every call."""
    rng = random.Random(5)
    text = (seeded_prose(8000, seed=6) + stdlib_source()).encode()
    data = text[:20000] + bytes(rng.randrange(256) for _ in range(40000)) + text[20000:] + text[:5000] * 20
    stream = StreamCompressedSize()
    end = 0
    sizes, expected = [], []
    while end < len(data):
        end = min(len(data), end + rng.choice([1, 3, 64, 1000, 9000, 70000]))
        sizes.append(stream(data[:end]))
        expected.append(len(zlib.compress(data[:end], 6)))
    assert len(sizes) > 20
    assert sizes == expected


def test_check_rejects_bad_sequences() -> None:
    guardian = Guardian(options(mode="incremental"), b"prompt")
    guardian.check(b"prompt and some output", 10)
    with pytest.raises(ValueError, match="generated_tokens"):
        guardian.check(b"prompt and some output!", 10)
    with pytest.raises(ValueError, match="extend"):
        guardian.check(b"prompt and other output", 20)
    with pytest.raises(ValueError, match="prompt"):
        guardian.check(b"another prompt", 30)
