"""The engine: requests in, token events out, one scheduler step at a time.

    step = schedule -> run the model (policies select pages -> attention backend) -> sample
           -> stop checks (EOS, length, stop strings, Guardian) -> token events

With overlap scheduling (the CUDA default) the next decode is launched right after sampling, and
the stop checks run while it does (overlap.py: why the tokens stay exactly the serial ones).

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
from dataclasses import replace

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine.admission import new_sequence
from lil_sparse.engine.backend_choice import choose_backend
from lil_sparse.engine.engine_info import EngineInfo, EngineStats
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.guardian_verdicts import GuardianVerdicts
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.overlap import Overlap
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import PrefillChunk, Sequence, SequenceStatus
from lil_sparse.engine.step_sampler import StepSampler
from lil_sparse.engine.step_tokens import StepTokens
from lil_sparse.engine.stop_checker import StopChecker
from lil_sparse.engine.warm_up import WarmUpReport, warm_up
from lil_sparse.events import FinishReason, RequestReport, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.loading import LoadedModel, load_model
from lil_sparse.options import POLICY_NAMES, RequestOptions
from lil_sparse.policies import get_policy
from lil_sparse.sampling import Sampler

MAX_PREFILL_TOKENS = 8192
GUARDIAN_IDLE_WAIT_SECONDS = 0.05  # how long a step waits for a verdict when every request is paused

logger = logging.getLogger(__name__)

__all__ = ["EngineInfo", "EngineStats", "LLMEngine", "resolve_dtype"]


def resolve_dtype(config: EngineConfig) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if config.device.startswith("cuda") else torch.float32
    return getattr(torch, config.dtype)


class LLMEngine(StepTokens, GuardianVerdicts):
    """The engine. Its output side lives beside it, as mixins over the same per-request tables:
    step_tokens.py (sampling, the decode launched ahead, the step's tokens), token_path.py (one
    sampled token: stop checks, Guardian gate, answer phase),
    guardian_verdicts.py (verdicts and the ``answer`` action), request_finish.py (release and
    finish); admission.py validates new requests."""

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
            loaded.model,
            self.kv,
            self.pages,
            self.backend,
            mc.num_layers,
            cuda_graphs=config.cuda_graphs,
            selection=config.selection,
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
        if device.type == "cuda":  # compile the sampler's kernels now, not inside a request
            self.step_sampler.sampler.warm_up(mc.vocab_size, device)
        self.overlap = Overlap(self.runner)
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
            selection=config.selection,
            overlap_scheduling=config.overlaps,
        )
        self.warm_up_report: WarmUpReport | None = None
        if config.warms_up:  # kernel builds and graph captures now, not inside a request
            self.warm_up_report = warm_up(self)
            self.info = replace(self.info, warm_up_seconds=self.warm_up_report.seconds)

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
        """Queue a request. Raises ``ValueError`` naming the field for bad input (admission.py)."""
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._sequences:
            raise ValueError(f"request_id: {request_id!r} is already running")
        seq = new_sequence(
            request_id,
            prompt_token_ids,
            options,
            arrival_time,
            scheduler=self.scheduler,
            vocab_size=self.model_config.vocab_size,
            max_context=self.max_context,
            page_size=self.config.page_size,
            num_layers=self.model_config.num_layers,
            num_kv_heads=self.model_config.num_kv_heads,
            num_pages=self.pool.num_pages,
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
        graphs, overlap = self.runner.graph_stats(), self.overlap.stats()
        return EngineStats(
            self.scheduler.num_running,
            self.scheduler.num_waiting,
            self.pool.num_used,
            self.pool.num_pages,
            self.scheduler.num_prefilling,
            graph_replays=graphs["replays"],
            eager_decodes=graphs["eager_steps"],
            ahead_steps=overlap["ahead_steps"],
            serial_steps=overlap["serial_steps"],
        )

    def reset_step_counters(self) -> None:
        """Zero the step counters :meth:`stats` and :meth:`overlap_stats` report, and the
        selection gate's (captured CUDA graphs stay)."""
        self.runner.reset_counters()
        self.overlap.reset_counters()

    def overlap_stats(self) -> dict[str, int]:
        """Sampling steps that launched the next decode ahead (``ahead_steps``) or ran serially
        (``serial_steps``), and ``catch_up_decodes`` (overlap.py)."""
        return self.overlap.stats()

    # ---- the step ---------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """Aborts and Guardian verdicts -> schedule -> forward -> sample -> per-token stop checks.
        Returns this step's events, final ones (with a report) included."""
        events = [
            self._finish(s, FinishReason.ABORTED, self._kept(s))
            for s in list(self._sequences.values())
            if s.abort_requested
        ]
        events += self._apply_guardian()
        batch = self.scheduler.schedule()
        if batch is None:
            return events + self._fail_stale(self.overlap.drop())
        decode = [s for s in batch.decode if not self._paused(s)]
        self._admit_all(batch.admitted, events)
        chunks = [c for c in batch.prefill if c.seq.status == SequenceStatus.RUNNING]  # admitted
        if not decode and not chunks:
            events += self._fail_stale(self.overlap.drop())
            if batch.decode:  # every decoding request waits for a Guardian verdict
                self.guardian.wait_any([s.request_id for s in batch.decode], GUARDIAN_IDLE_WAIT_SECONDS)
            return events
        seqs, logits = self._forward(decode, chunks, events)
        if logits is None:  # only partial prompt chunks ran (or every request failed): no token yet
            return events
        return events + self._sample(seqs, logits)

    def _forward(
        self, decode: list[Sequence], chunks: list[PrefillChunk], events: list[TokenEvent]
    ) -> tuple[list[Sequence], torch.Tensor | None]:
        """Decode rows (those the previous step ran ahead, then any others), then prompt chunks:
        separate model calls (see scheduler.py for why), one set of logits ``[N, V] float32``
        for the ``N`` requests that get a token now, in that order. A failed call fails its
        requests (into ``events``); ``([], None)`` when no row is left."""
        seqs: list[Sequence] = []
        logits_parts: list[torch.Tensor] = []
        taken = self.overlap.take(decode)
        events += self._fail_stale(taken.stale)
        for rows, ahead in ((taken.seqs, taken.logits), (taken.rest, None)):
            if not rows:
                continue
            try:  # a shared forward: its requests fail, the engine goes on
                logits_parts.append(self._checked(self.runner.decode(rows) if ahead is None else ahead))
                seqs += rows
            except Exception as error:
                events += self._fail_forward(rows, error)
        if chunks:
            try:
                prefilled, prefill_logits = self.runner.prefill(chunks)
                self._checked(prefill_logits)
            except Exception as error:
                events += self._fail_forward([c.seq for c in chunks], error)
            else:
                self._record_chunks(chunks, events)
                kept = [i for i, s in enumerate(prefilled) if s.status == SequenceStatus.RUNNING]
                seqs += [prefilled[i] for i in kept]
                if len(kept) < len(prefilled):  # a request failed its bookkeeping: drop its row
                    index = torch.tensor(kept, dtype=torch.long).to(prefill_logits.device, non_blocking=True)
                    prefill_logits = prefill_logits[index]  # a list index would copy synchronously
                logits_parts.append(prefill_logits)
        if not seqs:
            return seqs, None
        return seqs, torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0]

    def _admit_all(self, seqs: list[Sequence], events: list[TokenEvent]) -> None:
        """Admit ``seqs``; one that fails is finished with ``ERROR`` (its status leaves RUNNING)."""
        now = time.perf_counter()
        for seq in seqs:
            seq.prefill_start_time = now
            try:
                self._admit(seq)
            except Exception as error:
                events.append(self._fail(seq, "admission", error))

    def _admit(self, seq: Sequence) -> None:
        self.pages.admit(seq)
        self._outputs[seq.request_id] = RequestOutput(self.tokenizer, seq.options.stopping.stop_strings)
        if seq.options.guardian.enabled:
            self.guardian.admit(seq, self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False))

    def _checked(self, logits: torch.Tensor) -> torch.Tensor:
        """Debug mode: a read of KV nothing wrote shows up as NaN logits; fail loudly (one host sync)."""
        if self.config.poison_freed_pages and bool(logits.isnan().any()):
            raise RuntimeError("NaN logits: the step attended KV that nothing wrote (poison_freed_pages)")
        return logits

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
