"""Which physical block of the pool holds which request's tokens: vLLM's block manager, in plain
containers (no tensors: the pool in ``cache.py`` holds the keys and values).

  slot         one token's place in the pool: ``block_id * block_size + offset``
  block table  a request's physical block ids, logical block i -> ``table[i]``; ``None`` where a
               token-eviction policy emptied the block (the request reads nothing there)
  ref_count    how many block tables hold the block
  free         ref_count 0, holding nothing worth keeping
  cached       ref_count 0, but a full block registered in the prefix table: a later request
               whose prompt starts with the same tokens takes it back (a prefix hit); when no
               free block is left the least recently freed cached block is reused (evicted)

Prefix caching keys every full block by a chained hash of the parent block's hash and this
block's token ids, so the same tokens after a different prefix never match. Appending to a block
that other tables share (parallel sampling forks a request) copies it first: copy-on-write.
Every change is also a typed event (``events.py``), so a page can step through what happened.
The tables live here only: a request's table while it holds blocks, and the last one after.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kvviz.i18n import _
from kvviz.paged.events import (
    BlockAllocated, BlockCopied, BlockDropped, CachedBlockEvicted, Event, PrefixHit,
)


class PoolTooSmall(ValueError):
    """The pool cannot hold what was asked of it (a single request, or one more block)."""


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    token_ids: list[int] = field(default_factory=list)  # the tokens written, one per filled slot
    hash: str | None = None  # chained hash, set once the block is full (the prefix table may hold it)


def block_hash(parent: str | None, token_ids: list[int]) -> str:
    """Chained hash of a full block: depends on every token before it through ``parent``."""
    return hashlib.blake2b(f"{parent}|{','.join(map(str, token_ids))}".encode(), digest_size=8).hexdigest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if block_size < 1:
            raise PoolTooSmall(_("block size must be at least 1, not {n}.").format(n=block_size))
        if num_blocks < 1:
            raise PoolTooSmall(_("the pool needs at least one block, not {n}.").format(n=num_blocks))
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.cached_ids: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        self.hash_to_block: dict[str, int] = {}
        self.tables: dict[str, list[int | None]] = {}
        self.last_tables: dict[str, list[int | None]] = {}  # the table a request held when it gave its blocks back
        self.tokens: dict[str, list[int]] = {}  # tokens written to the cache, per request
        self.hashing: dict[str, bool] = {}  # whether the request's newly filled blocks are registered
        self.copies: list[tuple[str, int, int]] = []  # (request, src, dst) copies the pool still has to make
        self.events: list[Event] = []
        self.step = 0
        self.peak_used = 0

    # -- sizes ----------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def available(self) -> int:
        """Blocks a request could take now: free ones and cached ones (which are then evicted)."""
        return len(self.free_ids) + len(self.cached_ids)

    @property
    def used(self) -> int:
        return self.num_blocks - self.available

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # -- admitting a request --------------------------------------------------------------------

    def prefix_hits(self, token_ids: list[int]) -> list[int]:
        """Blocks holding the longest cached prefix of ``token_ids``, in full blocks; at least one
        token is left out, so the model still computes the logits of the last one."""
        hits, parent = [], None
        if not self.prefix_caching:
            return hits
        for i in range((len(token_ids) - 1) // self.block_size):
            chunk = token_ids[i * self.block_size : (i + 1) * self.block_size]
            parent = block_hash(parent, chunk)
            block_id = self.hash_to_block.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            hits.append(block_id)
        return hits

    def blocks_needed(self, token_ids: list[int]) -> int:
        """Blocks that admitting ``token_ids`` takes from the free and cached blocks."""
        in_use = sum(1 for b in self.prefix_hits(token_ids) if self.blocks[b].ref_count > 0)
        return self.blocks_for(len(token_ids)) - in_use

    def can_allocate(self, token_ids: list[int]) -> bool:
        return self.blocks_needed(token_ids) <= self.available

    def allocate(self, rid: str, token_ids: list[int]) -> int:
        """Start ``rid``'s block table with its prefix hits; returns how many tokens they hold
        (the caller then appends the rest with ``append``)."""
        assert rid not in self.tables, f"{rid} already holds blocks"
        self.tables[rid], self.tokens[rid], self.hashing[rid] = [], [], True
        for logical, block_id in enumerate(self.prefix_hits(token_ids)):
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.cached_ids[block_id]
            block.ref_count += 1
            self.tables[rid].append(block_id)
            self.tokens[rid] += block.token_ids
            self.log(PrefixHit, request=rid, block=block_id, logical=logical, ref_count=block.ref_count)
        self._note_peak()
        return len(self.tokens[rid])

    def fork(self, parent: str, child: str) -> None:
        """``child`` shares every block of ``parent`` (parallel sampling from one prompt)."""
        assert child not in self.tables
        self.tables[child] = list(self.tables[parent])
        self.tokens[child] = list(self.tokens[parent])
        self.hashing[child] = self.hashing[parent]
        for block_id in self.tables[child]:
            if block_id is not None:
                self.blocks[block_id].ref_count += 1

    # -- appending tokens -----------------------------------------------------------------------

    def blocks_to_append(self, rid: str, n_tokens: int) -> int:
        """Blocks that appending ``n_tokens`` to ``rid`` takes: new blocks, plus one copy when the
        last block is partial and shared."""
        filled = len(self.tokens[rid]) % self.block_size
        last = self.tables[rid][-1] if self.tables[rid] else None
        room = self.block_size - filled if filled and last is not None else 0
        copy = int(room > 0 and self.blocks[last].ref_count > 1)
        return copy + self.blocks_for(max(0, n_tokens - room))

    def append(self, rid: str, token_ids: list[int]) -> list[int]:
        """Give each new token of ``rid`` a slot, taking blocks and copying a shared last block as
        needed; returns the slots. A block that becomes full enters the prefix table."""
        table, tokens = self.tables[rid], self.tokens[rid]
        if self.blocks_to_append(rid, len(token_ids)) > self.available:
            raise PoolTooSmall(_("no free block left for {rid}.").format(rid=rid))
        slots = []
        for token in token_ids:
            offset = len(tokens) % self.block_size
            if offset == 0 or table[-1] is None:  # a new block (a hole ends a block, too)
                table.append(self._take(rid, BlockAllocated, logical=len(table)))
                if offset:  # the emptied block's remaining slots stay unused
                    tokens += [-1] * (self.block_size - offset)
                    offset = 0
            elif self.blocks[table[-1]].ref_count > 1:  # copy-on-write
                src = self.blocks[table[-1]]
                src.ref_count -= 1
                dst = table[-1] = self._take(rid, BlockCopied, src=src.block_id, logical=len(table) - 1)
                self.blocks[dst].token_ids = list(src.token_ids)
                self.copies.append((rid, src.block_id, dst))
            block = self.blocks[table[-1]]
            block.token_ids.append(token)
            tokens.append(token)
            slots.append(block.block_id * self.block_size + offset)
            if offset == self.block_size - 1:
                self._register(rid, len(table) - 1)
        return slots

    def _register(self, rid: str, logical: int) -> None:
        """Put a block that just became full in the prefix table (keyed by its chained hash)."""
        table = self.tables[rid]
        if not (self.prefix_caching and self.hashing[rid]):
            return
        parent = None
        if logical > 0:
            if table[logical - 1] is None or self.blocks[table[logical - 1]].hash is None:
                return  # no chain to hang it on
            parent = self.blocks[table[logical - 1]].hash
        block = self.blocks[table[logical]]
        block.hash = block_hash(parent, block.token_ids)
        self.hash_to_block.setdefault(block.hash, block.block_id)  # an identical block registered first keeps the key

    def stop_hashing(self, rid: str) -> None:
        """Blocks ``rid`` fills from now on stay out of the prefix table: after an eviction its
        keys and values are no longer those a full cache computes for the same tokens."""
        self.hashing[rid] = False

    # -- giving blocks back ---------------------------------------------------------------------

    def free(self, rid: str) -> tuple[int, ...]:
        """Drop every block of ``rid``; returns the blocks no table holds any more (the caller says
        why: finished or preempted). The last blocks go first, so the LRU evicts a sequence's tail
        before its shared prefix."""
        table = self.last_tables[rid] = self.tables.pop(rid)
        del self.tokens[rid], self.hashing[rid]
        return tuple(b for b in reversed(table) if b is not None and self._release(b))

    def table(self, rid: str) -> list[int | None]:
        """``rid``'s block table: the one it holds, else the last one it held (empty before any)."""
        return self.tables[rid] if rid in self.tables else self.last_tables.get(rid, [])

    def drop(self, rid: str, logical: int) -> None:
        """Token eviction left no entry of ``rid`` in its logical block: drop the reference."""
        block_id = self.tables[rid][logical]
        self.tables[rid][logical] = None
        self._release(block_id)
        self.log(BlockDropped, request=rid, block=block_id, logical=logical)

    def _release(self, block_id: int) -> bool:
        """One table less holds the block; returns True when no table holds it any more."""
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0
        if block.ref_count > 0:
            return False
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            self.cached_ids[block_id] = None
        else:
            block.token_ids, block.hash = [], None
            self.free_ids.append(block_id)
        return True

    def _take(self, rid: str, kind: type[Event], **detail) -> int:
        """A block for ``rid``: a free one, else the least recently freed cached one."""
        if self.free_ids:
            block_id = self.free_ids.popleft()
        elif self.cached_ids:
            block_id, _ = self.cached_ids.popitem(last=False)
            del self.hash_to_block[self.blocks[block_id].hash]
            self.log(CachedBlockEvicted, request=rid, block=block_id)
        else:
            raise PoolTooSmall(_("no free block left for {rid}.").format(rid=rid))
        block = self.blocks[block_id]
        block.ref_count, block.token_ids, block.hash = 1, [], None
        self.log(kind, request=rid, block=block_id, **detail)
        self._note_peak()
        return block_id

    # -- bookkeeping ----------------------------------------------------------------------------

    def slots(self, rid: str, start: int = 0) -> list[int]:
        """Slots of ``rid``'s tokens from ``start`` on (tokens in dropped blocks left out)."""
        table, bs = self.tables[rid], self.block_size
        return [table[t // bs] * bs + t % bs for t in range(start, len(self.tokens[rid])) if table[t // bs] is not None]

    def log(self, kind: type[Event], **fields) -> None:
        """Record an event of this step (the one log of the run: block, request and eviction events)."""
        self.events.append(kind(step=self.step, **fields))

    def _note_peak(self) -> None:
        self.peak_used = max(self.peak_used, self.used)

    def check(self) -> None:
        """Invariants: every block is in exactly one state, reference counts equal the tables
        holding each block, and the prefix table points at cached or used blocks with that hash."""
        refs = [0] * self.num_blocks
        bs = self.block_size
        for rid, table in self.tables.items():
            tokens = self.tokens[rid]
            assert len(table) == self.blocks_for(len(tokens)), f"{rid}: {len(table)} blocks for {len(tokens)} tokens"
            for logical, block_id in enumerate(table):
                if block_id is not None:
                    refs[block_id] += 1
                    assert self.blocks[block_id].token_ids == tokens[logical * bs : (logical + 1) * bs], f"{rid}: block {block_id} holds other tokens"
        free, cached = set(self.free_ids), set(self.cached_ids)
        assert len(free) == len(self.free_ids) and not free & cached
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], f"block {block.block_id}: ref_count {block.ref_count} != {refs[block.block_id]}"
            assert len(block.token_ids) <= self.block_size
            if block.block_id in free:
                assert block.ref_count == 0 and block.hash is None and not block.token_ids
            elif block.block_id in cached:
                assert block.ref_count == 0 and self.hash_to_block.get(block.hash) == block.block_id
            else:
                assert block.ref_count > 0, f"block {block.block_id} is lost: neither free, cached nor used"
        for h, block_id in self.hash_to_block.items():
            assert self.blocks[block_id].hash == h and len(self.blocks[block_id].token_ids) == self.block_size

    def snapshot(self) -> dict:
        """The pool as plain lists, for a frame of the page."""
        owners: list[list[str]] = [[] for _ in self.blocks]
        for rid, table in self.tables.items():
            for block_id in table:
                if block_id is not None:
                    owners[block_id].append(rid)
        cached = set(self.cached_ids)
        return {
            "state": ["cached" if b.block_id in cached else "used" if b.ref_count else "free" for b in self.blocks],
            "ref_count": [b.ref_count for b in self.blocks],
            "filled": [len(b.token_ids) for b in self.blocks],
            "owners": owners,
            "hash": [b.hash for b in self.blocks],
            "tables": {rid: list(t) for rid, t in self.tables.items()},
        }
