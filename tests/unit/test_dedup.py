"""KV deduplication on the tiny random Llama: spans by hand, re-rotation against a float64 RoPE,
bytes by hand, KL against a float64 recomputation, recompute share 1.0 equal to the full cache."""

import math

import pytest
import torch

from kvviz.dedup.run import DedupCache, rerotate_fn, run_dedup
from kvviz.dedup.spans import Repeat, find_repeats, groups
from kvviz.runtime.engine import cache_keyword

PASSAGE = [5, 6, 7, 8, 9, 10, 11, 12]
IDS = [3, 4, *PASSAGE, 40, 41, 42, *PASSAGE, 60, 61, 62]  # 24 tokens, the passage at 2 and at 13


def test_spans_by_hand():
    assert find_repeats(IDS, 4) == [Repeat(2, 13, 8)]
    assert find_repeats(IDS, 9) == []
    # three occurrences: both later ones copy the first; a span never overlaps its source
    assert find_repeats([1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3], 3) == [Repeat(0, 4, 3), Repeat(0, 8, 3)]
    assert find_repeats([7, 7, 7, 7, 7], 2) == [Repeat(0, 2, 2)]  # (0,1) then (2,3); 4 alone is too short
    # the longest earlier match wins: [1 2 3 4] at 5 matches 0..3 fully, not only [1 2]
    assert find_repeats([1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 2], 2) == [Repeat(0, 5, 4), Repeat(0, 9, 2)]
    assert groups([1, 2, 3, 9, 1, 2, 3], [Repeat(0, 4, 3)]) == [{"tokens": [1, 2, 3], "length": 3, "occurrences": [0, 4]}]
    with pytest.raises(ValueError, match="at least 1"):
        find_repeats(IDS, 0)


def rope64(x: torch.Tensor, positions, theta: float) -> torch.Tensor:
    """Llama's RoPE (rotate-half convention) in float64, written out: x (..., n, d)."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.tensor(positions, dtype=torch.float64)[:, None] * inv_freq[None]  # (n, d/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def test_rerotation_against_a_float64_rope(tiny_llama):
    theta = tiny_llama.config.rope_parameters["rope_theta"]
    raw = torch.randn(1, 2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    source = [3, 4, 5, 6, 7]
    at_source = rope64(raw, source, theta).float()
    moved = rerotate_fn(tiny_llama)(at_source, 37)
    assert torch.allclose(moved.double(), rope64(raw, [p + 37 for p in source], theta), atol=1e-5)
    back = rerotate_fn(tiny_llama)(moved, -37)
    assert torch.allclose(back, at_source, atol=1e-5)


@pytest.fixture(scope="module")
def run(tiny_llama):
    return run_dedup(tiny_llama, IDS, min_len=4, shares=(0.0, 0.5, 1.0), new_tokens=3)


def test_layer_zero_copy_is_exact_and_later_layers_deviate(run):
    # layer 0's keys and values depend on the token and its position only: the re-rotated copy is exact
    assert run.key_deviation[0] < 1e-5 and run.value_deviation[0] == 0.0
    assert run.key_deviation[1] > 0.01 and run.value_deviation[1] > 0.01


def test_bytes_by_hand(run):
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head dim x float32
    assert run.full_bytes == 24 * per_token
    zero, half, whole = run.shares
    assert zero.kv_bytes == (24 - 8) * per_token  # the second occurrence is not held
    assert half.recomputed_tokens == 4 and half.kv_bytes == (24 - 8 + 4) * per_token
    assert whole.kv_bytes == run.full_bytes
    assert zero.index_bytes == 2 * 8 * (16 + 3)  # per layer: a position per held entry, one link of 3 ints
    assert half.index_bytes == 2 * 8 * (20 + 3)


def test_kl_and_top1_against_a_float64_recomputation(run):
    full = torch.log_softmax(run.full_logprobs.double(), -1)
    for result in run.shares:
        mine = torch.log_softmax(result.logprobs.double(), -1)
        kl = (full.exp() * (full - mine)).sum(-1)
        assert result.kl == pytest.approx(kl.tolist(), abs=1e-6)
        assert result.top1 == (full.argmax(-1) == mine.argmax(-1)).tolist()
        assert len(result.kl) == 3
    assert run.shares[0].kl[0] > 1e-7  # the copy changes what the model says next


def test_recompute_all_equals_the_full_cache(run, tiny_llama):
    whole = run.shares[-1]
    assert max(whole.kl) < 1e-6 and all(whole.top1)
    assert torch.allclose(whole.logprobs, run.full_logprobs, atol=1e-5)


def test_the_cache_holds_one_copy(tiny_llama):
    """A DedupCache with the passage linked: its tensors hold 13 entries, attention reads 21."""
    cache = DedupCache(2, rerotate_fn(tiny_llama))
    with torch.no_grad():
        tiny_llama(input_ids=torch.tensor([IDS[:13]]), position_ids=torch.arange(13)[None], use_cache=True,
                   **{cache_keyword(tiny_llama): cache})
        for layer in cache.layers:
            layer.append_copy(Repeat(2, 13, 8), [], None, None)
    for layer in cache.layers:
        assert layer.keys.shape[-2] == 13 and layer.get_seq_length() == 21
        keys, values = layer.assembled()
        assert keys.shape[-2] == 21 and torch.equal(values[:, :, 13:21], values[:, :, 2:10])


def test_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="nothing to deduplicate"):
        run_dedup(tiny_llama, list(range(20)), min_len=4)
    with pytest.raises(ValueError, match="between 0 and 1"):
        run_dedup(tiny_llama, IDS, min_len=4, shares=(1.5,))
    with pytest.raises(ValueError, match="ends with a repeat"):
        run_dedup(tiny_llama, [*PASSAGE, 1, *PASSAGE], min_len=4, new_tokens=1)
    assert math.isfinite(sum(run_dedup(tiny_llama, IDS, min_len=4, shares=(0.0,), new_tokens=1).shares[0].kl))
