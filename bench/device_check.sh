#!/usr/bin/env bash
# One device call: the GPU tests, then every issue-11 speed target (speed-T1 .. T7), the HF
# generate comparison and throughput, and the target report. Expects the FlashInfer wheels
# installed in /tmp/site and the SmolLM2 GGUF in /tmp/models (../shared/DEVICE.md has the
# recipe). Writes test logs, JSON results and decode_targets.md under $OUT (8 files).
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export LIL_GPU_MODEL=${LIL_GPU_MODEL:-/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
sha256sum "$LIL_GPU_MODEL" | cut -c1-16
# The GPU test files run side by side (about 75 s together on the H200; one after another they
# took over 200 s, mostly Triton and FlashInfer compiling), each with its own log.
for t in tests/gpu/test_flashinfer_engine.py tests/gpu/test_flashinfer_layer.py tests/gpu/test_real_model.py \
  tests/kernels; do
  (timeout "${TEST_SECONDS:-190}" python -m pytest -q -p no:cacheprovider -s "$t" > "$out/$(basename "$t" .py).log" 2>&1;
   echo "rc=$?" >> "$out/$(basename "$t" .py).log") &
done
wait
grep -hE "passed|failed|rc=|identical" "$out"/*.log
timeout 45 python bench/engine_step.py "$LIL_GPU_MODEL" --batches 1,8,64 --json "$out/engine.json" 2>&1 \
  | grep "engine step"
{
  timeout 130 python bench/decode_e2e.py --models qwen1.5b --contexts 4096,32768 --batches 1,8,32 --steps 20 \
    --throughput 1,32,64,128 --hf 1,32 --json "$out/e2e_qwen.json"
  timeout 180 python bench/decode_e2e.py --models llama8b --contexts 32768,4096 --batches 8,1,32 --steps 20 \
    --mixed 8 --json "$out/e2e_llama.json"
} > /tmp/bench.log 2>&1  # $OUT keeps 8 files: 4 test logs, 3 JSON, the report
grep -vE "Warning|warn" /tmp/bench.log | tail -8
python bench/targets.py "$out"/e2e_*.json --engine "$out/engine.json" --out "$out/decode_targets.md"
