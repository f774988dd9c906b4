"""A plain, token-position oracle of what each sparse policy attends, for differential tests.

The oracle decodes one request at a time in float64 with its own dense K/V (a list of positions,
no pages, no pool) and builds each decode step's attention mask from token positions: the
logical pages (``position // page_size``) the policy should hold or select, per layer and KV
head. Selection policies recompute their choice from the oracle's own full-precision keys (page
key min/max for Quest, page key means for InfLLM); H2O accumulates attention mass from the
oracle's own probabilities. The rules are the papers' rules as the policy files adapt them to
pages (see lil_sparse/policies/*.py); the code shares nothing with the engine but the model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from lil_sparse.models.dense_attention import causal_attention
from lil_sparse.models.transformer import CausalLM

H2O_OBSERVATION_WINDOW = 64  # the last prompt queries whose attention seeds H2O (h2o.py)


@dataclass(frozen=True)
class OracleRequest:
    prompt: list[int]
    policy: str
    max_new_tokens: int
    budget_pages: int
    sink_pages: int
    recent_pages: int
    dense_layers: int


class PolicyOracle:
    def __init__(self, model: CausalLM, page_size: int, num_kv_heads: int) -> None:
        self.model = copy.deepcopy(model).double()
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads

    @torch.inference_mode()
    def generate(self, request: OracleRequest) -> list[int]:
        """Greedy tokens of ``request`` under its policy, float64."""
        state = _State(request, self, len(self.model.model.layers))
        prompt = torch.tensor(request.prompt)
        hidden = self.model(prompt, torch.arange(len(prompt)), state.prefill)
        tokens = [int(self.model.compute_logits(hidden[-1:]).argmax())]
        state.after_prefill()
        while len(tokens) < request.max_new_tokens:
            position = len(request.prompt) + len(tokens) - 1
            state.before_decode(position)
            hidden = self.model(torch.tensor(tokens[-1:]), torch.tensor([position]), state.decode)
            tokens.append(int(self.model.compute_logits(hidden).argmax()))
        return tokens


class _State:
    def __init__(self, request: OracleRequest, oracle: PolicyOracle, num_layers: int) -> None:
        self.request = request
        self.page_size = oracle.page_size
        self.heads = oracle.num_kv_heads
        self.keys: list[torch.Tensor] = [torch.empty(0)] * num_layers  # [T, Hkv, D] per layer
        self.values: list[torch.Tensor] = [torch.empty(0)] * num_layers
        self.held: list[list[int]] = []  # per KV head: logical pages, oldest first
        self.mass: list[dict[int, float]] = [{} for _ in range(self.heads)]  # H2O, per head

    @property
    def evicts(self) -> bool:
        return self.request.policy in ("sink", "h2o")

    # ---- prefill: dense causal attention over the prompt ------------------------------------
    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.keys[layer], self.values[layer] = k, v
        if self.request.policy == "h2o":
            length, num_heads, head_dim = q.shape
            window = min(length, H2O_OBSERVATION_WINDOW)
            for head in range(self.heads):
                group = q[length - window :, self._group(head, num_heads)]  # [W, G, D]
                scores = torch.einsum("wgd,td->gwt", group, k[:, head]) / math.sqrt(head_dim)
                causal = torch.arange(length)[None, :] <= torch.arange(length - window, length)[:, None]
                probs = scores.masked_fill(~causal, float("-inf")).softmax(-1).sum(dim=(0, 1))  # [T]
                for position in range(length):
                    self._add_mass(head, position // self.page_size, float(probs[position]))
        return causal_attention(q, k, v)

    def after_prefill(self) -> None:
        pages = -(-len(self.request.prompt) // self.page_size)
        self.held = [list(range(pages)) for _ in range(self.heads)]
        if self.evicts and pages > self.request.budget_pages:
            for head in range(self.heads):
                self.held[head] = self._keep_best(head, self.request.budget_pages)

    # ---- decode ------------------------------------------------------------------------------
    def before_decode(self, position: int) -> None:
        """The token at ``position`` is written this step: a new page at a page boundary,
        replacing the lowest-scoring page when an eviction policy holds its whole budget."""
        if position % self.page_size:
            return
        for head in range(self.heads):
            if self.evicts and len(self.held[head]) >= self.request.budget_pages:
                self.held[head] = self._keep_best(head, len(self.held[head]) - 1)
            self.held[head].append(position // self.page_size)
            self.mass[head][position // self.page_size] = 0.0

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.keys[layer] = torch.cat([self.keys[layer], k])
        self.values[layer] = torch.cat([self.values[layer], v])
        length = self.keys[layer].shape[0]
        _, num_heads, head_dim = q.shape
        out = torch.empty_like(q)
        pages_by_head = self._attended(layer, q[0], num_heads)
        for head in range(self.heads):
            group = self._group(head, num_heads)
            positions = [
                p
                for page in pages_by_head[head]
                for p in range(page * self.page_size, min((page + 1) * self.page_size, length))
            ]
            keys = self.keys[layer][positions, head]  # [N, D]
            probs = ((q[0, group] @ keys.T) / math.sqrt(head_dim)).softmax(-1)  # [G, N]
            out[0, group] = probs @ self.values[layer][positions, head]
            if self.request.policy == "h2o":
                per_token = probs.sum(0)
                for index, p in enumerate(positions):
                    self._add_mass(head, p // self.page_size, float(per_token[index]))
        return out

    def _attended(self, layer: int, q: torch.Tensor, num_heads: int) -> list[list[int]]:
        """Pages each KV head attends in ``layer``. ``q: [Hq, D]`` of the current token."""
        request, held = self.request, self.held
        count = min(len(held[0]), request.budget_pages)
        if request.policy in ("full", "sink", "h2o") or count == len(held[0]):
            return held
        if request.policy == "quest":
            if layer < request.dense_layers:
                return held
            chosen = []
            for head in range(self.heads):
                group = q[self._group(head, num_heads)]  # [G, D]
                bounds = []
                for page in held[head][:-1]:
                    page_keys = self._page_keys(layer, page, head)
                    low, high = page_keys.min(0).values, page_keys.max(0).values
                    bound = float(torch.maximum(group * low, group * high).sum())
                    bounds.append((bound, page))
                best = sorted(bounds, reverse=True)[: count - 1]
                chosen.append([*sorted(p for _, p in best), held[head][-1]])
            return chosen
        # infllm: one page list for every head of the sequence, scored with every query head.
        older = held[0][:-1]
        forced = [
            page
            for slot, page in enumerate(older)
            if slot < request.sink_pages or slot >= len(held[0]) - request.recent_pages
        ]
        scored = []
        for page in older:
            if page in forced:
                continue
            score = 0.0
            for head in range(self.heads):
                mean = self._page_keys(layer, page, head).sum(0) / self.page_size
                score += float((q[self._group(head, num_heads)] @ mean).sum())
            scored.append((score, page))
        best = [p for _, p in sorted(scored, reverse=True)[: count - 1 - len(forced)]]
        return [[*sorted(forced + best), held[0][-1]] for _ in range(self.heads)]

    # ---- helpers -----------------------------------------------------------------------------
    def _keep_best(self, head: int, keep: int) -> list[int]:
        """The ``keep`` pages of ``head`` that the eviction policy keeps (ties keep the older)."""
        held, request = self.held[head], self.request
        if request.policy == "sink":
            scores = [math.inf if slot < request.sink_pages else float(slot) for slot in range(len(held))]
        else:
            recent_start = len(held) - request.recent_pages
            scores = [
                math.inf if slot >= recent_start else self.mass[head].get(page, 0.0)
                for slot, page in enumerate(held)
            ]
        order = sorted(range(len(held)), key=lambda slot: (-scores[slot], slot))
        return [held[slot] for slot in sorted(order[:keep])]

    def _page_keys(self, layer: int, page: int, head: int) -> torch.Tensor:
        return self.keys[layer][page * self.page_size : (page + 1) * self.page_size, head]

    def _group(self, head: int, num_heads: int) -> slice:
        group = num_heads // self.heads
        return slice(head * group, (head + 1) * group)

    def _add_mass(self, head: int, page: int, value: float) -> None:
        self.mass[head][page] = self.mass[head].get(page, 0.0) + value
