"""The block manager on hand-made requests: every expected table, reference count and copy is
worked out by hand in the comments."""

import pytest

from kvviz.paged.block_manager import BlockManager, PoolTooSmall, block_hash


def admit(m: BlockManager, rid: str, tokens: list[int]) -> list[int]:
    hit = m.allocate(rid, tokens)
    m.append(rid, tokens[hit:])
    m.check()
    return m.tables[rid]


def kinds(m: BlockManager, kind: str) -> list:
    return [e for e in m.events if e.kind == kind]


def test_shared_prefix_shares_physical_blocks():
    m = BlockManager(num_blocks=10, block_size=4)
    a = admit(m, "a", list(range(1, 11)))  # 10 tokens: blocks 0 [1-4], 1 [5-8], 2 [9 10]
    assert a == [0, 1, 2]
    b = admit(m, "b", list(range(1, 9)) + [20, 21, 22])  # same 8 first tokens, then its own
    assert b == [0, 1, 3]
    assert [m.blocks[i].ref_count for i in range(4)] == [2, 2, 1, 1]
    assert [(e.request, e.block) for e in kinds(m, "prefix_hit")] == [("b", 0), ("b", 1)]
    assert m.used == 4 and m.slots("b", 8) == [12, 13, 14]  # block 3, offsets 0-2


def test_same_tokens_after_a_different_prefix_get_no_block():
    m = BlockManager(num_blocks=10, block_size=4)
    admit(m, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    c = admit(m, "c", [50, 51, 52, 53, 5, 6, 7, 8, 9])
    assert m.blocks[c[1]].token_ids == m.blocks[1].token_ids == [5, 6, 7, 8]  # same tokens...
    assert c[1] != 1 and not kinds(m, "prefix_hit")  # ...but a different block: the chain differs
    assert block_hash(None, [1, 2, 3, 4]) != block_hash(None, [50, 51, 52, 53])
    assert m.blocks[1].ref_count == 1


def test_the_last_token_is_always_computed():
    m = BlockManager(num_blocks=10, block_size=4)
    admit(m, "a", list(range(8)))
    assert m.allocate("b", list(range(8))) == 4  # one block of two: the 8th token's logits are needed


def test_freed_prefix_stays_cached_and_is_evicted_lru_first():
    m = BlockManager(num_blocks=4, block_size=2)
    admit(m, "a", [1, 2, 3, 4, 5])  # blocks 0 [1 2], 1 [3 4] (both registered), 2 [5]
    m.free("a")  # released tail first: 2 -> free, then 1 and 0 -> cached, 1 the least recent
    m.check()
    assert list(m.cached_ids) == [1, 0] and list(m.free_ids) == [3, 2]
    assert m.used == 0 and m.available == 4
    admit(m, "x", [7, 7, 8, 8, 9, 9])  # 3 blocks: 3 and 2 from the free list, then cached 1 is evicted
    assert m.tables["x"] == [3, 2, 1]
    assert [e.block for e in kinds(m, "evict_cached")] == [1]
    assert m.allocate("y", [1, 2, 3]) == 2  # block 0 still holds [1 2]: a hit on a cached block
    assert m.tables["y"] == [0] and m.blocks[0].ref_count == 1
    m.check()


def test_copy_on_write_copies_exactly_the_written_block():
    m = BlockManager(num_blocks=10, block_size=4)
    admit(m, "p", [1, 2, 3, 4, 5, 6])  # block 0 full, block 1 holds [5 6]
    for k in range(3):
        m.fork("p", f"s{k}")
    m.free("p")  # parallel sampling: the parent is not decoded itself
    assert m.blocks[0].ref_count == 3 and m.blocks[1].ref_count == 3
    assert m.append("s0", [7]) == [2 * 4 + 2]  # copy of block 1 into block 2, slot offset 2
    assert m.copies == [("s0", 1, 2)] and m.blocks[2].token_ids == [5, 6, 7]
    m.append("s1", [8])  # block 1 still shared by s1 and s2: copied again
    m.append("s2", [9])  # now s2 holds block 1 alone: written in place
    assert m.copies == [("s0", 1, 2), ("s1", 1, 3)]
    assert [m.tables[f"s{k}"] for k in range(3)] == [[0, 2], [0, 3], [0, 1]]
    assert m.blocks[0].ref_count == 3 and m.blocks[1].token_ids == [5, 6, 9]
    assert len(kinds(m, "cow")) == 2
    m.check()


def test_appending_into_a_fresh_block_needs_no_copy():
    m = BlockManager(num_blocks=10, block_size=2)
    admit(m, "p", [1, 2, 3, 4])  # two full blocks
    m.fork("p", "q")
    assert m.blocks_to_append("q", 1) == 1
    m.append("q", [5])
    assert m.copies == [] and m.tables["q"] == [0, 1, 2]


def test_no_block_is_lost_when_everything_finishes():
    m = BlockManager(num_blocks=12, block_size=4)
    admit(m, "a", list(range(10)))
    admit(m, "b", list(range(9)) + [77])
    m.fork("b", "b2")
    m.append("b2", [5, 6, 7])
    m.append("a", [1, 2, 3])
    for rid in ("a", "b", "b2"):
        m.free(rid)
        m.check()
    assert m.used == 0 and not m.tables
    assert all(b.ref_count == 0 for b in m.blocks)
    assert sorted(list(m.free_ids) + list(m.cached_ids)) == list(range(12))
    # a: 4 blocks (13 tokens); b: 2 shared with a + 1 own [8 77]; b2: a copy of that one
    # [8 77 5 6] and a new block [7]
    assert m.peak_used == 7


def test_dropped_block_leaves_a_hole_in_the_table():
    m = BlockManager(num_blocks=6, block_size=2)
    admit(m, "a", [1, 2, 3, 4, 5])  # [0, 1, 2]
    m.drop("a", 1)
    assert m.tables["a"] == [0, None, 2] and m.slots("a") == [0, 1, 4]
    assert 1 in m.cached_ids  # still holds a hashed prefix: reusable by others
    m.drop("a", 2)  # the partial last block: the next token opens a new block
    m.append("a", [6])
    assert m.tables["a"] == [0, None, None, 3] and m.slots("a") == [0, 1, 6]
    m.check()


def test_pool_too_small_is_a_clear_error():
    with pytest.raises(PoolTooSmall, match="block size"):
        BlockManager(num_blocks=4, block_size=0)
    with pytest.raises(PoolTooSmall, match="at least one block"):
        BlockManager(num_blocks=0, block_size=4)
    m = BlockManager(num_blocks=2, block_size=4)
    assert not m.can_allocate(list(range(9)))  # 3 blocks
    m.allocate("a", list(range(9)))
    with pytest.raises(PoolTooSmall, match="no free block"):
        m.append("a", list(range(9)))
    assert m.used == 0  # nothing was taken by the failed append


def test_invariants_catch_a_wrong_reference_count():
    m = BlockManager(num_blocks=4, block_size=2)
    admit(m, "a", [1, 2, 3])
    m.blocks[0].ref_count += 1
    with pytest.raises(AssertionError, match="ref_count"):
        m.check()
