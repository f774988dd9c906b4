"""Per-request options: sampling, stopping, sparse attention and Guardian.

Every option object is a frozen dataclass that validates itself in ``__post_init__`` and raises
``ValueError`` naming the offending field, so a bad request fails before it touches the engine.
The server maps these errors to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal


@dataclass(frozen=True, slots=True)
class PolicyFields:
    """Which :class:`SparseOptions` fields a policy reads: options validate by these flags, never
    by comparing policy names. The same flags are class attributes of each policy
    (:class:`lil_sparse.policies.base.SelectionPolicy`); the registry
    (:mod:`lil_sparse.policies.registry`) refuses to import if the two disagree. Kept here because
    this module must not import the policies (they import it, and torch)."""

    uses_budget: bool  # False: attends every held page whatever the budget (full)
    reads_sink_tokens: bool = False  # the leading sink window (sink, InfLLM)
    reads_recent_tokens: bool = False  # the trailing recent window (H2O, InfLLM)
    has_dense_layers: bool = False  # leading layers attend densely (Quest)


POLICY_FIELDS: Mapping[str, PolicyFields] = MappingProxyType(
    {
        "full": PolicyFields(uses_budget=False),
        "sink": PolicyFields(uses_budget=True, reads_sink_tokens=True),
        "h2o": PolicyFields(uses_budget=True, reads_recent_tokens=True),
        "quest": PolicyFields(uses_budget=True, has_dense_layers=True),
        "infllm": PolicyFields(uses_budget=True, reads_sink_tokens=True, reads_recent_tokens=True),
    }
)
POLICY_NAMES: tuple[str, ...] = tuple(POLICY_FIELDS)
GuardianMode = Literal["full", "incremental"]
GuardianSource = Literal["text", "token_ids"]
GuardianAction = Literal["truncate", "answer"]

# Ranges come from the dtypes the engine packs each value into: token counts, positions and page
# counts travel as int32 (FlashInfer's page tables, the proto's int32 fields), seeds as int64
# (the sampler's noise hash), temperature and top_p as float32 (the sampler's batch table).
INT32_MAX = 2**31 - 1
SEED_LIMIT = 2**63
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: below it a value flushes to 0


def _pages(count: int) -> str:
    """``1 page``, ``3 pages``: a page count for a message."""
    return f"{count} page" if count == 1 else f"{count} pages"


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def _require_int(value: object, field_name: str, low: int, high: int, hint: str = "") -> None:
    """``value`` must be an ``int`` (not a bool) in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field_name}: must be an integer, got {value!r}")
    _require(value >= low, field_name, f"must be >= {low}{hint}, got {value}")
    _require(value <= high, field_name, f"must be <= {high}{hint}, got {value}")


