"""StepLogits: a step's logits and, when the step computed it with them, their argmax. Any change
of rows but a padded step's head drops the argmax (the sampler then computes it), and the
engine's host record of an all-greedy step is the pick's own when it came with the logits."""

from __future__ import annotations

import pytest
import torch

from lil_sparse.engine.step_sampler import StepSampler
from lil_sparse.sampling import Argmax, StepLogits


def picked(rows: int, vocab: int = 11) -> StepLogits:
    """Logits with a pick as a decode step's graph makes it (here by torch, on CPU)."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows))
    tokens = logits.argmax(dim=-1)
    own = logits.log_softmax(dim=-1).gather(-1, tokens.unsqueeze(1)).squeeze(1)
    pairs = torch.stack((tokens.double(), own.double()), dim=1)
    return StepLogits(logits, Argmax(logits, tokens, own=own, pairs=pairs))


def test_the_head_of_a_padded_step_keeps_its_pick_as_views():
    out = picked(4)
    head = out.head(3)
    assert head.num_rows == 3 and head.argmax is not None and out.argmax is not None
    assert head.argmax.tokens.tolist() == out.argmax.tokens[:3].tolist()
    assert head.argmax.pairs is not None and head.argmax.pairs.data_ptr() == out.argmax.pairs.data_ptr()
    assert head.argmax.logits.shape == (3, 11) and head.argmax.own is not None


def test_any_other_change_of_rows_drops_the_pick():
    out = picked(4)
    index = torch.tensor([2, 0])
    assert out.rows(index).argmax is None and torch.equal(out.rows(index).values, out.values[index])
    assert out.clone().argmax is None and torch.equal(out.clone().values, out.values)
    other = StepLogits(torch.zeros(2, 11))
    both = StepLogits.cat([out, other])
    assert both.argmax is None and both.num_rows == 6
    assert StepLogits.cat([out]) is out  # one part stays as it is, pick included


def test_a_pick_of_other_rows_is_refused():
    out = picked(4)
    assert out.argmax is not None
    with pytest.raises(ValueError, match="argmax: 4 rows for 3 rows"):
        StepLogits(out.values[:3], out.argmax)


def test_the_host_record_is_the_picks_own_only_for_the_pick_itself():
    out = picked(3)
    argmax = out.argmax
    assert argmax is not None and argmax.own is not None
    assert StepSampler.host_record(argmax, argmax.tokens, argmax.own) is argmax.pairs
    tokens = argmax.tokens.clone()  # a sampled batch's tokens: the record is stacked from them
    record = StepSampler.host_record(argmax, tokens, argmax.own)
    assert record is not argmax.pairs and torch.equal(record, argmax.pairs)
    assert torch.equal(StepSampler.host_record(None, tokens, argmax.own), argmax.pairs)
