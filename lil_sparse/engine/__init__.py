"""The engine: scheduler, page manager, model runner and the step loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lil_sparse.engine.llm_engine import EngineInfo, EngineStats, LLMEngine
    from lil_sparse.engine.scheduler import QueueFullError

__all__ = ["EngineInfo", "EngineStats", "LLMEngine", "QueueFullError"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one engine part (page manager, scheduler) doesn't load the whole engine.
    if name == "QueueFullError":
        from lil_sparse.engine.scheduler import QueueFullError

        return QueueFullError
    if name in __all__:
        from lil_sparse.engine import llm_engine

        return getattr(llm_engine, name)
    raise AttributeError(name)
