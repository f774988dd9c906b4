"""The issue-11 speed targets from benchmark results: one ``TARGET MET|MISSED speed-Tn`` line each.

Reads the JSON files of ``bench/decode_e2e.py`` (runner steps, random-weight 1.5B and 8B
shapes) and ``bench/engine_step.py`` (``LLMEngine.step()`` on SmolLM2-135M), prints the seven
lines and writes the report (device, date, commands, bandwidth, every run with its floor);
``--readme`` also rewrites the README's block of target lines and headline figures (between
:data:`README_BEGIN` and :data:`README_END`) from the same results, so the README quotes the
report it links.

    python bench/targets.py RESULTS.json [MORE.json ...] [--engine ENGINE.json]
        [--out docs/bench/decode_targets.md] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lil_sparse.options import POLICY_FIELDS, POLICY_NAMES

SPARSE_POLICIES = tuple(p for p in POLICY_NAMES if POLICY_FIELDS[p].uses_budget)  # sink, h2o, quest, infllm
LOSS_TOLERANCE = 1.05  # speed-T6: a sparse run may be at most 5% slower than dense in its cell
README_BEGIN = "<!-- speed-targets: written by bench/targets.py --readme; do not edit -->"
README_END = "<!-- /speed-targets -->"


def line(target: str, met: bool, figure: str) -> str:
    text = f"TARGET {'MET' if met else 'MISSED'} {target} {figure}"
    print(text, flush=True)
    return text


def evaluate(runs: dict[str, dict], engine: dict | None) -> list[str]:
    """The seven target lines; a target whose measurement is missing is MISSED ("not measured")."""
    get = runs.get
    lines = []
    steps = (engine or {}).get("engine_step", [])
    # The engine's default on CUDA (overlap scheduling and PDL on) when the run has it; runs made
    # before overlap scheduling existed carry no "overlap" key (they ran serially), runs before
    # PDL no "pdl" key.
    batch1 = [r for r in steps if r["batch"] == 1 and r.get("pdl", True)]
    step = next((r for r in batch1 if r.get("overlap")), batch1[0] if batch1 else None)
    if step:
        lines.append(line("speed-T1", step["tbt_ms"] <= 1.0, f"{step['tbt_ms']:.2f} ms per token (<= 1.0)"))
    else:
        lines.append(line("speed-T1", False, "not measured"))
    for target, key, limit in (
        ("speed-T2", "qwen1.5b|4096|1|full|0", 1.5),
        ("speed-T3", "llama8b|32768|8|full|0", 1.15),
    ):
        dense = get(key)
        if dense:
            ratio = dense["tbt_ms"] / dense["floor_ms"]
            figure = f"{ratio:.2f}x floor (<= {limit}; {dense['tbt_ms']:.2f} ms)"
            lines.append(line(target, ratio <= limit, figure))
        else:
            lines.append(line(target, False, "not measured"))
    dense8 = get("llama8b|32768|8|full|0")
    quest = get("llama8b|32768|8|quest|4096")
    if dense8 and quest:
        speedup, ratio = dense8["tbt_ms"] / quest["tbt_ms"], quest["tbt_ms"] / quest["floor_ms"]
        figure = f"{speedup:.2f}x dense (>= 2.0), {ratio:.2f}x own floor (<= 1.3)"
        lines.append(line("speed-T4", speedup >= 2.0 and ratio <= 1.3, figure))
    else:
        lines.append(line("speed-T4", False, "not measured"))
    needs = {"infllm": 1.8, "h2o": 1.8, "sink": 2.0}
    found = {p: get(f"llama8b|32768|8|{p}|4096") for p in needs}
    if dense8 and all(found.values()):
        speedups = {p: dense8["tbt_ms"] / r["tbt_ms"] for p, r in found.items() if r}
        figure = ", ".join(f"{p} {s:.2f}x (>= {needs[p]})" for p, s in speedups.items())
        lines.append(line("speed-T5", all(s >= needs[p] for p, s in speedups.items()), figure))
    else:
        lines.append(line("speed-T5", False, "not measured"))
    lines.append(t6_line(runs))
    lines.append(t7_line(runs, dense8))
    return lines


def sparse_against_dense(runs: dict[str, dict]) -> list[tuple[float, str]]:
    """``(sparse TBT / dense TBT of its cell, key)`` for every sparse run whose (model, context,
    batch) cell has a dense run, in the runs' order."""
    ratios = []
    for key, result in runs.items():
        parts = key.split("|")
        if len(parts) != 5 or parts[3] not in SPARSE_POLICIES:
            continue
        dense = runs.get("|".join([*parts[:3], "full", "0"]))
        if dense is not None:
            ratios.append((result["tbt_ms"] / dense["tbt_ms"], key))
    return ratios


