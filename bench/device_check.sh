#!/usr/bin/env bash
# Device calls for the GPU machine, in parts that each fit one 600 s call:
#   PART=tests  the GPU test files side by side (one log, gpu-tests.log), then the prefill
#               fairness benchmark on CUDA (prefill_fairness.md); TESTS="a.py;b.py -k x" runs
#               those entries (';' between them) instead of every file, without the benchmark
#   PART=bench  every issue-11 speed target (SELECTION=when_faster, the server's CUDA default,
#               or exact) (speed-T1 .. T7), the HF generate comparison and
#               throughput, the target report (decode_targets.md plus its JSON) and the
#               unequal-rows split micro-benchmark (split_micro.md), and the one-token linear
#               layers against cuBLAS (gemv_micro.md), and the RoPE + K/V append with and without
#               the key metadata (append_micro.md), and the 2-16-row linear layers against cuBLAS
#               at 8 rows (skinny_micro.md)
#   PART=first  a fresh machine's first requests with the start-up warm-up off and on, each in a
#               process with empty kernel caches (first_request.md; about 5 minutes)
# Not in a part: `python bench/warm_up_time.py --prime 0 --out FILE` (the warm-up's time at 32k
# and 128k contexts on empty Triton caches; about 5 minutes, no model file needed).
# Expects the FlashInfer wheels installed in /tmp/site and the SmolLM2 GGUF in /tmp/models
# (../shared/DEVICE.md has the recipe). Writes under $OUT (at most 8 files come back).
# FlashInfer's JIT cache (~/.cache/flashinfer) carried from an earlier machine does not save the
# sampling module's build: unpacked before the first engine, with and without `tar -m`, the build
# still took 106-108 s (H200, 2026-12-01 18:38 and 18:43 UTC), probably because ninja compares
# the build times in its log with the freshly installed headers (not checked). A module in FlashInfer's AOT folder
# (flashinfer/data/aot/NAME/NAME.so) is loaded without ninja (flashinfer/jit/core.py,
# `JitSpec.build_and_load`), so the sampling.so of a carried .jit/flashinfer_jit.tgz (`tar -C ~
# -czf` of an H200 machine's ~/.cache/flashinfer after the build, 5.6 MB, 2026-12-01 17:14) goes
# there; if the sampler's warm-up then fails, it is removed and the module builds as before.
# On fresh machines the warm-up then took 10-14 s instead of 106-108 (2026-12-01 20:08-20:40 UTC,
# five machines).
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
aot=/tmp/site/flashinfer/data/aot/sampling
if [ -f .jit/flashinfer_jit.tgz ] && [ -d /tmp/site/flashinfer ] && [ ! -f "$aot/sampling.so" ]; then
  mkdir -p "$aot"
  tar -xzOf .jit/flashinfer_jit.tgz .cache/flashinfer/0.6.6/90a/cached_ops/sampling/sampling.so > "$aot/sampling.so"
  start=$(date +%s)
  python -c 'import torch; from lil_sparse.sampling import Sampler; Sampler().warm_up(151936, torch.device("cuda"))' \
    > /tmp/aot_check.log 2>&1 || { echo "AOT sampling.so did not load; building instead"; tail -3 /tmp/aot_check.log; rm -f "$aot/sampling.so"; }
  echo "sampler warm-up with the carried AOT sampling.so: $(( $(date +%s) - start )) s"
