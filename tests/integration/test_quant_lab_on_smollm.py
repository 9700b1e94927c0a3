"""The quantization lab on SmolLM2's real cache: the cache read equals transformers' own, errors and
KL agree with a float64 recomputation, bytes with hand arithmetic, and per-channel keys beat
per-token keys (measured)."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from kvviz.model import capture
from kvviz.record import examples as data
from kvviz.runtime import engine
from kvviz.quant_lab import run as lab
from kvviz.record.text import encode_prompt

N = 64  # tokens: a multiple of every group size used below, so every scheme quantizes every token


@pytest.fixture(scope="module")
def ids(smollm):
    ids = encode_prompt(smollm.tokenizer, data.EXAMPLES["Long document: history of lighthouses"])
    assert len(ids) >= N
    return ids[:N]


@pytest.fixture(scope="module")
def layers(smollm, ids):
    return {layer: lab.read_layer(smollm.model, ids, layer) for layer in (0, 15, 29)}


def test_the_cache_read_is_transformers_own(smollm, ids, layers):
    cache = DynamicCache(config=smollm.model.config)
    with torch.inference_mode():
        smollm.model(input_ids=torch.tensor([ids]), use_cache=True, **{engine.cache_keyword(smollm.model): cache})  # a whole, plain forward
    for layer, lc in layers.items():
        assert torch.equal(lc.keys, cache.layers[layer].keys[0]) and torch.equal(lc.values, cache.layers[layer].values[0])
        qk = capture.capture_layers(smollm.model, ids, [layer])[layer]
        assert torch.equal(lc.keys, qk.k)  # keys as cached are post-RoPE: capture's rotated keys
        assert lc.queries.shape == (9, N, 64)


def float64_quantized(x: np.ndarray, bits: int, group: int, axis: str) -> np.ndarray:
    """Asymmetric min/max quantization in float64, written out: x (heads, n, d)."""
    levels = 2**bits - 1
    if axis == "per_channel":
        g = x.reshape(x.shape[0], -1, group, x.shape[2])  # (heads, n / G, G tokens, d)
        lo, hi = g.min(axis=2, keepdims=True), g.max(axis=2, keepdims=True)
    else:
        g = x.reshape(x.shape[0], x.shape[1], -1, group)  # (heads, n, d / G, G channels)
        lo, hi = g.min(axis=3, keepdims=True), g.max(axis=3, keepdims=True)
    scale = np.maximum((hi - lo) / levels, np.finfo(np.float32).tiny)
    return (np.clip(np.round((g - lo) / scale), 0, levels) * scale + lo).reshape(x.shape)


def relative(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(x)


@pytest.mark.parametrize("axis", ["per_token", "per_channel"])
def test_errors_and_attention_kl_against_float64(layers, axis):
    lc = layers[15]
    result = lab.evaluate(lc, lab.Scheme(axis, 4, 32))
    keys, values = lc.keys.double().numpy(), lc.values.double().numpy()
    k_hat, v_hat = float64_quantized(keys, 4, 32, axis), float64_quantized(values, 4, 32, axis)
    assert result.key_error == pytest.approx(relative(keys, k_hat), rel=1e-3)
    assert result.value_error == pytest.approx(relative(values, v_hat), rel=1e-3)
    # attention rows of the real queries, causal, 3 query heads per KV head, by hand in float64
    q = lc.queries.double().numpy()
    kl = []
    for h in range(9):
        logits, logits_hat = (q[h] @ keys[h // 3].T) / 8, (q[h] @ k_hat[h // 3].T) / 8  # 1 / sqrt(64)
        mask = np.triu(np.ones((N, N), bool), 1)
        p = np.exp(np.where(mask, -np.inf, logits - logits.max(1, keepdims=True)))
        p_hat = np.exp(np.where(mask, -np.inf, logits_hat - logits_hat.max(1, keepdims=True)))
        p, p_hat = p / p.sum(1, keepdims=True), p_hat / p_hat.sum(1, keepdims=True)
        kl.append(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(np.where(p > 0, p_hat, 1))), 0).sum(1))
    assert result.attention_kl == pytest.approx(np.mean(kl), rel=0.02, abs=1e-6)
    assert lab.attention_effect(lc, lc.keys, lc.values) == (pytest.approx(0, abs=1e-6), 0.0)


def test_bytes_stored_by_hand(layers):
    lc = layers[0]
    # 3 KV heads x 64 tokens x (64 x 4 / 8 bytes of codes + 2 groups x a scale and a zero point of 4 bytes), K and V
    per_token = lab.evaluate(lc, lab.Scheme("per_token", 4, 32))
    assert per_token.bytes == 2 * 3 * N * (32 + 2 * 2 * 4)
    # per channel: 64 / 32 = 2 groups of tokens x 64 channels x a scale and a zero point
    per_channel = lab.evaluate(lc, lab.Scheme("per_channel", 4, 32))
    assert per_channel.bytes == 2 * 3 * (N * 32 + 2 * 64 * 2 * 4) == per_token.bytes
    assert per_token.bytes_full == 2 * 3 * N * 64 * 4


def test_per_channel_keys_beat_per_token_keys_on_the_real_cache(layers):
    """KIVI's premise, measured on SmolLM2 (not assumed): at the same bits, group size and bytes,
    keys quantized per channel reconstruct better than per token, and distort attention less."""
    for layer, lc in layers.items():
        m, results = lab.error_grid(lc, bits=(4, 2), token_groups=(32,), channel_groups=(32,))
        assert m == N
        by = {(r.scheme.axis, r.scheme.bits): r for r in results}
        for bits in (4, 2):
            tok, chan = by[("per_token", bits)], by[("per_channel", bits)]
            assert chan.bytes == tok.bytes
            assert chan.key_error < tok.key_error, (layer, bits)
            assert chan.attention_kl < tok.attention_kl, (layer, bits)
        assert len(lab.channel_stats(lc, 0)["key_outliers"]) >= 1  # the channels that make it so


def test_kivi_window_keeps_the_newest_values_exact(layers):
    lc = layers[15]
    key_err, value_err, keys_full, values_full = lab.token_errors(lc, 1, lab.Scheme("kivi", 2, 32, 16))
    assert (keys_full, values_full) == (N % 16, 16)
    assert np.all(value_err[-16:] == 0) and np.all(value_err[:-16] > 0)
    assert np.all(key_err > 0)  # 64 = 4 whole groups of 16: every key is quantized


def test_next_token_kl_grows_as_bits_shrink(smollm, ids):
    schemes = [lab.Scheme("per_token", 8, 32), lab.Scheme("per_token", 2, 32), lab.Scheme("kivi", 2, 32, 16)]
    results = lab.next_token_kl(smollm.model, smollm.tokenizer, ids[:40], schemes, new_tokens=3)
    eight, two, kivi = results
    assert eight.kl.shape == (3,)
    assert eight.kl.mean() < 0.01 < two.kl.mean()
    assert kivi.kv_bytes < kivi.kv_bytes_full and two.kv_bytes < eight.kv_bytes
    assert two.kv_bytes_full == 30 * 2 * 3 * 42 * 64 * 4  # 40 prompt tokens + 2 fed, fp32
