"""lil-eval: reproduce the Lil study (answer length, accuracy, JCT per policy and budget, and
Guardian's savings) on real models, and regenerate ``docs/results/`` from the saved records.

    lil-eval sweep --model MODEL --data-dir DATA --out runs/lil/records.jsonl.gz ...
    lil-eval report runs/lil/records.jsonl.gz --out docs/results

The harness talks to the engine in-process (or to a running sidecar with ``--server``); it never
reaches into the engine's internals beyond its public API.
"""
