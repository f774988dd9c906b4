"""Admission of a request: validate its input and build its :class:`Sequence`.

Every check raises ``ValueError`` naming the field (``prompt``, ``max_new_tokens``, or the sparse
option's own field); the server maps ``prompt`` to its own field name.
"""

from __future__ import annotations

import time
from dataclasses import replace

from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import Sequence
from lil_sparse.options import RequestOptions
from lil_sparse.policies import get_policy
from lil_sparse.sampling import with_request_seed


def check_prompt(prompt_token_ids: list[int], vocab_size: int, max_context: int) -> None:
    """The prompt alone: non-empty, ids in the vocabulary, room for one new token.
    Messages name ``prompt`` (the server maps it to its own field name)."""
    if not prompt_token_ids:
        raise ValueError("prompt: must contain at least one token")
    for index, token in enumerate(prompt_token_ids):
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocab_size:
            raise ValueError(
                f"prompt: token id {token!r} at index {index} is outside the vocabulary [0, {vocab_size})"
            )
    if len(prompt_token_ids) >= max_context:
        raise ValueError(
            f"prompt: {len(prompt_token_ids)} tokens leave no room for a new token in the context "
            f"of {max_context} tokens"
        )


def new_sequence(
    request_id: str,
    prompt_token_ids: list[int],
    options: RequestOptions,
    arrival_time: float | None,
    *,
    scheduler: Scheduler,
    vocab_size: int,
    max_context: int,
    page_size: int,
    num_layers: int,
    num_kv_heads: int,
    num_pages: int,
) -> Sequence:
    """Validate a request and build its sequence (not yet queued).

    ``num_pages``: the KV pages the engine has; a prompt that needs more can never run.
    Raises ``ValueError`` naming the field for bad input.
    """
    check_prompt(prompt_token_ids, vocab_size, max_context)
    total = len(prompt_token_ids) + options.stopping.max_new_tokens
    if total > max_context:
        raise ValueError(
            f"max_new_tokens: prompt ({len(prompt_token_ids)}) plus max_new_tokens "
            f"({options.stopping.max_new_tokens}) exceeds the context of {max_context} tokens"
        )
    sparse = options.sparse
    sparse.validate_for(page_size, num_layers)
    uses_budget = get_policy(sparse.policy).uses_budget
    budget = sparse.budget_pages(page_size) if uses_budget else 1 << 30
    # A sampled request without a seed gets one now, so its tokens never depend on the batch.
    options = replace(options, sampling=with_request_seed(options.sampling))
    seq = Sequence(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        options=options,
        budget_pages=budget,
        sink_pages=sparse.sink_pages(page_size),
        recent_pages=sparse.recent_pages(page_size) if uses_budget else 1,
        reserved_pages=scheduler.reservation(
            len(prompt_token_ids), options.stopping.max_new_tokens, sparse.policy, budget
        ),
        arrival_time=arrival_time if arrival_time is not None else time.perf_counter(),
    )
    prompt_pages = -(-len(prompt_token_ids) // page_size) * num_kv_heads
    if prompt_pages > num_pages:
        raise ValueError(
            f"prompt: {len(prompt_token_ids)} tokens need {prompt_pages} KV pages, more than the "
            f"{num_pages} the engine has"
        )
    return seq