fi
export LIL_GPU_MODEL=${LIL_GPU_MODEL:-/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${OUT:-/tmp/out}
part=${PART:-tests}
mkdir -p "$out" /tmp/logs
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
sha256sum "$LIL_GPU_MODEL" | cut -c1-16

if [ "$part" = tests ]; then
  # FlashInfer's sampling module first, once (88 s of nvcc on a fresh machine; every engine
  # builds it at construction, and the test processes below would otherwise all wait for it).
  python -c 'import torch; from lil_sparse.sampling import Sampler; Sampler().warm_up(151936, torch.device("cuda"))'
  # Side by side: about 75 s together on the H200; one after another they took over 200 s,
  # mostly Triton and FlashInfer compiling.
  entries=()
  if [ -n "${TESTS:-}" ]; then IFS=';' read -ra entries <<< "$TESTS"; fi
  [ ${#entries[@]} -gt 0 ] || entries=(tests/gpu/test_flashinfer_engine.py tests/gpu/test_flashinfer_layer.py tests/gpu/test_real_model.py \
    tests/gpu/test_chunked_prefill_gpu.py tests/gpu/test_flashinfer_chunk_prefill.py \
    "tests/kernels/test_page_select.py tests/kernels/test_page_select_exit.py" \
    "$(ls tests/kernels/test_[a-o]*.py | tr '\n' ' ')" "$(ls tests/kernels/test_[p-z]*.py | grep -v page_select | tr '\n' ' ')" \
    tests/gpu/test_fused_selection.py tests/gpu/test_overlap_gpu.py tests/gpu/test_selection_gate_gpu.py \
    tests/gpu/test_decode_split_gpu.py tests/gpu/test_side_streams_gpu.py tests/gpu/test_h2o_step_mass_gpu.py tests/gpu/test_pdl_gpu.py \
    tests/gpu/test_capture_gc_gpu.py tests/gpu/test_gemv_rope_engine_gpu.py tests/gpu/test_nucleus_gpu.py \
    tests/gpu/test_warm_up_gpu.py tests/gpu/test_long_widths_gpu.py tests/gpu/test_group_tensors_gpu.py \
    tests/gpu/test_zero_copy_record_gpu.py)
  for t in "${entries[@]}"; do
    # An entry may name several files (tests/kernels in three groups: as one process beside the
    # others it ran past 280 s on 2026-12-01); its log is named after the first.
    log="/tmp/logs/$(basename "${t%% *}" .py).log"
    # shellcheck disable=SC2086  # split an entry into its files
    (timeout "${TEST_SECONDS:-240}" python -m pytest -q -ra -p no:cacheprovider $t > "$log" 2>&1;
     echo "rc=$?" >> "$log") &
  done
  wait
  for f in /tmp/logs/*.log; do echo "===== $f"; cat "$f"; done > "$out/gpu-tests.log"
  grep -hE "passed|failed|error|rc=" /tmp/logs/*.log
  [ -z "${TESTS:-}" ] || exit 0  # a chosen subset: no benchmark
  [ "${FAIRNESS:-1}" = 1 ] || exit 0  # FAIRNESS=0: every test file, no benchmark
  timeout 200 python bench/prefill_fairness.py --model "$LIL_GPU_MODEL" --device cuda \
    --modes chunked,chunked:512,unchunked --out "$out/prefill_fairness.md" 2>&1 | grep -vE "Warning|warn" | tail -12
fi

if [ "$part" = first ]; then
  timeout 560 python bench/first_request.py --model "$LIL_GPU_MODEL" --out "$out/first_request.md" 2>&1 \
    | grep -vE "Warning|warn"
fi

if [ "$part" = bench ]; then
  # The sampling module first, as in PART=tests: on a fresh machine its 88 s build inside the
  # engine benchmark ran that past its limit (2026-12-01 11:03), leaving T1 unmeasured.
  python -c 'import torch; from lil_sparse.sampling import Sampler; Sampler().warm_up(151936, torch.device("cuda"))'
  # Three engines per configuration (their medians' median): one engine's figure varied by
  # process and place. PDL on only (on / off pairs: docs/gpu.md); batch 64 left out for time.
  timeout 170 python bench/engine_step.py "$LIL_GPU_MODEL" --batches 1,8 --overlap both --repeats 3 \
    --json "$out/engine.json" 2>&1 \
    | grep "engine step"
  {
    timeout 150 python bench/decode_e2e.py --models qwen1.5b --contexts 4096,32768 --batches 1,8,32 --steps 20 \
      --throughput 1,32,64,128 --hf 1,32 --selection "${SELECTION:-when_faster}" --json "$out/e2e_qwen.json"
    timeout 200 python bench/decode_e2e.py --models llama8b --contexts 32768,4096 --batches 8,1,32 --steps 20 \
      --mixed 8 --selection "${SELECTION:-when_faster}" --json "$out/e2e_llama.json"
  } > /tmp/bench.log 2>&1
  grep -vE "Warning|warn" /tmp/bench.log | tail -8
  python bench/targets.py "$out"/e2e_*.json --engine "$out/engine.json" --out "$out/decode_targets.md"
  [ "${MICROS:-1}" = 1 ] || exit 0  # MICROS=0: the targets only (a call's time is 600 s)
  # One call against two for unequal rows, beside the split cost model (docs/bench/split_micro.md).
  timeout 60 python bench/split_micro.py --out "$out/split_micro.md" 2>&1 | grep -vE "Warning|warn" | tail -12
  timeout 90 python bench/gemv_micro.py --out "$out/gemv_micro.md" 2>&1 | grep -vE "Warning|warn" | tail -14
  timeout 60 python bench/append_micro.py --out "$out/append_micro.md" 2>&1 | grep -vE "Warning|warn" | tail -8
  timeout 90 python bench/skinny_micro.py --rows 8 --out "$out/skinny_micro.md" 2>&1 | grep -vE "Warning|warn" | tail -12
fi
