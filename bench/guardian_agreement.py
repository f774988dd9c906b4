"""How often Guardian's full and incremental modes agree, and what a check costs.

Sequences are built from the math datasets in /work/shared/data (problem as prompt, worked
solutions as the output), half of them with a synthetic degenerate continuation (the last few
sentences repeated) so that Guardian has loops to catch. Each (interval, threshold) setting is
replayed in both modes. Only aggregate numbers are printed; no dataset text leaves this script.

    python bench/guardian_agreement.py [--data /work/shared/data] [--sequences 200] [--json out.json]

Tokens are approximated by a cl100k-style pre-tokenizer split (a word with its leading space, up
to three digits, or a run of punctuation): about 2.1 to 2.9 bytes per token on these solutions.
BPE only splits pre-tokens further, so a real tokenizer's interval of N tokens holds at most as
much text as N of these.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lil_sparse.events import GuardianReport
from lil_sparse.guardian import ZLIB_LEVEL, StreamCompressedSize, replay
from lil_sparse.options import GuardianMode, GuardianOptions

TOKEN_PATTERN = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+")
INTERVALS = (50, 100, 250)
THRESHOLDS = (10, 20, 40)


@dataclass(frozen=True)
class Sample:
    prompt: str
    tokens: list[str]  # output tokens; "".join gives the output text
    loop_start: int | None  # token index where the repetition begins, None for clean text


def tokenize(text: str) -> list[str]:
    tokens = TOKEN_PATTERN.findall(text)
    if "".join(tokens) != text:
        raise ValueError("tokenize: the pattern must cover the text")
    return tokens


def load_records(data: Path) -> list[dict[str, str]]:
    """The first 200 problems with solutions of MATH-500 and GSM8K (the paper's subsets),
    followed by the rest, which pad long outputs."""
    head: list[dict[str, str]] = []
    tail: list[dict[str, str]] = []
    for name in ("math500.jsonl", "gsm8k.jsonl"):
        rows = [json.loads(line) for line in (data / name).read_text().splitlines() if line.strip()]
        rows = [row for row in rows if row.get("solution")]
        head += rows[:200]
        tail += rows[200:]
    return head + tail


def build_samples(records: list[dict[str, str]], count: int, seed: int = 0) -> list[Sample]:
    """``count`` clean samples and ``count`` looped ones (same bases, cut and looped)."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for index in range(count):
        target_tokens = rng.randint(1000, 3000)
        tokens: list[str] = []
        cursor = index
        while len(tokens) < target_tokens:  # a long, varied "reasoning trace"
            tokens += tokenize(records[cursor % len(records)]["solution"] + "\n\n")
            cursor += rng.randint(1, 50)
        tokens = tokens[:target_tokens]
        prompt = records[index]["problem"]
        samples.append(Sample(prompt, tokens, None))
        cut = rng.randint(300, target_tokens)
        base = "".join(tokens[:cut])
        sentences = re.split(r"(?<=[.!?\n])\s*", base.strip())
        period = [s for s in sentences if s][-rng.randint(1, 4) :]
        loop_text = " " + " ".join(period)
        loop_tokens = tokenize(loop_text) or [" ."]
        looped = tokens[:cut]
        while len(looped) < cut + 1000:
            looped += loop_tokens
        samples.append(Sample(prompt, looped, cut))
    return samples


def sequence_function(sample: Sample) -> Callable[[int], bytes]:
    return lambda k: (sample.prompt + "".join(sample.tokens[:k])).encode()


def trajectory(sample: Sample, options: GuardianOptions) -> GuardianReport:
    """Every due check over the whole sample (not ending at the first stop), so the sizes of
    both modes can be compared check by check."""
    return replay(options, sequence_function(sample), len(sample.tokens), stop_at_first=False)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rate(values: list[bool]) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


def agreement(samples: list[Sample], interval: int, threshold: int) -> dict[str, float]:
    reports: dict[GuardianMode, list[GuardianReport]] = {}
    for mode in ("full", "incremental"):
        options = GuardianOptions(
            enabled=True, interval_tokens=interval, threshold_bytes=threshold, mode=mode
        )
        reports[mode] = [trajectory(sample, options) for sample in samples]
    steps = {mode: [report.stop_step for report in reports[mode]] for mode in reports}
    size_pairs = [
        (full_check.compressed_bytes, incremental_check.compressed_bytes)
        for full_report, incremental_report in zip(reports["full"], reports["incremental"], strict=True)
        for full_check, incremental_check in zip(full_report.checks, incremental_report.checks, strict=True)
    ]
    pairs = list(zip(steps["full"], steps["incremental"], samples, strict=True))
    both = [(f, i) for f, i, _ in pairs if f is not None and i is not None]
    clean = [(f, i) for f, i, s in pairs if s.loop_start is None]
    looped = [(f, i, s.loop_start) for f, i, s in pairs if s.loop_start is not None]

    def delay(step: int | None, start: int) -> float | None:
        return None if step is None or step < start else float(step - start)

    full_delays = [d for f, _, start in looped if (d := delay(f, start)) is not None]
    incremental_delays = [d for _, i, start in looped if (d := delay(i, start)) is not None]
    return {
        "interval": interval,
        "threshold": threshold,
        "checks": len(size_pairs),
        "size_equal_pct": rate([f == i for f, i in size_pairs]),
        "decision_agree_pct": rate([(f is None) == (i is None) for f, i, _ in pairs]),
        "same_step_pct": rate([f == i for f, i in both]),
        "incremental_later_pct": rate([i > f for f, i in both]),
        "clean_stop_full_pct": rate([f is not None for f, _ in clean]),
        "clean_stop_incremental_pct": rate([i is not None for _, i in clean]),
        "loop_caught_full_pct": rate([f is not None and f >= s for f, _, s in looped]),
        "loop_caught_incremental_pct": rate([i is not None and i >= s for _, i, s in looped]),
        "median_delay_full": median(full_delays),
        "median_delay_incremental": median(incremental_delays),
    }


def check_cost(
    samples: list[Sample], tokens: int, interval: int = 250, repeats: int = 30
) -> dict[str, float]:
    """CPU microseconds (``time.thread_time``, median) of one check after ``tokens`` tokens.

    Full mode compresses everything. Incremental mode (exact) feeds the last ``interval`` tokens
    to a stream compressor that has seen the rest, then finishes a copy of it. For comparison,
    the previous incremental mode fed the same bytes and ended with a sync flush.
    """
    text_tokens = [t for s in samples if s.loop_start is None for t in s.tokens]
    text = "".join(text_tokens[:tokens]).encode()
    before = "".join(text_tokens[: tokens - interval]).encode()
    full, incremental, sync_flush = [], [], []
    for _ in range(repeats):
        started = time.thread_time()
        zlib.compress(text, ZLIB_LEVEL)
        full.append(time.thread_time() - started)
        stream = StreamCompressedSize()
        stream(before)
        started = time.thread_time()
        stream(text)
        incremental.append(time.thread_time() - started)
        compressor = zlib.compressobj(ZLIB_LEVEL)
        compressor.compress(before)
        compressor.flush(zlib.Z_SYNC_FLUSH)
        started = time.thread_time()
        compressor.compress(text[len(before) :])
        compressor.flush(zlib.Z_SYNC_FLUSH)
        sync_flush.append(time.thread_time() - started)
    return {
        "tokens": tokens,
        "bytes": len(text),
        "full_us": 1e6 * statistics.median(full),
        "incremental_us": 1e6 * statistics.median(incremental),
        "sync_flush_us": 1e6 * statistics.median(sync_flush),
    }


def markdown(rows: list[dict[str, float]], costs: list[dict[str, float]]) -> str:
    lines = [
        "| interval | threshold | checks | sizes equal % | decision agree % | same step % | incr. later % "
        "| clean stops full / incr. % | loops caught full / incr. % "
        "| median delay full / incr. (tokens) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['interval']} | {r['threshold']} | {r['checks']:,} | {r['size_equal_pct']:.1f} "
            f"| {r['decision_agree_pct']:.1f} "
            f"| {r['same_step_pct']:.1f} | {r['incremental_later_pct']:.1f} "
            f"| {r['clean_stop_full_pct']:.1f} / "
            f"{r['clean_stop_incremental_pct']:.1f} | {r['loop_caught_full_pct']:.1f} / "
            f"{r['loop_caught_incremental_pct']:.1f} | {r['median_delay_full']:.0f} / "
            f"{r['median_delay_incremental']:.0f} |"
        )
    lines += [
        "",
        "| tokens so far | bytes | full check (µs) | incremental check (µs) | old sync-flush check (µs) |",
        "|---|---|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c['tokens']:,} | {c['bytes']:,} | {c['full_us']:.0f} | {c['incremental_us']:.0f} "
            f"| {c['sync_flush_us']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--sequences", type=int, default=200, help="clean sequences (as many looped ones)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    samples = build_samples(load_records(args.data), args.sequences)
    rows = [agreement(samples, interval, threshold) for interval in INTERVALS for threshold in THRESHOLDS]
    costs = [check_cost(samples, tokens) for tokens in (1000, 4000, 16000, 64000)]
    print(markdown(rows, costs))
    if args.json:
        args.json.write_text(json.dumps({"agreement": rows, "check_cost": costs}, indent=2))


if __name__ == "__main__":
    main()
