"""The engine: requests in, token events out, one scheduler step at a time.

    step = schedule -> run the model (policies select pages -> attention backend) -> sample
           -> stop checks (EOS, length, stop strings, Guardian) -> token events

One request can never hurt another. A failure while handling one request's tokens (its
admission, prompt-chunk bookkeeping, sampling settings, sampler row, detokenizer, stop checks or
Guardian) finishes that request alone with ``FinishReason.ERROR``; the others keep exactly the
tokens they would have produced. A failure of a shared model forward (a step's decode call or
its prompt-chunk call) finishes every request that call ran with ``ERROR`` and frees their
pages; the engine keeps serving.

Not thread safe: one thread owns the engine and calls :meth:`step` in a loop. The server hands it
requests and aborts through its own inbox.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine.backend_choice import choose_backend
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import PrefillChunk, Sequence, SequenceStatus
from lil_sparse.engine.step_sampler import StepSampler
from lil_sparse.engine.stop_checker import StopChecker
from lil_sparse.events import FinishReason, RequestReport, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase, answer_prompt
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.loading import LoadedModel, load_model
from lil_sparse.options import POLICY_NAMES, RequestOptions
from lil_sparse.policies import get_policy
from lil_sparse.sampling import Sampler, with_request_seed

MAX_PREFILL_TOKENS = 8192
GUARDIAN_IDLE_WAIT_SECONDS = 0.05  # how long a step waits for a verdict when every request is paused

logger = logging.getLogger(__name__)


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
    """``num_running`` counts every admitted request, ``num_prefilling`` of them included."""

    num_running: int
    num_waiting: int
    kv_pages_used: int
    kv_pages_total: int
    num_prefilling: int = 0


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
        self.pages = PageManager(
            self.pool,
            table,
            self.kv,
            mc.num_kv_heads,
            page_size,
            poison_freed_pages=config.poison_freed_pages,
        )
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
            config.step_token_budget if config.chunked_prefill else 0,
        )
        self.step_sampler = StepSampler(Sampler())
        self.guardian = GuardianDriver(config.guardian_workers, config.guardian_max_lag_steps)
        self.stop_checker = StopChecker(self.tokenizer.eos_token_ids)
        self._sequences: dict[str, Sequence] = {}
        self._outputs: dict[str, RequestOutput] = {}
        self._finishing: dict[str, FinishReason] = {}  # stopped, waiting for a Guardian verdict
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

    @property
    def sampler(self) -> Sampler:
        """The sampler every step draws through (``step_sampler.sampler``); assigning one here
        replaces it there, so a wrapper set on the engine really sees every step's logits."""
        return self.step_sampler.sampler

    @sampler.setter
    def sampler(self, sampler: Sampler) -> None:
        self.step_sampler.sampler = sampler

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
        self._check_prompt(prompt_token_ids)
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
        prompt_pages = -(-len(prompt_token_ids) // self.config.page_size) * self.model_config.num_kv_heads
        if prompt_pages > self.pool.num_pages:
            raise ValueError(
                f"prompt: {len(prompt_token_ids)} tokens need {prompt_pages} KV pages, more than the "
                f"{self.pool.num_pages} the engine has"
            )
        self.scheduler.add(seq)
        self._sequences[request_id] = seq
        return request_id

    def _check_prompt(self, prompt_token_ids: list[int]) -> None:
        """The prompt alone: non-empty, ids in the vocabulary, room for one new token.
        Messages name ``prompt`` (the server maps it to its own field name)."""
        if not prompt_token_ids:
            raise ValueError("prompt: must contain at least one token")
        vocab = self.model_config.vocab_size
        for index, token in enumerate(prompt_token_ids):
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocab:
                raise ValueError(
                    f"prompt: token id {token!r} at index {index} is outside the vocabulary [0, {vocab})"
                )
        if len(prompt_token_ids) >= self.max_context:
            raise ValueError(
                f"prompt: {len(prompt_token_ids)} tokens leave no room for a new token in the context "
                f"of {self.max_context} tokens"
            )

    def abort(self, request_id: str) -> None:
        """Finish a request at the start of the next step (unknown ids are ignored)."""
        seq = self._sequences.get(request_id)
        if seq is not None:
            seq.abort_requested = True

    def has_unfinished(self) -> bool:
        return bool(self._sequences)

    def stats(self) -> EngineStats:
        return EngineStats(
            self.scheduler.num_running,
            self.scheduler.num_waiting,
            self.pool.num_used,
            self.pool.num_pages,
            self.scheduler.num_prefilling,
        )

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        events = [
            self._finish(s, FinishReason.ABORTED, self._kept(s))
            for s in list(self._sequences.values())
            if s.abort_requested
        ]
        events += self._apply_guardian()
        batch = self.scheduler.schedule()
        if batch is None:
            return events
        decode = [s for s in batch.decode if not self._paused(s)]
        self._admit_all(batch.admitted, events)
        chunks = [c for c in batch.prefill if c.seq.status == SequenceStatus.RUNNING]  # admitted
        if not decode and not chunks:
            if batch.decode:  # every decoding request waits for a Guardian verdict
                self.guardian.wait_any([s.request_id for s in batch.decode], GUARDIAN_IDLE_WAIT_SECONDS)
            return events
        # Decode rows, then prompt chunks: two model calls (see scheduler.py for why), one sampling.
        seqs, logits_parts = [], []
        if decode:
            try:
                logits_parts.append(self._checked(self.runner.decode(decode)))
                seqs += decode
            except Exception as error:  # the shared forward: its requests fail, the engine goes on
                events += self._fail_forward(decode, error)
        if chunks:
            try:
                prefilled, prefill_logits = self.runner.prefill(chunks)
                self._checked(prefill_logits)
            except Exception as error:
                events += self._fail_forward([c.seq for c in chunks], error)
            else:
                self._record_chunks(chunks, events)
                rows = [i for i, s in enumerate(prefilled) if s.status == SequenceStatus.RUNNING]
                seqs += [prefilled[i] for i in rows]
                if len(rows) < len(prefilled):  # a request failed its bookkeeping: drop its row
                    index = torch.tensor(rows, dtype=torch.long).to(prefill_logits.device, non_blocking=True)
                    prefill_logits = prefill_logits[index]  # a list index would copy synchronously
                logits_parts.append(prefill_logits)
        if not seqs:  # only partial prompt chunks ran (or every request failed): no token yet
            return events
        logits = torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0]
        seqs, tokens, logprobs, failed = self.step_sampler.sample(seqs, logits)
        events += [self._fail(seq, "sampling", error) for seq, error in failed]
        finished_at = time.perf_counter()
        for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            try:
                events += self._append_token(seq, token, logprob, finished_at)
            except Exception as error:
                events.append(self._fail(seq, "token", error))
        return events

    def _paused(self, seq: Sequence) -> bool:
        """Waiting for its Guardian verdict: stopped already, or too far ahead of a pending check."""
        return seq.request_id in self._finishing or self.guardian.lagging(seq)

    def _admit_all(self, seqs: list[Sequence], events: list[TokenEvent]) -> None:
        """Admit ``seqs``; one that fails is finished with ``ERROR`` (its status leaves RUNNING)."""
        now = time.perf_counter()
        for seq in seqs:
            seq.prefill_start_time = now
            try:
                self._admit(seq)
            except Exception as error:
                events.append(self._fail(seq, "admission", error))

    def _checked(self, logits: torch.Tensor) -> torch.Tensor:
        """Debug mode: a read of KV nothing wrote shows up as NaN logits; fail loudly (one host sync)."""
        if self.config.poison_freed_pages and bool(logits.isnan().any()):
            raise RuntimeError("NaN logits: the step attended KV that nothing wrote (poison_freed_pages)")
        return logits

    def _fail_forward(self, seqs: list[Sequence], error: Exception) -> list[TokenEvent]:
        """A model call failed: every request it ran fails (their pages are freed)."""
        logger.error("model forward failed; failing its %d requests", len(seqs), exc_info=error)
        return [self._fail(s, "model", error) for s in seqs]

    def _record_chunks(self, chunks: list[PrefillChunk], events: list[TokenEvent]) -> None:
        """Each chunk's bookkeeping after the prefill call; a failure fails that request alone."""
        for chunk in chunks:
            try:
                self.runner.record_chunk(chunk)
                if chunk.is_last and get_policy(chunk.seq.policy).evicts:
                    pages = chunk.seq.budget_pages * self.model_config.num_kv_heads
                    self.scheduler.shrink_reservation(chunk.seq, pages)
            except Exception as error:
                events.append(self._fail(chunk.seq, "prefill", error))

    def _admit(self, seq: Sequence) -> None:
        self.pages.admit(seq)
        self._outputs[seq.request_id] = RequestOutput(self.tokenizer, seq.options.stopping.stop_strings)
        if seq.options.guardian.enabled:
            self.guardian.admit(seq, self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False))

    def _append_token(self, seq: Sequence, token: int, logprob: float, now: float) -> list[TokenEvent]:
        """Record a sampled token, run the stop checks, and release what the client may see."""
        request_id = seq.request_id
        output = self._outputs[request_id]
        answer = self._answers.get(request_id) if self._answers else None
        if answer is None and not output.stop_strings and not self.guardian.watches(request_id):
            return self._append_plain_token(seq, output, token, logprob, now)
        forced = False
        if answer is not None:  # the answer phase: a forced prompt token replaces the sampled one
            token, logprob, forced = answer.next_token(token, logprob)
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        stop_string_hit = output.push(token, logprob, forced)
        reason = self.stop_checker.check(seq, token, stop_string_hit)
        if answer is not None:
            return self._after_answer_token(seq, answer, reason, forced)
        if reason is None:
            self.guardian.after_token(seq, output.decoded)
        gate = self.guardian.gate(request_id)
        if reason is not None:
            if gate is None:
                return [self._finish(seq, reason)]
            self._finishing[request_id] = reason  # pause until the pending check decides
        return self._release(seq, seq.num_output_tokens if gate is None else gate)

    def _append_plain_token(
        self, seq: Sequence, output: RequestOutput, token: int, logprob: float, now: float
    ) -> list[TokenEvent]:
        """:meth:`_append_token` for the common request: no answer phase, no stop strings and no
        Guardian (which never has a pending check, so never a gate: guardian_driver.py). The same
        token, text and event, with the stop-string and Guardian work left out."""
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        reason = self.stop_checker.check(seq, token, False)
        if reason is not None:
            output.push(token, logprob)
            return [self._finish(seq, reason)]
        first, upto, text = output.push_and_release(token, logprob, len(seq.output_token_ids))
        if upto == first and not text:
            return []
        tokens = tuple(seq.output_token_ids[first:upto])
        return [TokenEvent(seq.request_id, tokens, text, tuple(output.logprobs[first:upto]))]

    def _release(self, seq: Sequence, upto: int, answer: bool = False) -> list[TokenEvent]:
        first, upto, logprobs, text = self._outputs[seq.request_id].release(upto)
        if upto == first and not text:
            return []
        tokens = tuple(seq.output_token_ids[first:upto])
        return [TokenEvent(seq.request_id, tokens, text, tuple(logprobs), answer=answer)]

    def _apply_guardian(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        for request_id, verdict in self.guardian.collect():
            seq = self._sequences.get(request_id)
            if seq is None or seq.status != SequenceStatus.RUNNING:
                continue
            if isinstance(verdict, Exception):
                events.append(self._fail(seq, "guardian", verdict))
            elif verdict.stop and seq.options.guardian.action == "answer":
                try:
                    self._start_answer(seq, verdict.generated_tokens)
                except Exception as error:
                    events.append(self._fail(seq, "guardian answer", error))
            elif verdict.stop:  # cut the output at the check; the tokens after it were held back
                seq.guardian_report.applied_at_step = verdict.generated_tokens
                events.append(self._finish(seq, FinishReason.EARLY_STOP, verdict.generated_tokens))
            elif (gate := self.guardian.gate(request_id)) is not None:
                events += self._release(seq, gate)
            elif request_id in self._finishing:
                events.append(self._finish(seq, self._finishing[request_id]))
            else:
                events += self._release(seq, seq.num_output_tokens)
        return events

    # ---- Guardian stop action "answer" (lil_sparse/guardian/answer.py) ------------------------
    def _start_answer(self, seq: Sequence, stop_step: int) -> None:
        """End the thinking at the check after ``stop_step`` tokens: from the next token on, append
        the answer prompt, then decode at most ``answer_max_tokens`` more. No check runs after.

        Such a request pauses at every pending check (:class:`GuardianDriver`), so its output ends
        exactly at the check: no token was decoded past it, nothing is discarded, and the KV the
        answer attends is that of the kept tokens only.
        """
        if seq.num_output_tokens != stop_step:  # the pause at each check makes this impossible
            raise RuntimeError(
                f"answer: {seq.num_output_tokens - stop_step} tokens were decoded past the stop check"
            )
        output = self._outputs[seq.request_id]
        prompt_text = self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False)
        forced = tuple(self.tokenizer.encode(answer_prompt(prompt_text + output.decoded)))
        self._answers[seq.request_id] = AnswerPhase(stop_step, forced, seq.options.guardian.answer_max_tokens)
        self.guardian.close_checks(seq)
        seq.guardian_report.applied_at_step = stop_step

    def _after_answer_token(
        self, seq: Sequence, answer: AnswerPhase, reason: FinishReason | None, forced: bool
    ) -> list[TokenEvent]:
        """Release an answer-phase token, or finish. Any stop (the answer budget, EOS, a stop
        string, the length cap) ends the request with ``early_stop``: Guardian cut the thinking.
        A forced token never ends it but by the length cap (stop strings in forced text are not
        matched, see :class:`RequestOutput`; an EOS id in the prompt is ignored here)."""
        if forced and reason != FinishReason.LENGTH:
            reason = None
        if reason is None and not answer.done:
            return self._release(seq, seq.num_output_tokens, answer=True)
        return [self._finish(seq, FinishReason.EARLY_STOP)]

    def _kept(self, seq: Sequence) -> int:
        """Tokens a request keeps when it ends early (abort, error): those already released."""
        output = self._outputs.get(seq.request_id)
        return output.released if output is not None else 0

    def _fail(self, seq: Sequence, stage: str, error: BaseException) -> TokenEvent:
        """Finish one request with ``ERROR`` after a failure in ``stage`` (logged with its traceback)."""
        logger.error("request %s failed in %s", seq.request_id, stage, exc_info=error)
        return self._finish(seq, FinishReason.ERROR, self._kept(seq), f"{stage}: {error!r}")

    def _finish(
        self, seq: Sequence, reason: FinishReason, kept: int | None = None, error: str = ""
    ) -> TokenEvent:
        """Free everything the sequence holds and build its final event.

        ``kept`` (default: all) output tokens stay; the final event carries the ones not yet
        released and the rest of the text, which is ``decode(kept ids)`` cut after a stop string.
        """
        kept = seq.num_output_tokens if kept is None else kept
        output = self._outputs.pop(seq.request_id, None)
        first, text, logprobs = kept, "", list[float]()
        if output is not None:
            try:
                first, _, logprobs, text, stopped = output.finish(seq.output_token_ids[:kept])
                if stopped and reason in (FinishReason.LENGTH, FinishReason.EOS):
                    reason = FinishReason.STOP_STRING  # the last characters completed a stop string
                seq.output_text = output.emitted
            except Exception as failure:  # a broken tokenizer must not keep the pages
                logger.error("request %s: final text failed", seq.request_id, exc_info=failure)
                first, reason = output.released, FinishReason.ERROR
                kept, seq.output_text = first, output.emitted
                error = error or f"detokenizer: {failure!r}"
        seq.keep_outputs(kept)
        self._finishing.pop(seq.request_id, None)
        answer = self._answers.pop(seq.request_id, None)
        self._sequences.pop(seq.request_id, None)
        # Each part frees what it holds even if another part raised: a failure here is this
        # request's alone (it ends in ERROR), never a reason to keep pages or stop the step.
        for part, release in (
            ("scheduler", self.scheduler.finish),
            ("pages", self.pages.release),
            ("guardian", self.guardian.release),
        ):
            try:
                release(seq)
            except Exception as failure:
                logger.error("request %s: releasing its %s failed", seq.request_id, part, exc_info=failure)
                reason, error = FinishReason.ERROR, error or f"{part} release: {failure!r}"
        if answer is not None:
            answer.fill(seq.guardian_report, seq.num_output_tokens)
        report = seq.report(reason, error)
        tokens = tuple(seq.output_token_ids[first:])
        # After an answer started, every token not released yet is an answer token.
        return TokenEvent(seq.request_id, tokens, text, tuple(logprobs), reason, report, answer is not None)

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
