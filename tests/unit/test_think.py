"""The think store on hand-made tensors: which channels it drops, what it holds, its bytes and
its key error, each against arithmetic done here in float64."""

import torch

from kvviz.policies import build


def store_after(queries, keys, values, ratio, window):
    storage = build("think", {"channel_ratio": ratio, "window": window}).storage
    store = storage.make_store(0, 1, keys.shape[0], keys.shape[-1], keys.dtype, keys.device)
    store.observe_queries(queries)
    store.append(keys, values)
    return store


def test_drops_the_lowest_query_times_key_channels_and_holds_the_rest():
    # 1 KV head, 2 query heads, head_dim 4, 3 keys. Channel scores by hand:
    # q² over the last 2 queries, mean over the window then over the heads; k² mean over the keys.
    q = torch.tensor([[[9.0, 9.0, 9.0, 9.0], [1.0, 2.0, 0.0, 3.0], [1.0, 2.0, 0.0, 3.0]],
                      [[9.0, 9.0, 9.0, 9.0], [1.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 1.0]]])  # first query outside the window
    k = torch.tensor([[[1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.5]]])
    # q_norm = [(1+1)/2, (4+0)/2, (0+4)/2, (9+1)/2] = [1, 2, 2, 5]; k_norm = [1, 1, 1, .25]
    # scores = [1, 2, 2, 1.25]: the two lowest are channels 0 and 3
    v = torch.arange(12.0).view(1, 3, 4)
    store = store_after(q, k, v, ratio=0.5, window=2)
    assert store.channels.tolist() == [[1, 2]]
    assert store.keys.shape == (1, 3, 2)
    keys, values = store.materialize()
    assert torch.equal(keys, torch.tensor([[[0.0, 1.0, 1.0, 0.0]] * 3]))
    assert torch.equal(values, v)
    # bytes: keys 3 x 2 floats, values 3 x 4 floats, the channel index 2 longs
    assert store.nbytes() == 3 * 2 * 4 + 3 * 4 * 4 + 2 * 8
    # key error: the pruned channels' energy over all of it, sqrt(3 * (1 + .25) / (3 * 3.25))
    assert abs(store.error().key - (1.25 / 3.25) ** 0.5) < 1e-6
    assert store.error().value == 0.0


def test_generated_keys_lose_the_same_channels_and_eviction_gathers_rows():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(6, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    store = store_after(q, k, v, ratio=0.25, window=4)
    channels = store.channels.clone()
    new_k, new_v = torch.randn(2, 1, 8, generator=g), torch.randn(2, 1, 8, generator=g)
    store.append(new_k, new_v)
    assert torch.equal(store.channels, channels)  # fixed at prefill
    all_k = torch.cat([k, new_k], dim=1)
    for h in range(2):
        assert torch.equal(store.keys[h], all_k[h][:, channels[h]])
    keep = torch.tensor([[0, 3, 10], [1, 2, 9]])
    store.keep(keep)
    keys, values = store.materialize()
    for h in range(2):
        want = torch.zeros(3, 8)
        want[:, channels[h]] = all_k[h, keep[h]][:, channels[h]]
        assert torch.equal(keys[h], want)
        assert torch.equal(values[h], torch.cat([v, new_v], dim=1)[h, keep[h]])
