"""Token sampling: greedy and seeded temperature / top-k / top-p sampling, batch invariant."""

from lil_sparse.sampling.noise import gumbel_noise, uniform_noise
from lil_sparse.sampling.params import SamplingParams, with_request_seed
from lil_sparse.sampling.sampler import MIN_TEMPERATURE, Sampler, filter_top_k_top_p, host_record

__all__ = [
    "MIN_TEMPERATURE",
    "Sampler",
    "SamplingParams",
    "filter_top_k_top_p",
    "gumbel_noise",
    "host_record",
    "uniform_noise",
    "with_request_seed",
]
