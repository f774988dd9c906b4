"""``lil-sparse generate``: stream one completion in-process and print its summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lil_sparse.config import DEFAULT_MODEL, SWITCH
from lil_sparse.options import (
    POLICY_NAMES,
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, as ``lil-client generate --help`` does; unset flags (None, off,
    empty) show none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:  # not 0: a real default
            return action.help
        return super()._get_help_string(action)


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="generate one completion in-process and print timings",
        formatter_class=_DefaultsHelpFormatter,
    )
    parser.add_argument("prompt", help="the user message (the model's chat template is applied)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder, .gguf file or known model name")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "reference", "flashinfer"),
        help="attention backend (auto: flashinfer on CUDA, reference on CPU)",
    )  # fmt: skip
    parser.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    parser.add_argument(
        "--warm-up",
        default="off",
        choices=tuple(SWITCH),
        help="run the engine's start-up warm-up first (auto: on for CUDA). Default off: one request "
        "gains nothing from it; on, the printed TTFT and TBT exclude kernel builds and graph captures",
    )
    parser.add_argument("--policy", default="full", choices=POLICY_NAMES, help="sparse policy")
    parser.add_argument("--budget", type=int, default=512, help="KV tokens attended per decode step")
    parser.add_argument("--sink-tokens", type=int, default=4, help="attention-sink tokens kept")
    parser.add_argument("--recent-tokens", type=int, default=0, help="recent tokens kept (0: automatic)")
    parser.add_argument("--dense-layers", type=int, default=2, help="leading dense layers (quest, infllm)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="maximum generated tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k filter (0: off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1: off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--guardian", action="store_true", help="enable Guardian early stop")
    parser.add_argument("--guardian-interval", type=int, default=250, help="Guardian: tokens between checks")
    parser.add_argument(
        "--guardian-threshold", type=int, default=20, help="Guardian: minimum compressed growth in bytes"
    )
    parser.add_argument(
        "--guardian-mode", default="full", choices=("full", "incremental"), help="Guardian: compression"
    )
    parser.add_argument(
        "--guardian-shadow", action="store_true", help="record where Guardian would stop, without stopping"
    )
    parser.add_argument(
        "--guardian-action", default="truncate", choices=("truncate", "answer"), help="what a stop does"
    )
    parser.add_argument("--guardian-answer-max-tokens", type=int, default=32, help="forced answer's tokens")
    parser.add_argument(
        "--torch-threads", type=int, default=0,
        help="torch CPU threads (0: $LIL_SPARSE_TORCH_THREADS, else half the cores, at most 8)",
    )  # fmt: skip
    parser.set_defaults(func=run_generate)
    return parser


def request_options(args: argparse.Namespace) -> RequestOptions:
    return RequestOptions(
        sampling=SamplingOptions(args.temperature, args.top_k, args.top_p, args.seed),
        stopping=StoppingOptions(args.max_new_tokens, tuple(args.stop)),
        sparse=SparseOptions(
            args.policy, args.budget, args.sink_tokens, args.recent_tokens, args.dense_layers
        ),
        guardian=GuardianOptions(
            args.guardian,
            args.guardian_interval,
            args.guardian_threshold,
            args.guardian_mode,
            shadow=args.guardian_shadow,
            action=args.guardian_action,
            answer_max_tokens=args.guardian_answer_max_tokens,
        ),
    )


def run_generate(args: argparse.Namespace) -> int:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from lil_sparse.loading.torch_threads import set_torch_threads

    set_torch_threads(args.torch_threads)

    try:
        options = request_options(args)
        config = EngineConfig(
            model=args.model,
            device=args.device,
            backend=args.backend,
            guardian_workers=0,
            warm_up=SWITCH[args.warm_up],
        )
    except ValueError as error:
        print(f"lil-sparse generate: {error}", file=sys.stderr)
        return 2
    engine = LLMEngine.from_config(config)
    tokenizer = engine.tokenizer
    text = (
        args.prompt if args.raw else tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    )
    try:
        request_id = engine.add_request(tokenizer.encode(text), options)
    except ValueError as error:
        print(f"lil-sparse generate: {error}", file=sys.stderr)
        return 2
    report = None
    while engine.has_unfinished():
        for event in engine.step():
            if event.request_id == request_id:
                print(event.text_delta, end="", flush=True)
                report = event.report or report
    engine.close()
    print()
    if report is None:
        return 1
    timings = report.timings
    gaps = timings.inter_token_seconds
    tbt = sum(gaps) / len(gaps) if gaps else 0.0
    guardian = report.guardian
    answer = (
        f", answered with {guardian.answer_prompt_tokens} prompt + {guardian.answer_tokens} tokens"
        if guardian.answer_started_at is not None
        else ""
    )
    verdict = (
        f"shadow: would stop at token {guardian.stop_step} ({len(guardian.checks)} checks)"
        if guardian.shadow and guardian.stop_step is not None
        else f"stopped at token {guardian.stop_step} ({len(guardian.checks)} checks)"
        if guardian.stop_step is not None
        else f"no stop ({len(guardian.checks)} checks)"
        if guardian.enabled
        else "off"
    )
    print(
        f"--\ntokens: {report.completion_tokens} (prompt {report.prompt_tokens})  "
        f"ttft: {timings.ttft_seconds * 1000:.1f} ms  tbt: {tbt * 1000:.1f} ms  "
        f"jct: {timings.jct_seconds:.2f} s\n"
        f"finish: {report.finish_reason.value}  policy: {options.sparse.policy}  "
        f"attended pages/step and KV head: {report.kv.mean_attended_pages:.1f}  "
        f"peak pages (all KV heads): {report.kv.peak_pages}\n"
        f"guardian: {verdict}{answer}",
        file=sys.stderr,
    )
    return 0