def t6_line(runs: dict[str, dict]) -> str:
    versus = sparse_against_dense(runs)
    if not versus:
        return line("speed-T6", False, "not measured")
    worst, worst_key = max(versus, key=lambda item: item[0])  # the first of equal ratios
    losing = sum(ratio > LOSS_TOLERANCE for ratio, _ in versus)
    figure = (
        f"{losing} of {len(versus)} sparse runs > 5% slower than dense; worst {worst:.2f}x dense time"
        f" ({worst_key})"
    )
    return line("speed-T6", losing == 0, figure)


SINGLE_POLICY_ROWS = 8  # speed-T7's single-policy steps (bench/decode_e2e.py's SINGLE_POLICY_ROWS)


def t7_ratio(
    mixed_ms: float, fixed_ms: float, fixed_single_ms: float | None, singles: list[dict], per_policy: int
) -> tuple[float, float]:
    """speed-T7's ``(mixed / expected, expected ms)``. A row's single-policy cost is its share of
    its policy's batch-8 step beyond that step's fixed cost (weights: full at 256 tokens,
    ``fixed_single_ms`` at 8 rows); the mixed step pays its own fixed cost (``fixed_ms``, at its
    batch size) once: ``expected = fixed_ms + sum_p (T_p - fixed_single_ms) * per_policy / 8``.
    ``fixed_single_ms`` None takes ``fixed_ms`` for both, as reports before 2026-12-01 02:30 UTC
    did; that assumed one fixed cost at 8 and at 30 rows, which stopped holding when batch 2-16
    got its own GEMM (docs/gpu.md)."""
    single = fixed_ms if fixed_single_ms is None else fixed_single_ms
    expected = fixed_ms + sum(r["tbt_ms"] - single for r in singles) * per_policy / SINGLE_POLICY_ROWS
    return mixed_ms / expected, expected


def t7_line(runs: dict[str, dict], dense8: dict | None) -> str:
    mixed_runs = sorted((k, r) for k, r in runs.items() if k.startswith("mixed|llama8b|32768|"))
    fitted = [(int(k.split("|")[3]), r) for k, r in mixed_runs if r.get("tbt_ms")]
    if not mixed_runs:
        return line("speed-T7", False, "not measured")
    if not fitted:
        return line("speed-T7", False, "does not fit")
    per_policy, mixed = max(fitted, key=lambda item: item[0])
    note = "" if per_policy == 8 else f"; {per_policy} per policy: 8 did not fit in memory"
    found = [
        runs.get(f"llama8b|32768|8|{p}|{4096 if POLICY_FIELDS[p].uses_budget else 0}") for p in POLICY_NAMES
    ]
    singles = [r for r in found if r]
    one_graph = mixed["graph_replays"] == mixed["steps"] and mixed["eager_steps"] == 0
    graphs = f"{mixed['graph_replays']} replays / {mixed['steps']} steps{note}"
    rows = per_policy * (1 + len(SPARSE_POLICIES))
    base = runs.get(f"mixed-base|llama8b|256|{rows}")
    if len(singles) < len(found) or base is None:
        return line("speed-T7", False, f"{mixed['tbt_ms']:.2f} ms, {graphs}; comparison runs missing")
    base8 = runs.get(f"mixed-base|llama8b|256|{SINGLE_POLICY_ROWS}")
    fixed_single = None if base8 is None else base8["tbt_ms"]
    ratio, expected = t7_ratio(mixed["tbt_ms"], base["tbt_ms"], fixed_single, singles, per_policy)
    if base8 is None:  # results from before the bench measured the 8-row fixed cost
        fixed = f"the {base['tbt_ms']:.2f} ms fixed cost"
    else:
        one = t7_ratio(mixed["tbt_ms"], base["tbt_ms"], None, singles, per_policy)[0]
        fixed = (
            f"fixed costs {base8['tbt_ms']:.2f} ms at {SINGLE_POLICY_ROWS} rows and {base['tbt_ms']:.2f} at "
            f"{rows}; {one:.2f}x with one fixed cost for both"
        )
    figure = (
        f"{mixed['tbt_ms']:.2f} ms = {ratio:.2f}x the rows' single-policy costs ({expected:.2f} ms from "
        f"the five batch-8 steps and {fixed}; <= 1.15), {graphs}"
    )
    return line("speed-T7", one_graph and ratio <= 1.15, figure)