def _require_float(value: object, field_name: str) -> float:
    """``value`` must be a finite real number (bool refused); returns it as a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{field_name}: must be a number, got {value!r}")
    number = float(value)
    _require(math.isfinite(number), field_name, f"must be finite, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How the next token is drawn.

    ``temperature == 0`` is greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters.
    ``seed`` makes sampling reproducible: the same request and seed give the same tokens alone
    or inside any batch (the noise is a function of seed and position, not of batch order).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        temperature = _require_float(self.temperature, "temperature")
        _require(temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _require(
            temperature <= FLOAT32_MAX,
            "temperature",
            f"must be <= {FLOAT32_MAX:.4g} (it is used as a float32), got {self.temperature}",
        )
        _require_int(self.top_k, "top_k", 0, INT32_MAX, " (0 disables)")
        top_p = _require_float(self.top_p, "top_p")
        _require(0.0 < top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _require(
            top_p >= FLOAT32_TINY,
            "top_p",
            f"must be at least {FLOAT32_TINY:.4g} (it is used as a float32), got {self.top_p}",
        )
        if self.seed is not None:
            seed = self.seed
            integer = isinstance(seed, int) and not isinstance(seed, bool)
            _require(integer, "seed", f"must be an integer, got {seed!r}")
            _require(0 <= seed < SEED_LIMIT, "seed", f"must be in [0, 2^63) (int64), got {seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class StoppingOptions:
    """When generation ends (besides Guardian and aborts)."""

    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _require_int(self.max_new_tokens, "max_new_tokens", 1, INT32_MAX)
        _require(
            isinstance(self.stop_strings, tuple),
            "stop_strings",
            f"must be a tuple, got {self.stop_strings!r}",
        )
        _require(isinstance(self.ignore_eos, bool), "ignore_eos", f"must be a bool, got {self.ignore_eos!r}")
        _require(
            all(isinstance(s, str) and s for s in self.stop_strings),
            "stop_strings",
            "every stop string must be a non-empty string",
        )


@dataclass(frozen=True, slots=True)
class SparseOptions:
    """Which KV pages a decode step attends.

    ``budget_tokens`` is the number of KV tokens attended per decode step, rounded down to whole
    pages (see :meth:`budget_pages`); the newest, possibly partial, page is always one of them.
    ``full`` ignores the budget and the other sparse fields, but a value invalid in itself is refused
    whatever the policy (a budget below one page, a negative count), so a mistake never passes
    silently. ``sink_tokens`` and ``recent_tokens`` are rounded up to whole
    pages by the policies that use them; ``recent_tokens == 0`` sizes the window automatically.
    ``dense_layers`` leading layers attend densely under Quest (as in the Quest paper); eviction
    policies evict for all layers at once.
    """

    policy: str = "full"
    budget_tokens: int = 512
    sink_tokens: int = 4
    recent_tokens: int = 0  # 0: automatic, see recent_pages()
    dense_layers: int = 2

    def __post_init__(self) -> None:
        _require(
            self.policy in POLICY_NAMES,
            "policy",
            f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}",
        )
        # The smallest budget is one page, which only the engine's geometry knows:
        # budget_pages() refuses every budget below it, 0 and negatives included, with one message.
        _require_int(self.budget_tokens, "budget_tokens", -INT32_MAX - 1, INT32_MAX)
        _require_int(self.sink_tokens, "sink_tokens", 0, INT32_MAX)
        _require_int(self.recent_tokens, "recent_tokens", 0, INT32_MAX, " (0: automatic)")
        _require_int(self.dense_layers, "dense_layers", 0, INT32_MAX)

    def budget_pages(self, page_size: int) -> int:
        """Pages attended per step (the newest page included).

        Raises ``ValueError`` for a budget below one page (0 and negatives included), for every
        policy (``full`` ignores the budget, but a budget that no policy could use is a mistake):
        ``budget_tokens: must be >= 16 (one page of 16 tokens), got 8``.
        """
        _require(
            self.budget_tokens >= page_size,
            "budget_tokens",
            f"must be >= {page_size} (one page of {page_size} tokens), got {self.budget_tokens}",
        )
        return self.budget_tokens // page_size

    def sink_pages(self, page_size: int) -> int:
        """Sink tokens rounded up to whole pages."""
        return -(-self.sink_tokens // page_size)

    def recent_pages(self, page_size: int) -> int:
        """Recent-window pages, the newest page included.

        ``recent_tokens == 0`` means automatic: half of the budget (H2O's even split between
        recent tokens and heavy hitters), after the sink pages for a policy that keeps both
        windows (InfLLM), at least one page.
        """
        if self.recent_tokens > 0:
            return -(-self.recent_tokens // page_size)
        budget = self.budget_pages(page_size)
        fields = POLICY_FIELDS[self.policy]
        both_windows = fields.reads_sink_tokens and fields.reads_recent_tokens  # (InfLLM)
        sink = self.sink_pages(page_size) if both_windows else 0
        return max(1, (budget - sink) // 2)

    def validate_for(self, page_size: int, num_layers: int) -> None:
        """Checks that need the engine's geometry; raises ``ValueError`` naming the field.

        The sink and recent windows are checked against the budget only for the policies that use
        them, and the message says which field to change (the user may have set only the budget).
        """
        budget = self.budget_pages(page_size)
        fields = POLICY_FIELDS[self.policy]
        if not fields.uses_budget:
            return
        if fields.reads_sink_tokens:
            needed = (self.sink_pages(page_size) + 1) * page_size
            _require(
                needed <= budget * page_size,
                "budget_tokens",
                f"{self.budget_tokens} ({_pages(budget)} of {page_size} tokens) leaves no room for the "
                f"{self.sink_tokens} sink tokens ({_pages(self.sink_pages(page_size))}) plus the newest "
                f"page; raise budget_tokens to at least {needed} or lower sink_tokens",
            )
        if fields.reads_recent_tokens:
            forced = self.recent_pages(page_size) + (
                self.sink_pages(page_size) if fields.reads_sink_tokens else 0
            )
            _require(
                forced <= budget,
                "recent_tokens",
                f"{self.recent_tokens} recent tokens do not fit the budget of {_pages(budget)}; "
                "lower recent_tokens (0: automatic) or raise budget_tokens",
            )
        if fields.has_dense_layers:
            _require(
                self.dense_layers < num_layers,
                "dense_layers",
                f"must be below the model's {num_layers} layers for {self.policy} (with {self.dense_layers} "
                "dense layers no layer would select pages; use policy 'full'), "
                f"got {self.dense_layers}",
            )


@dataclass(frozen=True, slots=True)
class GuardianOptions:
    """Guardian early stop (Lil, arXiv 2601.03043).

    Every ``interval_tokens`` generated tokens the sequence so far (prompt plus output) is
    compressed; when the compressed size grew by less than ``threshold_bytes`` since the previous
    check, generation stops with finish reason ``early_stop``. ``mode="full"`` recompresses
    everything with zlib (the paper); ``"incremental"`` feeds only the new bytes to a streaming
    compressor and finishes a copy of it, which gives exactly full mode's sizes at a cost set by
    the new bytes. ``source`` picks UTF-8 text or the token ids as bytes. ``shadow=True`` runs
    every check and records where Guardian would have stopped (``GuardianReport.stop_step``)
    without stopping: the request ends as if Guardian were off (it applies only when enabled).
    ``action`` says what a stop does: ``"truncate"`` ends the request there (the paper);
    ``"answer"`` appends an answer prompt (closing an open thinking block), lets the model decode
    at most ``answer_max_tokens`` more, then ends with ``early_stop``
    (see :mod:`lil_sparse.guardian.answer`); such a request waits for each check's verdict
    before decoding on, so the answer starts exactly at the check that said stop.
    """

    enabled: bool = False
    interval_tokens: int = 250
    threshold_bytes: int = 20
    mode: GuardianMode = "full"
    source: GuardianSource = "text"
    shadow: bool = False
    action: GuardianAction = "truncate"
    answer_max_tokens: int = 32

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "enabled", f"must be a bool, got {self.enabled!r}")
        _require_int(
            self.interval_tokens, "interval_tokens", 1, INT32_MAX, " (a threshold needs an interval)"
        )
        _require_int(self.threshold_bytes, "threshold_bytes", 0, INT32_MAX)
        _require(
            self.mode in ("full", "incremental"),
            "mode",
            f"must be 'full' or 'incremental', got {self.mode!r}",
        )
        _require(
            self.source in ("text", "token_ids"),
            "source",
            f"must be 'text' or 'token_ids', got {self.source!r}",
        )
        _require(isinstance(self.shadow, bool), "shadow", f"must be true or false, got {self.shadow!r}")
        _require(
            self.action in ("truncate", "answer"),
            "action",
            f"must be 'truncate' or 'answer', got {self.action!r}",
        )
        _require(
            self.answer_max_tokens >= 1, "answer_max_tokens", f"must be >= 1, got {self.answer_max_tokens}"
        )


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Everything a caller may choose per request."""

    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stopping: StoppingOptions = field(default_factory=StoppingOptions)
    sparse: SparseOptions = field(default_factory=SparseOptions)
    guardian: GuardianOptions = field(default_factory=GuardianOptions)
