"""Waste and fits-in-budget on hand-computed requests (one byte per token, so bytes = tokens)."""

import pytest

from kvviz.paged.waste import Sized, waste

A = Sized(prompt_ids=list(range(100, 110)), generated_ids=list(range(6)), max_new_tokens=8)  # 16 tokens
B = Sized(prompt_ids=list(range(200, 210)), generated_ids=[1, 2, 3], max_new_tokens=8)  # 13, stopped early


def test_waste_by_hand():
    w = waste([A, B], bytes_per_token=1, max_context=100, block_sizes=(8, 16, 32))
    assert w["used_bytes"] == 29
    assert w["reserve_max"] == pytest.approx(1 - 29 / 200)  # 2 x 100 reserved
    assert w["exact"] == pytest.approx(1 - 29 / 36)  # (10 + 8) x 2 reserved
    # blocks of 8: A 2 full blocks, B 2 blocks holding 8 + 5: 32 slots; of 16: 1 + 1; of 32: 1 + 1
    assert w["paged"] == pytest.approx({"8": 3 / 32, "16": 3 / 32, "32": 1 - 29 / 64})
    assert w["reserved_bytes"]["paged"] == {"8": 32, "16": 32, "32": 64}


def test_a_shared_prefix_is_stored_once():
    c = Sized(prompt_ids=A.prompt_ids, generated_ids=[50, 51], max_new_tokens=8)  # 12 tokens, same prompt as A
    w = waste([A, c], bytes_per_token=1, max_context=100, block_sizes=(4,))
    # blocks of 4: A [100-103] [104-107] [108 109 0 1] [2-5]; c shares the first two (the third
    # holds other tokens after 109) and takes one more [108 109 50 51]: 5 blocks, 20 slots, all full
    assert w["reserved_bytes"]["paged"]["4"] == 20 and w["paged"]["4"] == 0.0
    assert w["used_bytes"] == 28  # the contiguous schemes hold the shared prompt twice


def test_how_many_fit_a_budget():
    w = waste([A, B], bytes_per_token=1, max_context=100, block_sizes=(8,), budget_bytes=40)
    assert w["fits"] == {"requests": 2, "reserve_max": 0, "exact": 2, "static_batch": 2, "paged": {"8": 2}}  # 2 x 16
    w = waste([A, B], bytes_per_token=1, max_context=100, block_sizes=(8,), budget_bytes=30)
    assert w["fits"] == {"requests": 2, "reserve_max": 0, "exact": 1, "static_batch": 1, "paged": {"8": 1}}  # 3 blocks: A takes 2
    w = waste([A, B], bytes_per_token=1, max_context=10, block_sizes=(8, 32), budget_bytes=30)
    assert w["fits"]["reserve_max"] == 2 and w["fits"]["paged"] == {"8": 1, "32": 0}


def test_static_batch_pads_to_the_longest_prompt_and_output():
    short = Sized(prompt_ids=[1, 2, 3], generated_ids=[4], max_new_tokens=8)  # 4 tokens
    w = waste([A, B, short], bytes_per_token=2, max_context=100, block_sizes=(8,))
    # one batch of 3: longest prompt 10, longest output 6 (A): 3 x 16 = 48 slots for 16 + 13 + 4 = 33 tokens
    assert w["reserved_bytes"]["static_batch"] == 96 and w["static_batch"] == pytest.approx(1 - 33 / 48)
    # batches of 2: [A, B] 2 x (10 + 6) = 32, [short] 1 x (3 + 1) = 4: only the first batch pads
    w2 = waste([A, B, short], bytes_per_token=2, max_context=100, block_sizes=(8,), batch_size=2)
    assert w2["reserved_bytes"]["static_batch"] == 72 and w2["static_batch"] == pytest.approx(1 - 33 / 36)
    # one request per batch: nothing is padded
    assert waste([A, B, short], 1, 100, (8,), batch_size=1)["static_batch"] == 0.0


def test_static_batch_fits_a_budget_in_order():
    long = Sized(prompt_ids=list(range(40)), generated_ids=[1, 2], max_new_tokens=8)  # 42 tokens
    # A alone 16; A + B 2 x 16 = 32; A + B + long 3 x (40 + 6) = 138
    fits = [waste([A, B, long], 1, 1000, (8,), budget_bytes=b)["fits"]["static_batch"] for b in (15, 16, 32, 137, 138)]
    assert fits == [0, 1, 2, 2, 3]
