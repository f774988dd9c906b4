"""The engine: requests in, token events out, one scheduler step at a time.

    step = schedule -> run the model (policies select pages -> attention backend) -> sample
           -> stop checks (EOS, length, stop strings, Guardian) -> token events

Not thread safe: one thread owns the engine and calls :meth:`step` in a loop. The server hands it
requests and aborts through its own inbox.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine.backend_choice import choose_backend
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import Sequence, SequenceStatus
from lil_sparse.engine.stop_checker import StopChecker
from lil_sparse.events import FinishReason, RequestReport, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase, answer_prompt
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.loading import LoadedModel, load_model
from lil_sparse.loading.detokenizer import IncrementalDetokenizer
from lil_sparse.options import POLICY_NAMES, RequestOptions
from lil_sparse.policies import get_policy
from lil_sparse.sampling import Sampler, SamplingParams, with_request_seed

MAX_PREFILL_TOKENS = 8192


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


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_pages_used: int
    kv_pages_total: int


def resolve_dtype(config: EngineConfig) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if config.device.startswith("cuda") else torch.float32
    return getattr(torch, config.dtype)


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = loaded.tokenizer
        self.model_config = mc = loaded.config
        device = torch.device(config.device)
        dtype = next(loaded.model.parameters()).dtype
        self.max_context = min(config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        page_size = config.page_size
        num_pages = config.kv_cache_tokens // page_size * mc.num_kv_heads
        max_pages_per_seq = -(-self.max_context // page_size)
        self.pool = PagePool(num_pages)
        self.kv = KVCache(mc.num_layers, num_pages, page_size, mc.head_dim, dtype, device)
        table = BlockTable(config.max_batch_size, mc.num_kv_heads, max_pages_per_seq, device)
        self.pages = PageManager(self.pool, table, self.kv, mc.num_kv_heads, page_size)
        self.backend = choose_backend(config, mc)
        self.runner = ModelRunner(
            loaded.model, self.kv, self.pages, self.backend, mc.num_layers, cuda_graphs=config.cuda_graphs
        )
        self.scheduler = Scheduler(
            num_pages,
            mc.num_kv_heads,
            page_size,
            config.max_batch_size,
            config.max_waiting,
            MAX_PREFILL_TOKENS,
        )
        self.sampler = Sampler()
        self.guardian = GuardianDriver(config.guardian_workers, config.guardian_max_lag_steps)
        self.stop_checker = StopChecker(self.tokenizer.eos_token_ids)
        self._sequences: dict[str, Sequence] = {}
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._answers: dict[str, AnswerPhase] = {}  # Guardian action "answer": requests answering
        self.info = EngineInfo(
            model_name=loaded.name,
            architecture=mc.architecture,
            max_context=self.max_context,
            page_size=page_size,
            num_layers=mc.num_layers,
            num_kv_heads=mc.num_kv_heads,
            policies=POLICY_NAMES,
            backend=self.backend.name,
            device=config.device,
            dtype=str(dtype).removeprefix("torch."),
            num_pages_total=num_pages,
        )

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        return cls(load_model(config.model, resolve_dtype(config), config.device), config)

    # ---- requests ---------------------------------------------------------------------------
    def add_request(
        self,
        prompt_token_ids: list[int],
        options: RequestOptions,
        request_id: str | None = None,
        arrival_time: float | None = None,
    ) -> str:
        """Queue a request. Raises ``ValueError`` naming the field for bad input."""
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._sequences:
            raise ValueError(f"request_id: {request_id!r} is already running")
        if not prompt_token_ids:
            raise ValueError("prompt: must contain at least one token")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt_token_ids: every id must be in [0, {vocab})")
        total = len(prompt_token_ids) + options.stopping.max_new_tokens
        if total > self.max_context:
            raise ValueError(
                f"max_new_tokens: prompt ({len(prompt_token_ids)}) plus max_new_tokens "
                f"({options.stopping.max_new_tokens}) exceeds the context of {self.max_context} tokens"
            )
        sparse = options.sparse
        sparse.validate_for(self.config.page_size, self.model_config.num_layers)
        budget = sparse.budget_pages(self.config.page_size) if sparse.policy != "full" else 1 << 30
        # A sampled request without a seed gets one now, so its tokens never depend on the batch.
        options = replace(options, sampling=with_request_seed(options.sampling))
        seq = Sequence(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            options=options,
            budget_pages=budget,
            sink_pages=sparse.sink_pages(self.config.page_size),
            recent_pages=sparse.recent_pages(self.config.page_size) if sparse.policy != "full" else 1,
            reserved_pages=self.scheduler.reservation(
                len(prompt_token_ids), options.stopping.max_new_tokens, sparse.policy, budget
            ),
            arrival_time=arrival_time if arrival_time is not None else time.perf_counter(),
        )
        self.scheduler.add(seq)
        self._sequences[request_id] = seq
        return request_id

    def abort(self, request_id: str) -> None:
        """Finish a request at the start of the next step (unknown ids are ignored)."""
        seq = self._sequences.get(request_id)
        if seq is not None:
            seq.abort_requested = True

    def has_unfinished(self) -> bool:
        return bool(self._sequences)

    def stats(self) -> EngineStats:
        return EngineStats(
            self.scheduler.num_running, self.scheduler.num_waiting, self.pool.num_used, self.pool.num_pages
        )

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        events = [
            self._finish(s, FinishReason.ABORTED) for s in list(self._sequences.values()) if s.abort_requested
        ]
        events += self._apply_guardian()
        batch = self.scheduler.schedule()
        if batch is None:
            return events
        now = time.perf_counter()
        if batch.is_prefill:
            for seq in batch.seqs:
                seq.prefill_start_time = now
                self._admit(seq)
            logits = self.runner.prefill(batch.seqs)
            for seq in batch.seqs:
                if get_policy(seq.policy).evicts:
                    self.scheduler.shrink_reservation(seq, seq.budget_pages * self.model_config.num_kv_heads)
        else:
            logits = self.runner.decode(batch.seqs)
        positions = torch.tensor([s.num_prompt_tokens + s.num_output_tokens for s in batch.seqs])
        params = SamplingParams.from_options([s.options.sampling for s in batch.seqs], logits.device)
        token_ids, logprobs = self.sampler.sample(logits, params, positions.to(logits.device))
        # The one host sync of the step: the scheduler needs the tokens.
        tokens = token_ids.tolist()
        token_logprobs = logprobs.tolist()
        finished_at = time.perf_counter()
        for seq, token, logprob in zip(batch.seqs, tokens, token_logprobs, strict=True):
            events.append(self._append_token(seq, token, logprob, finished_at))
        return events

    def _admit(self, seq: Sequence) -> None:
        self.pages.admit(seq)
        self._detokenizers[seq.request_id] = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids)
        if seq.options.guardian.enabled:
            self.guardian.admit(seq, self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False))

    def _append_token(self, seq: Sequence, token: int, logprob: float, now: float) -> TokenEvent:
        answer = self._answers.get(seq.request_id)
        if answer is not None:
            return self._append_answer_token(seq, answer, token, logprob, now)
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        delta = self._detokenizers[seq.request_id].push([token])
        seq.output_text += delta
        reason, delta = self.stop_checker.check(seq, token, delta)
        if reason is None:
            self.guardian.after_token(seq)
            return TokenEvent(seq.request_id, (token,), delta, (logprob,))
        event = self._finish(seq, reason)
        return TokenEvent(seq.request_id, (token,), delta, (logprob,), reason, event.report)

    def _apply_guardian(self) -> list[TokenEvent]:
        events = []
        for request_id, record in self.guardian.collect(self.scheduler.running):
            seq = self._sequences.get(request_id)
            if seq is None or not record.stop or seq.status != SequenceStatus.RUNNING:
                continue
            if request_id in self._answers:  # already answering: later verdicts change nothing
                continue
            seq.guardian_report.applied_at_step = seq.num_output_tokens
            if seq.options.guardian.action == "answer":
                self._start_answer(seq)
                continue
            events.append(self._finish(seq, FinishReason.EARLY_STOP))
        return events

    # ---- Guardian stop action "answer" (lil_sparse/guardian/answer.py) ------------------------
    def _start_answer(self, seq: Sequence) -> None:
        """End the thinking: from the next token on, append the answer prompt, then decode at most
        ``answer_max_tokens`` more. No Guardian check runs after this."""
        prompt_text = self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False)
        forced = tuple(self.tokenizer.encode(answer_prompt(prompt_text + seq.output_text)))
        self._answers[seq.request_id] = AnswerPhase(
            seq.num_output_tokens, forced, seq.options.guardian.answer_max_tokens
        )

    def _append_answer_token(
        self, seq: Sequence, answer: AnswerPhase, sampled: int, logprob: float, now: float
    ) -> TokenEvent:
        """Append a token of the answer phase: a forced prompt token instead of the sampled one
        while any is left, then the model's own. Any stop (the answer budget, EOS, a stop string,
        the length cap) ends the request with ``early_stop``: Guardian cut the thinking."""
        token, logprob, forced = answer.next_token(sampled, logprob)
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        delta = self._detokenizers[seq.request_id].push([token])
        seq.output_text += delta
        reason, delta = self.stop_checker.check(seq, token, delta)
        if forced and reason != FinishReason.LENGTH:
            reason = None  # the prompt's own text never ends the request (EOS ids, stop strings)
        if reason is None and not answer.done:
            return TokenEvent(seq.request_id, (token,), delta, (logprob,), answer=True)
        event = self._finish(seq, FinishReason.EARLY_STOP)
        return TokenEvent(
            seq.request_id, (token,), delta, (logprob,), FinishReason.EARLY_STOP, event.report, answer=True
        )

    def _finish(self, seq: Sequence, reason: FinishReason) -> TokenEvent:
        """Free everything the sequence holds and build its final event (no tokens)."""
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.pages.release(seq)
        self.guardian.release(seq)
        answer = self._answers.pop(seq.request_id, None)
        if answer is not None:
            answer.fill(seq.guardian_report)
        self._detokenizers.pop(seq.request_id, None)
        self._sequences.pop(seq.request_id, None)
        report = RequestReport(
            request_id=seq.request_id,
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            output_token_ids=list(seq.output_token_ids),
            output_text=seq.output_text,
            timings=seq.timings(),
            guardian=seq.guardian_report,
            kv=seq.kv_report,
        )
        return TokenEvent(seq.request_id, (), "", (), reason, report)

    # ---- conveniences -----------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], options: list[RequestOptions]) -> list[RequestReport]:
        """Run requests to completion (batched) and return their reports in input order."""
        ids = [self.add_request(p, o) for p, o in zip(prompts, options, strict=True)]
        reports: dict[str, RequestReport] = {}
        while self.has_unfinished():
            for event in self.step():
                if event.report is not None:
                    reports[event.request_id] = event.report
        return [reports[i] for i in ids]

    def close(self) -> None:
        self.guardian.shutdown()
