"""What the engine tells the server about itself: static facts and live counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineInfo:
    model_name: str
    architecture: str
    max_context: int
    page_size: int
    num_layers: int
    num_kv_heads: int
    policies: tuple[str, ...]
    backend: str
    device: str
    dtype: str
    num_pages_total: int
    selection: str = "exact"  # EngineConfig.selection
    overlap_scheduling: bool = False  # EngineConfig.overlaps (resolved)
    warm_up_seconds: float = 0.0  # wall time of the start-up warm-up; 0 when it did not run


@dataclass(frozen=True)
class EngineStats:
    """``num_running`` counts every admitted request, ``num_prefilling`` of them included.

    Cumulative since the engine started serving (its start-up warm-up not counted): decode
    forwards that replayed a CUDA graph (``graph_replays``) or ran eagerly (``eager_decodes``:
    graphs off, or a shape's first sight), and sampling steps that launched the next decode ahead
    (``ahead_steps``, overlap scheduling) or ran serially (``serial_steps``).
    """

    num_running: int
    num_waiting: int
    kv_pages_used: int
    kv_pages_total: int
    num_prefilling: int = 0
    graph_replays: int = 0
    eager_decodes: int = 0
    ahead_steps: int = 0
    serial_steps: int = 0
