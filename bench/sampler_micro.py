"""GPU time of one sampling step of the engine's sampler (``Sampler.sample``) on the vocabulary
of the 1.5B shape (151,936 logits per row): the noise as a ``[B, V]`` tensor (the default) against
the noise made inside the argmax kernel (``Sampler(noise_in_argmax=True)``,
:func:`lil_sparse.kernels.row_argmax.gumbel_argmax`), and the all-greedy batch for scale. Each
figure is the median of ``--iters`` calls timed by CUDA events around the call (the sampler makes
no host sync), after warm-up. The tokens of the two samplers are compared in the same run.

    python bench/sampler_micro.py [--batches 1,8,64] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import cuda_ms, write_markdown
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import SamplingParams
from lil_sparse.sampling.sampler import Sampler

VOCAB = 151_936
CASES = {
    "greedy": SamplingOptions(),
    "temperature 0.6": SamplingOptions(temperature=0.6, seed=1),
    "temperature 0.6, top-p 0.95": SamplingOptions(temperature=0.6, top_p=0.95, seed=1),
    "temperature 0.8, top-k 40, top-p 0.95": SamplingOptions(temperature=0.8, top_k=40, top_p=0.95, seed=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tensor_noise, kernel_noise = Sampler(), Sampler(noise_in_argmax=True)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(batch)).cuda() * 3
        positions = torch.arange(batch, device="cuda") + 1000
        for name, options in CASES.items():
            params = SamplingParams.from_options([options] * batch, device="cuda")
            times = [
                cuda_ms(
                    lambda s=sampler, p=params, x=logits, at=positions: s.sample(x, p, at), iters=args.iters
                )
                for sampler in (tensor_noise, kernel_noise)
            ]
            same = torch.equal(
                tensor_noise.sample(logits, params, positions)[0],
                kernel_noise.sample(logits, params, positions)[0],
            )
            row = [
                batch,
                name,
                f"{times[0] * 1e3:.1f}",
                f"{times[1] * 1e3:.1f}",
                f"{times[0] / times[1]:.2f}",
                same,
            ]
            rows.append(row)
            print(" | ".join(str(c) for c in row), flush=True)
    if args.out:
        write_markdown(
            args.out,
            "Sampler: the noise as a tensor against the noise inside the argmax kernel",
            [
                f"vocabulary {VOCAB} (the 1.5B shape), float32 logits",
                f"medians of {args.iters} calls (CUDA events)",
            ],
            ["batch", "sampling", "noise tensor us", "noise in the argmax us", "ratio", "same tokens"],
            rows,
        )


if __name__ == "__main__":
    main()
