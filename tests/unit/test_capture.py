"""kvviz.model.capture and kvviz.attention.maps on a tiny random Llama: the attention computed from
queries and keys equals transformers' eager attention, pooling equals pooling the full matrix,
and no hook outlives a pass."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from kvviz.attention import maps as attention_maps
from kvviz.model import capture
from kvviz.attention.maps import AttentionView, pool_matrix
from kvviz.model.capture import CaptureError

SEQ = 41  # not a multiple of any tile size used below


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (SEQ,), generator=torch.Generator().manual_seed(1)).tolist()


@pytest.fixture(scope="module")
def eager(tiny_llama, ids):
    """transformers' own attention weights: (layers, heads, seq, seq) numpy."""
    ref = copy.deepcopy(tiny_llama)
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])


@pytest.fixture(scope="module")
def qks(tiny_llama, ids):
    return capture.capture_layers(tiny_llama, ids, [0, 1], prompt_len=30)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_capture_equals_eager_attention(tiny_llama, qks, eager):
    assert sorted(qks) == [0, 1]
    for layer in range(2):
        qk = qks[layer]
        assert qk.q.shape == (4, SEQ, 16) and qk.k.shape == (2, SEQ, 16)
        assert qk.group_size == 2 and qk.prompt_len == 30
        for head in range(4):
            mine = attention_maps.full_attention(qk, head)
            np.testing.assert_allclose(mine, eager[layer, head], atol=1e-5, rtol=0)
            assert np.all(np.triu(mine, 1) == 0)  # causal
            np.testing.assert_allclose(mine.sum(1), 1, atol=1e-5)


