"""The selection gate's device constants from a ``bench/decode_e2e.py --selection exact`` run.

For each selecting run (quest, infllm) and the dense run of its cell, the fixed selection latency
per selecting layer is what the step cost beyond the bytes it moved:

    latency = (TBT_sel - TBT_full - (meta_bytes - (kv_full - kv_sel)) / bandwidth) / selecting layers

``kv_*`` and ``meta_bytes`` are the run's attended K/V and selection metadata bytes (all layers),
``bandwidth`` the copy bandwidth of the same run. The cleanest estimate comes from a cell where
selection saves little (batch 1, short context). Prints one line per run and the median per
policy; put them in ``lil_sparse/engine/selection_gate.py`` (``DEFAULT_*``).

    python bench/gate_constants.py RESULTS.json [MORE.json ...]
    python bench/gate_constants.py EXACT.json --against WHEN_FASTER.json [MORE.json ...]

``--against`` prints instead a markdown table: quest and infllm speed against dense per cell in
the exact run and in the ``when_faster`` runs ("(dense)": the gate attended densely there, seen
as a floor equal to the dense run's).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.model_shapes import MODELS
from lil_sparse.options import SparseOptions
from lil_sparse.policies import get_policy

SELECTING = ("quest", "infllm")


def selecting_layers(model: str, policy: str) -> int:
    """Layers that select: quest's first ``dense_layers`` (the bench's default) attend densely."""
    dense = SparseOptions().dense_layers if get_policy(policy).has_dense_layers else 0
    return MODELS[model].num_layers - dense


def latency_us(selected: dict, dense: dict, bandwidth_gbs: float, layers: int) -> float:
    """Fixed selection latency per selecting layer in microseconds (see the module docstring)."""
    extra_bytes = selected["meta_bytes"] - (dense["kv_bytes"] - selected["kv_bytes"])
    extra_ms = selected["tbt_ms"] - dense["tbt_ms"] - extra_bytes / (bandwidth_gbs * 1e9) * 1e3
    return extra_ms * 1e3 / layers


def gate_constants(results: list[dict]) -> dict[str, float]:
    """Prints each estimate; returns the median latency (us) per policy and ``bandwidth_bytes_per_s``
    (the median copy bandwidth). Raises ``ValueError`` for a run made with ``--selection
    when_faster`` (its gated runs did not select, so they measure nothing)."""
    estimates: dict[str, list[float]] = {}
    bandwidths = []
    for result in results:
        if result.get("selection", "exact") != "exact":
            raise ValueError(f"selection: run {result.get('command')!r} with --selection exact")
        bandwidth = result["bandwidth_gbs"]
        bandwidths.append(bandwidth)
        for key, run in result["runs"].items():
            parts = key.split("|")
            if len(parts) != 5:  # a cell that did not fit, or a mixed run
                continue
            model, context, batch, policy, _ = parts
            dense = result["runs"].get(f"{model}|{context}|{batch}|full|0")
            if policy not in SELECTING or dense is None or "tbt_ms" not in run:
                continue
            value = latency_us(run, dense, bandwidth, selecting_layers(model, policy))
            estimates.setdefault(policy, []).append(value)
            print(f"{key}: {value:.1f} us per selecting layer", flush=True)
    constants = {policy: statistics.median(values) for policy, values in estimates.items()}
    if bandwidths:
        constants["bandwidth_bytes_per_s"] = statistics.median(bandwidths) * 1e9
    for name, value in constants.items():
        print(f"{name}: {value:.4g}{'' if name.startswith('bandwidth') else ' us (median)'}", flush=True)
    return constants


def comparison_table(exact: dict, gated: list[dict]) -> str:
    """Markdown rows: per (model, context, batch) cell at budget 1024, quest and infllm speed
    against dense (dense TBT / policy TBT) in ``exact`` and in the merged ``gated`` runs."""
    later = {key: run for result in gated for key, run in result["runs"].items()}
    lines = [
        "| cell (budget 1024) | quest exact | infllm exact | quest when_faster | infllm when_faster |",
        "|---|---|---|---|---|",
    ]
    cells = sorted(
        {tuple(key.split("|")[:3]) for key in exact["runs"] if key.count("|") == 4},
        key=lambda c: (c[0], int(c[1]), int(c[2])),
    )
    for model, context, batch in cells:
        figures = []
        for runs in (exact["runs"], later):
            dense = runs.get(f"{model}|{context}|{batch}|full|0")
            for policy in SELECTING:
                run = runs.get(f"{model}|{context}|{batch}|{policy}|1024")
                if not dense or not run or "tbt_ms" not in run:
                    figures.append("-")
                    continue
                gated_off = runs is later and run["floor_ms"] == dense["floor_ms"]
                figures.append(f"{dense['tbt_ms'] / run['tbt_ms']:.2f}x{' (dense)' if gated_off else ''}")
        lines.append(f"| {model}, {int(context) // 1024}k, batch {batch} | " + " | ".join(figures) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+", help="bench/decode_e2e.py JSON files")
    parser.add_argument("--against", type=Path, nargs="+", default=None, help="when_faster runs")
    args = parser.parse_args()
    if args.against:
        exact = json.loads(args.results[0].read_text())
        print(comparison_table(exact, [json.loads(path.read_text()) for path in args.against]))
        return
    gate_constants([json.loads(path.read_text()) for path in args.results])


if __name__ == "__main__":
    main()
