"""Engine configuration: one validated frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "reference", "flashinfer")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MODEL = "smollm2-135m-instruct"
SELECTION_MODES = ("exact", "when_faster")  # lil_sparse/engine/selection_gate.py


SWITCH = {"auto": None, "on": True, "off": False}
"""A tri-state setting's words (server flags, Helm values, the CLI) -> the ``bool | None`` that
:class:`EngineConfig` takes for it (None: decided by the device)."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine runs.

    ``model`` is a Hugging Face folder, a ``.gguf`` file or a known model name (fetched on
    first use). ``dtype="auto"`` is float32 on CPU and bfloat16 on CUDA. ``backend="auto"``
    picks FlashInfer on CUDA when it is installed and the plain PyTorch reference otherwise.
    ``kv_cache_tokens`` sizes the page pool: it holds that many tokens for every KV head.
    ``guardian_workers`` threads run Guardian's compression beside the decode loop (0 runs it
    inline, which is deterministic); a verdict is waited for once it lags ``guardian_max_lag_steps``
    decode steps behind. ``poison_freed_pages`` is a debug mode (the tests turn it on): the keys
    of every page that no longer holds live tokens are set to NaN, so a step that attends KV
    nothing wrote produces NaN logits instead of quietly reading stale data; it costs one write
    per freed page.

    Prefill is chunked by default (``chunked_prefill``): every step gives each decoding request one
    token and spends what is left of ``max_num_batched_tokens`` on prompt chunks, so a long prompt
    never stalls the running streams for more than one chunk (Sarathi-Serve, vLLM).
    ``max_num_batched_tokens=0`` picks 512 on CPU and 2048 on CUDA; a set value must be at least
    ``max_batch_size`` so that a prefilling request always gets a token of the budget.
    ``chunked_prefill=False`` prefills whole prompts in steps of their own (before decode).

    ``selection`` says when a selecting policy (quest, infllm) selects. ``"exact"`` (the default)
    honours every budget: a request over its budget always attends only its selected pages; the
    eval study and the policy oracle tests run it. ``"when_faster"``: per step, a policy's group
    of requests over budget attends every held page (the ``full`` path, exact attention) when the
    K/V bytes its selection would save take less time than the selection itself
    (lil_sparse/engine/selection_gate.py: a fixed latency per selecting layer plus the page
    metadata it reads, against the HBM bandwidth; the constants describe a GPU). Its outputs then
    depend on the batch mates of the same policy, which decide together (GPU logits are not batch
    invariant anyway); the request's KV report records the pages really attended. Eviction
    policies (sink, h2o) are not affected: they hold only their budget.
    ``overlap_scheduling`` (None: on for CUDA with chunked prefill, off on CPU) launches decode
    step n+1 right after sampling step n, before the host handles step n's tokens (detokenizer,
    stop checks), so that host work runs while the GPU decodes (SGLang's overlap scheduler,
    vLLM's async scheduling). Outputs equal the serial engine's (lil_sparse/engine/overlap.py
    says why); Guardian requests run ahead between checks, and a step where a token could pause a
    request for a pending check, or with an answer phase, runs serially. It needs
    ``chunked_prefill`` (the unchunked scheduler skips decode in a prefill step).
    ``warm_up`` (None: on for CUDA, off on CPU) runs a few dummy requests through every policy,
    batch bucket and the chunked prefill when the engine is built
    (lil_sparse/engine/warm_up.py), so kernel builds (FlashInfer's nvcc, Triton) and CUDA graph
    captures happen before the first request, not inside it.
    """

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    dtype: str = "auto"
    backend: str = "auto"
    page_size: int = 16
    kv_cache_tokens: int = 32768
    max_batch_size: int = 16
    max_model_len: int = 0  # 0: the model's own context length
    max_waiting: int = 256
    guardian_workers: int = 2
    guardian_max_lag_steps: int = 4
    cuda_graphs: bool = True
    poison_freed_pages: bool = False
    chunked_prefill: bool = True
    max_num_batched_tokens: int = 0  # 0: 512 on CPU, 2048 on CUDA
    selection: str = "exact"  # or "when_faster": see the docstring
    overlap_scheduling: bool | None = None  # None: on for CUDA (with chunked prefill), off on CPU
    warm_up: bool | None = None  # None: on for CUDA, off on CPU

    def __post_init__(self) -> None:
        checks = [
            (bool(self.model), "model", "must name a model folder, GGUF file or known model"),
            (self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (
                self.backend in BACKENDS,
                "backend",
                f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
            ),
            (
                self.page_size in (1, 2, 4, 8, 16, 32, 64),
                "page_size",
                f"must be a power of two <= 64, got {self.page_size}",
            ),
            (
                self.kv_cache_tokens >= self.page_size,
                "kv_cache_tokens",
                f"must hold at least one page, got {self.kv_cache_tokens}",
            ),
            (self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}"),
            (
                self.max_model_len >= 0,
                "max_model_len",
                f"must be >= 0 (0: the model's), got {self.max_model_len}",
            ),
            (self.max_waiting >= 0, "max_waiting", f"must be >= 0, got {self.max_waiting}"),
            (self.guardian_workers >= 0, "guardian_workers", f"must be >= 0, got {self.guardian_workers}"),
            (
                self.guardian_max_lag_steps >= 0,
                "guardian_max_lag_steps",
                f"must be >= 0, got {self.guardian_max_lag_steps}",
            ),
            (
                self.max_num_batched_tokens == 0 or self.max_num_batched_tokens >= self.max_batch_size,
                "max_num_batched_tokens",
                f"must be 0 (auto) or >= max_batch_size ({self.max_batch_size}), "
                f"got {self.max_num_batched_tokens}",
            ),
            (
                self.selection in SELECTION_MODES,
                "selection",
                f"must be one of {', '.join(SELECTION_MODES)}, got {self.selection!r}",
            ),
            (
                self.device == "cpu" or self.device.startswith("cuda"),
                "device",
                f"must be 'cpu' or 'cuda[:N]', got {self.device!r}",
            ),
        ]
        for ok, field_name, message in checks:
            if not ok:
                raise ValueError(f"{field_name}: {message}")
        if self.overlap_scheduling is not None and not isinstance(self.overlap_scheduling, bool):
            raise ValueError(
                f"overlap_scheduling: must be True, False or None (auto), got {self.overlap_scheduling!r}"
            )
        if self.warm_up is not None and not isinstance(self.warm_up, bool):
            raise ValueError(f"warm_up: must be True, False or None (auto), got {self.warm_up!r}")
        if self.overlap_scheduling and not self.chunked_prefill:
            raise ValueError(
                "overlap_scheduling: needs chunked_prefill (unchunked prefill steps skip decode)"
            )
        if self.backend == "flashinfer" and not self.device.startswith("cuda"):
            raise ValueError("backend: 'flashinfer' needs a CUDA device")

    @property
    def warms_up(self) -> bool:
        """Whether the engine runs its start-up warm-up (``warm_up``, resolved)."""
        if self.warm_up is not None:
            return self.warm_up
        return self.device.startswith("cuda")

    @property
    def overlaps(self) -> bool:
        """Whether steps launch the next decode ahead (``overlap_scheduling``, resolved)."""
        if self.overlap_scheduling is not None:
            return self.overlap_scheduling
        return self.device.startswith("cuda") and self.chunked_prefill

    @property
    def step_token_budget(self) -> int:
        """Tokens one step may run: ``max_num_batched_tokens``, or its device default when 0."""
        if self.max_num_batched_tokens:
            return self.max_num_batched_tokens
        return 2048 if self.device.startswith("cuda") else 512
