"""``lil-eval``: run a sweep, then regenerate the published results from its records.

    lil-eval sweep --model MODEL --data-dir DATA --datasets gsm8k:200,math500:200,aime24,aime25 \\
        --policies full,sink,h2o,quest,infllm --budgets 64,128,256,512 --max-new-tokens 1024 \\
        --device cuda --out runs/lil/records.jsonl.gz
    lil-eval report runs/lil/records.jsonl.gz --out docs/results

A sweep too long for one sitting runs in slices: the same sweep command with ``--resume`` and a
``--stop-after-seconds`` (or ``--max-problems``) per slice, until it runs nothing (docs/eval.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from eval.conditions import build_conditions
from eval.datasets import DatasetSelection, resolve_data_dir
from eval.guardian_replay import DEFAULT_BASE_INTERVAL, GuardianSetting


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, but not an unset one (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run problems x conditions and save one JSONL record per sample",
        formatter_class=_HelpFormatter,  # --datasets' default is the whole study
    )
    p.add_argument(
        "--model",
        required=True,
        help="model folder, .gguf file or known name (with --server: tokenizer only)",
    )
    p.add_argument("--data-dir", help="folder with <set>.jsonl files (default: $LIL_DATA_DIR)")
    p.add_argument("--datasets", default="gsm8k:200,math500:200,aime24,aime25", help="NAME[:FIRST_N],...")
    p.add_argument("--policies", default="full,sink,h2o,quest,infllm")
    p.add_argument(
        "--budgets", default="64,128,256,512", help="KV tokens attended per step, for sparse policies"
    )
    p.add_argument(
        "--guardian-online",
        default="",
        help="INTERVAL:THRESHOLD,... extra full-attention runs with Guardian on",
    )
    p.add_argument(
        "--guardian-answer",
        default="",
        help="INTERVAL:THRESHOLD,... full-attention runs where a Guardian stop forces a short answer",
    )
    p.add_argument("--answer-max-tokens", type=int, default=32, help="tokens of a forced answer")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "flashinfer"))
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--kv-cache-tokens", type=int, default=0, help="0: sized for max-batch-size full requests")
    p.add_argument("--server", help="ADDR of a running sidecar: send the sweep over gRPC instead")
    p.add_argument("--concurrency", type=int, default=64, help="streams in flight with --server")
    p.add_argument("--grade-workers", type=int, default=0, help="processes for math-verify (0: inline)")
    p.add_argument(
        "--base-interval", type=int, default=DEFAULT_BASE_INTERVAL, help="trajectory step in tokens"
    )
    p.add_argument("--save-token-ids", action="store_true", help="also store output token ids in the records")
    p.add_argument(
        "--stop-after-seconds",
        type=float,
        default=0.0,
        help="admit no new problem after this many seconds; admitted problems always finish under every "
        "condition, so leave room for them (0: no limit)",
    )
    p.add_argument(
        "--max-problems",
        type=int,
        default=0,
        help="admit at most this many problems not yet recorded, then stop (0: no limit)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --out if it exists: check its meta matches these settings, keep its records "
        "(dropping one cut by a kill) and run only the missing problem x condition pairs",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out afresh if it already holds records (without --resume or --overwrite an "
        "existing file is refused)",
    )
    p.add_argument("--out", required=True, help="records file (.jsonl or .jsonl.gz)")


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write lil.md and the PNGs (tables and figures) from saved records",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("records", nargs="+", help="records files written by `lil-eval sweep`")
    p.add_argument(
        "--out", required=True, help="folder for lil.md and the PNGs (the published study: docs/results)"
    )
    p.add_argument("--guardian", default="250:20", help="INTERVAL:THRESHOLD used in the per-dataset tables")
    p.add_argument(
        "--guardian-grid", default="25,50,100,250:5,10,20,40", help="INTERVALS:THRESHOLDS for the curve"
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument(
        "--grade-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for math-verify (0: inline; 4, or the cores if fewer)",
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    from eval.sweep import SweepConfig, run_sweep

    budgets = tuple(int(b) for b in _csv(args.budgets))
    online = tuple(GuardianSetting.parse(s) for s in _csv(args.guardian_online))
    answer = tuple(GuardianSetting.parse(s) for s in _csv(args.guardian_answer))
    config = SweepConfig(
        model=args.model,
        data_dir=resolve_data_dir(args.data_dir),
        datasets=tuple(DatasetSelection.parse(s) for s in _csv(args.datasets)),
        conditions=tuple(
            build_conditions(tuple(_csv(args.policies)), budgets, online, answer, args.answer_max_tokens)
        ),
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        backend=args.backend,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        kv_cache_tokens=args.kv_cache_tokens,
        server=args.server,
        concurrency=args.concurrency,
        grade_workers=args.grade_workers,
        base_interval=args.base_interval,
        save_token_ids=args.save_token_ids,
        stop_after_seconds=args.stop_after_seconds,
        resume=args.resume,
        overwrite=args.overwrite,
        max_problems=args.max_problems,
        command="lil-eval " + shlex.join(sys.argv[1:]),
    )
    records = run_sweep(config, Path(args.out))
    correct = sum(bool(r.correct) for r in records)
    print(f"{args.out} holds {len(records)} records ({correct} correct)")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from eval.report import ReportConfig, write_report

    intervals, _, thresholds = args.guardian_grid.partition(":")
    config = ReportConfig(
        guardian=GuardianSetting.parse(args.guardian),
        grid_intervals=tuple(int(v) for v in _csv(intervals)),
        grid_thresholds=tuple(int(v) for v in _csv(thresholds)),
        bootstrap=args.bootstrap,
        grade_workers=args.grade_workers,
        command="lil-eval " + shlex.join(sys.argv[1:]),
    )
    path = write_report([Path(p) for p in args.records], Path(args.out), config)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lil-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_sweep(subparsers)
    _add_report(subparsers)
    args = parser.parse_args(argv)
    try:
        return run_sweep_command(args) if args.command == "sweep" else run_report_command(args)
    except ValueError as error:
        print(f"lil-eval: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