def report(parts: list[dict], engine: dict | None, lines: list[str]) -> str:
    out = ["# Decode speed targets (issue 11)", ""]
    for part in parts:
        out += [
            f"- results file `{part.get('results_file', '?')}`:",
            f"- device: {part['device']}",
            f"- date: {part['date']}",
            f"- command: `{part['command']}`",
            f"- copy bandwidth measured in that run: {part['bandwidth_gbs']:.0f} GB/s (bytes read + written)",
            *(
                [
                    f"- host probe at the run's start: {part['host_probe_us']:.2f} us"
                    " per one-element kernel launch"
                ]
                if "host_probe_us" in part
                else []
            ),
            f"- selection: {part.get('selection', 'exact')}; timed loop: "
            + (
                "pipelined (overlap: step n+1 launched before step n's tokens reach the host)"
                if part.get("overlap")
                else "serial"
            ),
        ]
    if engine:
        when = f", {engine['device']}, {engine['date']}" if "date" in engine else ""
        command = engine.get("command", "python bench/engine_step.py")
        out.append(f"- engine step: `{command}` on {engine['model']}, CUDA graphs, greedy, full{when}")
        if "note" in engine:
            out.append(f"  ({engine['note']})")
        for r in engine["engine_step"]:
            engines = r.get("engines_tbt_ms")
            of = (
                f" (the median of {len(engines)} engines' medians: {', '.join(f'{t:.3f}' for t in engines)})"
                if engines
                else ""
            )
            probes = r.get("engines_host_probe_us")
            probe = f"; host probe {', '.join(f'{t:.2f}' for t in probes)} us per launch" if probes else ""
            out.append(
                f"  - batch {r['batch']}, overlap {'on' if r.get('overlap') else 'off'}"
                f"{'' if r.get('pdl', True) else ', PDL off'}: "
                f"{r['tbt_ms']:.3f} ms median{of} "
                f"(p90 {r['p90_ms']:.3f}) over {r['steps']} steps{probe}"
            )
    out += [
        "- TBT (runner runs): median wall time of >= 20 runner decode steps (decode + the sampler's greedy"
        " pick, argmax and its log-probability (a bare argmax before commit 6c7cfc8) + the tokens to"
        " the host (in pipelined runs since commit 6eb20c8 as in the engine's all-greedy step: the"
        " argmax's kernel writes them into pinned host memory; before, a copy); pipelined runs launch"
        " step n+1 before waiting for step n's tokens, as the engine's overlap scheduling does) after"
        " 4 warm-up steps, random-weight bf16 models, CUDA graphs on;"
        " host ms: the median time of the runner's decode call alone (host work until the step is"
        " queued on the GPU)",
        "- every process first captures and drops four trivial CUDA graphs"
        " (bench.common.settle_cuda_graphs): a process's first three graphs replay faster than later"
        " ones, so without it a run's figure depended on its position; dense baselines still run"
        " first and again last in each (model, context, batch) cell, their TBT is the mean of the two"
        " (shown as first / last)",
        "- floor: (weights + attended K/V + selection metadata: Quest bounds bf16, InfLLM key means bf16,"
        " read in every selecting layer) / the copy bandwidth of the same run",
        "",
        "## Targets",
        "",
        *(f"    {text}" for text in lines),
        "",
    ]
    hf = {k: v for part in parts for k, v in part.get("hf_ms", {}).items()}
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    if hf:
        out += ["## Against HF generate (1.5B shape, 2048 tokens, runner step vs HF's whole loop)", ""]
        for key, ms in hf.items():
            ours = runs.get(f"{key}|full|0")
            speed = f"; ours {ours['tbt_ms']:.2f} ms ({ms / ours['tbt_ms']:.1f}x)" if ours else ""
            out.append(f"- {key}: HF {ms:.2f} ms per token{speed}")
        out.append("")
    throughput = [(k, r) for k, r in runs.items() if k.startswith("qwen1.5b|2048|") and k.endswith("|full|0")]
    if throughput:
        out += ["## Throughput, 1.5B shape, 2048 tokens, full", ""]
        for key, r in throughput:
            rows = int(key.split("|")[2])
            out.append(
                f"- batch {rows}: {rows / r['tbt_ms'] * 1e3:.0f} tokens/s ({r['tbt_ms']:.2f} ms per step)"
            )
        out.append("")
    out += [
        "## Every run",
        "",
        "| model | context | batch | policy | budget | TBT ms | host ms | floor ms | TBT / floor | vs dense "
        "| replays / steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        parts_of_key = key.split("|")
        if not r.get("tbt_ms"):
            if parts_of_key[0] == "mixed":  # mixed|model|context|per_policy
                where = f"{parts_of_key[1]} | {parts_of_key[2]} | {int(parts_of_key[3]) * 5} | mixed"
            else:
                where = f"{' | '.join(parts_of_key[:3])} | all"
            out.append(f"| {where} | - | does not fit | | | | | |")
            continue
        dense: dict | None
        if parts_of_key[0] == "mixed-base":  # mixed-base|model|context|rows
            name, context, batch = parts_of_key[1:4]
            policy, budget, dense = "full (fixed cost)", "0", None
        elif parts_of_key[0] == "mixed":
            name, context, budget = parts_of_key[1], parts_of_key[2], "4096"
            batch, policy, dense = str(int(parts_of_key[3]) * 5), f"mixed ({parts_of_key[3]} each)", None
        else:
            name, context, batch, policy, budget = parts_of_key
            dense = runs.get("|".join([name, context, batch, "full", "0"]))
        versus = f"{dense['tbt_ms'] / r['tbt_ms']:.2f}" if dense else "-"
        tbt = f"{r['tbt_ms']:.2f}"
        if "tbt_ms_last" in r:  # a dense baseline run first and last in its cell: their mean
            tbt += f" ({r['tbt_ms_first']:.2f} / {r['tbt_ms_last']:.2f})"
        out.append(
            f"| {name} | {context} | {batch} | {policy} | {budget if budget != '0' else '-'} "
            f"| {tbt} | {r.get('host_ms', 0):.2f} | {r['floor_ms']:.2f} "
            f"| {r['tbt_ms'] / r['floor_ms']:.2f} | {versus} "
            f"| {r['graph_replays']} / {r['steps']} |"
        )
    return "\n".join(out) + "\n"


def run_name(key: str) -> str:
    """A run's key (``model|context|batch|policy|budget``) in words, for a table cell:
    ``qwen1.5b, 32k, batch 1, infllm@1024`` (no ``|``, which would split the cell)."""
    model, context, batch, policy, budget = key.split("|")
    tokens = int(context)
    where = f"{tokens // 1024}k" if tokens % 1024 == 0 else context
    return f"{model}, {where}, batch {batch}, {policy if budget == '0' else f'{policy}@{budget}'}"


def readme_figures(parts: list[dict], engine: dict | None) -> list[tuple[str, str]]:
    """``(case, figure)`` rows of the README's table of headline figures, each computed from the
    report's results (a row whose runs are missing is left out): the 1.5B and 8B dense steps
    against their floors, the 8B batch-8 32k sparse steps against dense, the mixed batch, the
    SmolLM2 engine step, the grid's sparse runs against dense, HF ``generate`` and throughput."""
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    rows: list[tuple[str, str]] = []
    for case, key in (
        ("1.5B shape, dense, batch 1, 4k context (runner step)", "qwen1.5b|4096|1|full|0"),
        ("8B shape, dense, batch 8, 32k context (runner step)", "llama8b|32768|8|full|0"),
    ):
        if r := runs.get(key):
            floor = r["floor_ms"]
            rows.append(
                (
                    case,
                    f"{r['tbt_ms']:.2f} ms per step, {r['tbt_ms'] / floor:.2f}x its floor ({floor:.2f} ms)",
                )
            )
    dense8 = runs.get("llama8b|32768|8|full|0")
    sparse8 = [(p, runs.get(f"llama8b|32768|8|{p}|4096")) for p in SPARSE_POLICIES]
    if dense8 and all(r for _, r in sparse8):
        names = " / ".join(f"`{p}`" for p, _ in sparse8)
        speeds = " / ".join(f"{dense8['tbt_ms'] / r['tbt_ms']:.2f}x" for _, r in sparse8 if r)
        rows.append((f"8B shape, batch 8, 32k: {names} at 4096 tokens", f"{speeds} faster than dense"))
    fitted = [
        (int(k.split("|")[3]), r) for k, r in runs.items() if k.startswith("mixed|") and r.get("tbt_ms")
    ]
    if fitted:
        per_policy, mixed = max(fitted, key=lambda item: item[0])
        rows.append(
            (
                f"8B shape, 32k: {per_policy} requests of each of the five policies in one batch",
                f"{mixed['tbt_ms']:.2f} ms per step",
            )
        )
    steps = {
        r["batch"]: r
        for r in (engine or {}).get("engine_step", [])
        if r.get("overlap") and r.get("pdl", True)
    }
    if steps:
        batches = sorted(steps)
        rows.append(
            (
                f"SmolLM2-135M, `LLMEngine.step()`, batch {' / '.join(map(str, batches))}",
                " / ".join(f"{steps[b]['tbt_ms']:.2f}" for b in batches) + " ms per token",
            )
        )
    versus = sparse_against_dense(runs)
    if versus:
        worst, key = max(versus, key=lambda item: item[0])
        faster = sum(ratio * LOSS_TOLERANCE < 1 for ratio, _ in versus)
        slower = sum(ratio > LOSS_TOLERANCE for ratio, _ in versus)
        rows.append(
            (
                f"the grid's {len(versus)} sparse runs against dense in their cell",
                f"{faster} more than 5% faster, {slower} more than 5% slower; the slowest"
                f" {worst:.2f}x dense's time ({run_name(key)})",
            )
        )
    hf = {k: v for part in parts for k, v in part.get("hf_ms", {}).items()}
    ours = [(k.split("|")[2], ms, runs.get(f"{k}|full|0")) for k, ms in hf.items()]
    if ours and all(r for _, _, r in ours):
        rows.append(
            (
                f"against HF `generate`, 1.5B shape, 2048 tokens, batch {' / '.join(b for b, _, _ in ours)}",
                " / ".join(f"{ms / r['tbt_ms']:.1f}x" for _, ms, r in ours if r)
                + " (HF's whole loop against our runner step: "
                + " / ".join(f"{ms:.1f}" for _, ms, _ in ours)
                + " ms per token)",
            )
        )
    wide = [
        (int(k.split("|")[2]), r)
        for k, r in runs.items()
        if k.startswith("qwen1.5b|2048|") and k.endswith("|full|0")
    ]
    wide = [(b, r) for b, r in sorted(wide) if b >= 64]
    if wide:
        rows.append(
            (
                f"throughput, 1.5B shape, 2048 tokens, batch {' / '.join(str(b) for b, _ in wide)}",
                " / ".join(f"{b / r['tbt_ms'] * 1e3:,.0f}" for b, r in wide) + " tokens/s",
            )
        )
    return rows


def readme_block(parts: list[dict], engine: dict | None, lines: list[str]) -> str:
    """The README's block of target lines: the report's device and time span, how many targets
    it meets, its seven lines and the table of :func:`readme_figures`, between
    :data:`README_BEGIN` and :data:`README_END`."""
    dates = {part["date"] for part in parts}
    if engine and "date" in engine:
        dates.add(engine["date"])
    first, last = min(dates), max(dates)  # "YYYY-MM-DD HH:MM UTC"
    span = first if first == last else f"{first.removesuffix(' UTC')}-{last.split(' ')[1]} UTC"
    if first[:10] != last[:10]:
        span = f"{first} to {last}"
    met = sum(text.startswith("TARGET MET") for text in lines)
    return "\n".join(
        [
            README_BEGIN,
            f"Issue 11's speed targets in the latest report ([docs/bench/decode_targets.md]"
            f"(docs/bench/decode_targets.md); {parts[0]['device']}; {span}): {met} of {len(lines)} met.",
            "",
            *(f"    {text}" for text in lines),
            "",
            "Headline figures of the same report (medians of at least 20 steps; floors: the bytes a step"
            " must read, in their real dtypes, over the copy bandwidth measured in the same run):",
            "",
            "| case | figure |",
            "|---|---|",
            *(f"| {case} | {figure} |" for case, figure in readme_figures(parts, engine)),
            README_END,
        ]
    )


def replace_readme_block(text: str, block: str) -> str:
    """``text`` (a README) with its block of target lines replaced by ``block``. Raises
    ValueError when the README has no such block (or more than one)."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ValueError(f"the README must hold one block from {README_BEGIN!r} to {README_END!r}")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return head + block + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--engine", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None, help="rewrite this README's target block")
    args = parser.parse_args()
    parts = [dict(json.loads(path.read_text()), results_file=path.name) for path in args.results]
    engine = json.loads(args.engine.read_text()) if args.engine and args.engine.is_file() else None
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    lines = evaluate(runs, engine)
    if args.out is not None:
        args.out.write_text(report(parts, engine, lines))
        print(f"wrote {args.out}")
    if args.readme is not None:
        args.readme.write_text(
            replace_readme_block(args.readme.read_text(), readme_block(parts, engine, lines))
        )
        print(f"wrote the target block of {args.readme}")


if __name__ == "__main__":
    main()
