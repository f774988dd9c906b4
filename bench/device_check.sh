#!/usr/bin/env bash
# One device call: GPU tests (FlashInfer vs reference, CUDA graphs, real SmolLM2) and the 8B
# 32k sparse-decode targets. Expects wheels in /tmp/site and the SmolLM2 GGUF in /tmp/models
# (see ../shared/DEVICE.md for the recipe). Writes tables under $OUT.
set -u
export PYTHONPATH=/tmp/site:$PWD
export LIL_GPU_MODEL=${LIL_GPU_MODEL:-/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${OUT:-/tmp/out}
mkdir -p "$out"
sha256sum "$LIL_GPU_MODEL" | cut -c1-16
timeout "${TEST_SECONDS:-330}" python -m pytest -q -p no:cacheprovider -s ${TESTS:-tests/gpu tests/sampling} 2>&1 \
  | grep -E "passed|failed|diverged|identical|Error|assert" | tail -20
timeout "${BENCH_SECONDS:-200}" python bench/decode_e2e.py --models llama8b --contexts 32768 --batches 8 \
  --runs "${RUNS:-full:0,quest:4096,infllm:4096,h2o:4096,sink:4096}" --no-hf --steps 8 ${PROFILE:+--profile $out} --out "$out/targets_8b.md" 2>&1 | tail -12
timeout "${BENCH_SECONDS:-200}" python bench/decode_e2e.py --models qwen1.5b --contexts 4096,32768 --batches 1,8 \
  --runs "full:0,quest:1024,quest:4096" --no-hf --steps 8 --out "$out/targets_15b.md" 2>&1 | tail -12