def test_gqa_mapping(qks):
    qk = qks[0]
    assert [qk.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    view = attention_maps.attention_view(qk, 3)
    assert view.kv_head == 1


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("max_cells", [1, 4, 7, 16, 100])
def test_pooled_tiles_equal_pooled_full_matrix(qks, eager, pool, max_cells):
    view = attention_maps.attention_view(qks[1], 2, max_cells=max_cells, pool=pool)
    expected_tile = int(np.ceil(SEQ / max_cells))
    assert view.tile == expected_tile
    assert view.values.shape == (int(np.ceil(SEQ / expected_tile)),) * 2
    np.testing.assert_allclose(view.values, pool_matrix(eager[1, 2], view.tile, pool), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("q_range,k_range", [((10, 35), (3, 29)), ((0, 41), (40, 41)), ((17, 18), (0, 41)), ((33, 41), (33, 41))])
def test_window_views_pool_the_window(qks, eager, q_range, k_range):
    (qa, qb), (ka, kb) = q_range, k_range
    for pool in ("max", "mean"):
        view = attention_maps.attention_view(qks[0], 1, q_range=q_range, k_range=k_range, max_cells=5, pool=pool)
        expected = pool_matrix(eager[0, 1][qa:qb, ka:kb], view.tile, pool, q_start=qa, k_start=ka)
        np.testing.assert_allclose(view.values, expected, atol=1e-6, equal_nan=True)
        assert (view.q_start, view.q_stop, view.k_start, view.k_stop) == (qa, qb, ka, kb)


def test_small_window_is_full_resolution(qks, eager):
    view = attention_maps.attention_view(qks[0], 0, q_range=(20, 40), k_range=(20, 40), max_cells=32)
    assert view.tile == 1
    expected = np.where(np.tril(np.ones((20, 20), bool)), eager[0, 0][20:40, 20:40], np.nan)
    np.testing.assert_allclose(view.values, expected, atol=1e-6, equal_nan=True)


def test_pool_matrix_arithmetic():
    a = np.array(
        [
            [1.0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.2, 0.3, 0.5, 0, 0],
            [0.1, 0.1, 0.4, 0.4, 0],
            [0.4, 0.3, 0.1, 0.1, 0.1],
        ]
    )
    mean = pool_matrix(a, 2, "mean")
    # tile (0,0) sees cells (0,0), (1,0), (1,1): mean of 1, .5, .5; tile (0,1) and (0,2), (1,2) see nothing
    np.testing.assert_allclose(mean[0], [2 / 3, np.nan, np.nan])
    np.testing.assert_allclose(mean[1], [0.175, (0.5 + 0.4 + 0.4) / 3, np.nan])
    np.testing.assert_allclose(mean[2], [0.35, 0.1, 0.1])  # row 4 alone: (.4+.3)/2, (.1+.1)/2, .1
    mx = pool_matrix(a, 2, "max")
    np.testing.assert_allclose(mx, [[1, np.nan, np.nan], [0.3, 0.5, np.nan], [0.4, 0.1, 0.1]])


def test_chunking_does_not_change_results(qks):
    qk = qks[1]
    big = attention_maps.attention_view(qk, 1, max_cells=6, pool="mean")
    small = attention_maps.attention_view(qk, 1, max_cells=6, pool="mean", chunk_elements=1)  # one tile row per chunk
    np.testing.assert_allclose(small.values, big.values, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(small.key_score, big.key_score, atol=1e-5)
    np.testing.assert_allclose(small.row_entropy, big.row_entropy, atol=1e-5)


def test_statistics_over_all_queries(qks, eager):
    a = eager[1, 3].astype(np.float64)
    evicted = np.zeros(SEQ, dtype=bool)
    evicted[[2, 5, 6, 30]] = True
    view = attention_maps.attention_view(qks[1], 3, q_range=(30, 41), k_range=(30, 41), evicted=evicted)
    np.testing.assert_allclose(view.key_score, a.sum(0), atol=1e-5)  # H2O score: every query counts
    ent = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(1)
    np.testing.assert_allclose(view.row_entropy, ent, atol=1e-5)
    np.testing.assert_allclose(view.evicted_mass, a[:, evicted].sum(1), atol=1e-6)
    assert view.prompt_len == 30  # from the capture
    ref = AttentionView.from_matrix(a, q_range=(30, 41), k_range=(30, 41), evicted=evicted, prompt_len=30)
    np.testing.assert_allclose(view.values, ref.values, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(view.evicted_mass, ref.evicted_mass, atol=1e-6)


def test_attention_rows(qks, eager):
    rows = attention_maps.attention_rows(qks[0], 2, [0, 7, 40])
    np.testing.assert_allclose(rows, eager[0, 2][[0, 7, 40]], atol=1e-5)


def test_generated_tokens_are_part_of_the_sequence(tiny_llama, ids):
    """A prompt plus generated tokens is captured as one sequence; prompt_len marks the boundary."""
    with torch.no_grad():
        gen = tiny_llama.generate(torch.tensor([ids[:30]]), max_new_tokens=6, do_sample=False)[0].tolist()
    qk = capture.capture_layers(tiny_llama, gen, [1], prompt_len=30)[1]
    assert qk.seq_len == 36
    ref = copy.deepcopy(tiny_llama)
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        att = ref(torch.tensor([gen]), output_attentions=True).attentions[1][0, 0].numpy()
    np.testing.assert_allclose(attention_maps.attention_rows(qk, 0, range(30, 36)), att[30:36], atol=1e-5)
    assert attention_maps.attention_view(qk, 0).prompt_len == 30


def test_overview_thumbnails_and_profiles(tiny_llama, ids, eager):
    ov = attention_maps.overview(tiny_llama, ids, cells=8, pool="mean", sink_tokens=3, local_tokens=5, prompt_len=30)
    assert ov.tile == 6 and ov.thumbs.shape == (2, 4, 7, 7)
    p = ov.profiles
    assert p.from_query == 5 and p.n_kv_heads == 2
    for layer in range(2):
        for head in range(4):
            a = eager[layer, head].astype(np.float64)
            np.testing.assert_allclose(ov.thumbs[layer, head], pool_matrix(a, 6, "mean"), atol=1e-6, equal_nan=True)
            rows = np.arange(5, SEQ)
            sink = a[rows, :3].sum(1).mean()
            local = np.mean([a[i, max(0, i - 4) : i + 1].sum() for i in rows])
            ent = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(1)[rows]
            dist = np.mean([(a[i, : i + 1] * (i - np.arange(i + 1))).sum() for i in rows])
            assert p.sink_mass[layer, head] == pytest.approx(sink, abs=1e-5)
            assert p.local_mass[layer, head] == pytest.approx(local, abs=1e-5)
            assert p.entropy[layer, head] == pytest.approx(ent.mean(), abs=1e-5)
            assert p.norm_entropy[layer, head] == pytest.approx((ent / np.log(rows + 1)).mean(), abs=1e-5)
            assert p.mean_distance[layer, head] == pytest.approx(dist, abs=1e-4)
    assert ov.qk == {}  # keep_qk_bytes=0
    assert len(p.rows()) == 8 and p.rows()[5] | {} == p.rows()[5]
    assert p.rows()[5]["layer"] == 1 and p.rows()[5]["head"] == 1 and p.rows()[5]["kv_head"] == 0


def test_overview_max_pooling_and_kept_queries_and_keys(tiny_llama, ids, eager, qks):
    ov = attention_maps.overview(tiny_llama, ids, cells=10, pool="max", keep_qk_bytes=1 << 30)
    np.testing.assert_allclose(ov.thumbs[1, 3], pool_matrix(eager[1, 3], ov.tile, "max"), atol=1e-6, equal_nan=True)
    assert sorted(ov.qk) == [0, 1]
    torch.testing.assert_close(ov.qk[1].q, qks[1].q)
    one_layer = qks[0].nbytes()
    assert sorted(attention_maps.overview(tiny_llama, ids, keep_qk_bytes=one_layer).qk) == [0]


def test_hooks_are_removed(tiny_llama, ids):
    before = _hook_count(tiny_llama)
    capture.capture_layers(tiny_llama, ids, [0])
    attention_maps.overview(tiny_llama, ids, keep_qk_bytes=1 << 20)
    assert _hook_count(tiny_llama) == before == 0


def test_hooks_are_removed_when_a_pass_fails(tiny_llama, ids, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(capture, "_layer_qk", broken)
    with pytest.raises(RuntimeError, match="boom"):
        capture.capture_layers(tiny_llama, ids, [1])
    assert _hook_count(tiny_llama) == 0


def test_pass_stops_after_the_deepest_layer(tiny_llama, ids):
    calls = []
    handle = capture.attention_modules(tiny_llama)[1].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        capture.capture_layers(tiny_llama, ids, [0])
        assert calls == []
        capture.capture_layers(tiny_llama, ids, [1])
        assert calls == [1]
    finally:
        handle.remove()


def test_hooks_ignore_other_threads(tiny_llama, ids):
    """A run of another session on the shared model, while a capture's hooks are attached, is
    neither stopped early nor read."""
    seen, other = [], {}

    def on_layer(layer, qk):
        seen.append(layer)
        if layer == 0:
            def run():
                with torch.no_grad():
                    other["logits"] = tiny_llama(torch.tensor([ids])).logits

            t = threading.Thread(target=run)
            t.start()
            t.join()

    capture._run_with_hooks(tiny_llama, ids, [0, 1], on_layer)
    assert seen == [0, 1]
    assert other["logits"].shape == (1, SEQ, 128)


def test_bad_input(tiny_llama, qks, ids):
    with pytest.raises(CaptureError, match="Layer out of range"):
        capture.capture_layers(tiny_llama, ids, [2])
    with pytest.raises(CaptureError, match="Head 4 out of range"):
        attention_maps.attention_view(qks[0], 4)
    with pytest.raises(CaptureError, match="window"):
        attention_maps.attention_view(qks[0], 0, q_range=(10, 10))
    with pytest.raises(CaptureError, match="window"):
        attention_maps.attention_view(qks[0], 0, k_range=(0, SEQ + 1))
    with pytest.raises(CaptureError, match="pool"):
        attention_maps.attention_view(qks[0], 0, pool="median")
    with pytest.raises(CaptureError, match="evicted"):
        attention_maps.attention_view(qks[0], 0, evicted=np.zeros(3, bool))
    with pytest.raises(CaptureError, match="No tokens"):
        capture.capture_layers(tiny_llama, [], [0])
    assert _hook_count(tiny_llama) == 0


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_overview_pools_a_tile_row_met_in_parts(tiny_llama, ids, eager, pool):
    """A budget of scores smaller than one tile row's: each tile row is computed in parts (a long
    sequence's tiles are long), and the thumbnails and profiles are what whole tile rows give."""
    whole = attention_maps.overview(tiny_llama, ids, cells=4, pool=pool)
    parts = attention_maps.overview(tiny_llama, ids, cells=4, pool=pool, chunk_elements=3 * 4 * SEQ)  # 3 rows of an 11-row tile
    assert whole.tile == 11 and attention_maps._rows_per_chunk(4, SEQ, 11, 3 * 4 * SEQ, whole_tiles=False) == 3
    np.testing.assert_allclose(parts.thumbs[1, 2], pool_matrix(eager[1, 2].astype(np.float64), 11, pool), atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(parts.thumbs, whole.thumbs, atol=1e-6, equal_nan=True)
    for name in ("sink_mass", "local_mass", "entropy", "mean_distance"):
        np.testing.assert_allclose(getattr(parts.profiles, name), getattr(whole.profiles, name), rtol=1e-5, atol=1e-6)
