"""GPU time of one sampling step of the engine's sampler (``Sampler.sample``) on the vocabulary
of the 1.5B shape (151,936 logits per row), three ways:

- *noise tensor, sort*: the Gumbel noise as a ``[B, V]`` tensor and top-k / top-p by the sort of
  :func:`~lil_sparse.sampling.sampler.filter_top_k_top_p` (``Sampler(noise_in_argmax=False,
  threshold_filter=False)``, the reference);
- *noise in argmax, sort*: the noise made inside the argmax kernel
  (:func:`lil_sparse.kernels.row_argmax.gumbel_argmax`), the same sort
  (``Sampler(threshold_filter=False)``);
- *noise in argmax, thresholds*: the default ``Sampler()``, whose top-k / top-p are FlashInfer's
  threshold kernels (:func:`lil_sparse.sampling.nucleus.filter_by_thresholds`).

and the filter alone, on the temperature-scaled logits: the sort against the thresholds (only
in cases that filter). The all-greedy batch is there for scale. Each figure is the median of
``--iters`` calls timed by CUDA events around the call (the sampler makes no host sync), after
warm-up. In the same run the three samplers' tokens are compared ("same tokens"), and the two
filters' kept sets ("kept tokens differing": tokens of the batch that one filter keeps and the
other drops; on these random logits a nucleus of thousands of tokens of ~1e-5 may end a token
apart where its sum lies within float32 rounding of top-p: see tests/gpu/test_nucleus_gpu.py).
Needs FlashInfer.

    python bench/sampler_micro.py [--batches 1,8,64] [--out FILE]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from bench.common import cuda_ms, write_markdown
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import SamplingParams
from lil_sparse.sampling.nucleus import FLASHINFER_AVAILABLE, filter_by_thresholds, flashinfer_kernels
from lil_sparse.sampling.sampler import MIN_TEMPERATURE, Sampler, filter_top_k_top_p

VOCAB = 151_936
CASES = {
    "greedy": SamplingOptions(),
    "temperature 0.6": SamplingOptions(temperature=0.6, seed=1),
    "temperature 0.6, top-p 0.95": SamplingOptions(temperature=0.6, top_p=0.95, seed=1),
    "temperature 1.0, top-p 0.9": SamplingOptions(temperature=1.0, top_p=0.9, seed=1),
    "temperature 0.6, top-k 20, top-p 0.95": SamplingOptions(temperature=0.6, top_k=20, top_p=0.95, seed=1),
    "temperature 0.8, top-k 40, top-p 0.95": SamplingOptions(temperature=0.8, top_k=40, top_p=0.95, seed=1),
}
HEADER = [
    "batch",
    "sampling",
    "noise tensor, sort us",
    "noise in argmax, sort us",
    "noise in argmax, thresholds us (default)",
    "sort filter us",
    "threshold filter us",
    "filter ratio",
    "same tokens",
    "kept tokens differing",
]


def filter_columns(logits: torch.Tensor, params: SamplingParams, iters: int) -> list[object]:
    """Sort and threshold filter alone on ``logits / temperature``: their times, the ratio, and
    how many tokens of the batch one keeps and the other does not; dashes where the case does
    not filter."""
    if not params.filtering:
        return ["-", "-", "-", "-"]
    scaled = logits / params.temperature.clamp(min=MIN_TEMPERATURE).unsqueeze(1)
    kernels = flashinfer_kernels()

    def sort() -> torch.Tensor:
        return filter_top_k_top_p(scaled, params.top_k, params.top_p, params.max_top_k)

    def thresholds() -> torch.Tensor:
        return filter_by_thresholds(scaled, params.top_k, params.top_p, kernels)

    sort_ms, threshold_ms = cuda_ms(sort, iters=iters), cuda_ms(thresholds, iters=iters)
    differ = int(((sort() > float("-inf")) != (thresholds() > float("-inf"))).sum())
    return [f"{sort_ms * 1e3:.1f}", f"{threshold_ms * 1e3:.1f}", f"{sort_ms / threshold_ms:.2f}", differ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not FLASHINFER_AVAILABLE:
        raise SystemExit("sampler_micro: needs FlashInfer (the threshold filter's kernels)")
    samplers = (
        Sampler(noise_in_argmax=False, threshold_filter=False),
        Sampler(threshold_filter=False),
        Sampler(),
    )
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(batch)).cuda() * 3
        positions = torch.arange(batch, device="cuda") + 1000
        for name, options in CASES.items():
            params = SamplingParams.from_options([options] * batch, device="cuda")
            times = [
                cuda_ms(partial(sampler.sample, logits, params, positions), iters=args.iters)
                for sampler in samplers
            ]
            tokens = [sampler.sample(logits, params, positions)[0] for sampler in samplers]
            same_tokens = all(torch.equal(tokens[0], other) for other in tokens[1:])
            sort_us, threshold_us, ratio, kept_differ = filter_columns(logits, params, args.iters)
            row = [batch, name, *(f"{t * 1e3:.1f}" for t in times), sort_us, threshold_us, ratio]
            row += [same_tokens, kept_differ]
            rows.append(row)
            print(" | ".join(str(c) for c in row), flush=True)
    if args.out:
        write_markdown(
            args.out,
            "Sampler: noise tensor or noise in the argmax; top-k / top-p by sort or by thresholds",
            [
                f"vocabulary {VOCAB} (the 1.5B shape), float32 logits N(0, 3^2)",
                f"medians of {args.iters} calls (CUDA events)",
                "filter columns: the filter alone on the temperature-scaled logits",
            ],
            HEADER,
            rows,
        )


if __name__ == "__main__":
    main()
