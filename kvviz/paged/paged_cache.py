"""The pool of K/V blocks and a transformers ``Cache`` that reads each request through it.

Layout: K and V of every layer are two tensors ``(layers, num_blocks, block_size, kv_heads,
head_dim)`` allocated once (vLLM's flash layout, one tensor per layer there). A slot is
``block * block_size + offset``; ``pool.flat(layer)`` views a layer as ``(slots, kv_heads,
head_dim)``.

Several requests run in one forward, each feeding its own number of tokens (a whole prompt,
or one decoded token). The queries are left-padded to the longest, so every request's last
token sits in the last column and ``logits_to_keep=1`` gives each one's next-token logits. In
every layer the new K/V are written into the requests' slots, then each request's entries are
gathered through its slots, right-padded to the longest: ``(batch, kv_heads, entries,
head_dim)``. One 4D mask, built before the forward, hides the padding and the future: query j
of a request sees its held entries and its new ones up to j. The same mask serves every layer
because a request holds the same number of entries in every layer and KV head (a policy that
breaks this, e.g. PyramidKV's per-layer budgets, is refused).

Without an eviction policy a request's entries are the same in every layer: one slot list
(and one gather index per forward) serves all layers. With one, each layer and KV head holds
its own entries, like ``PolicyCache``'s positions: see ``eviction.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvviz.policies import PolicyError


class KVPool:
    """K and V blocks of every layer, allocated once."""

    def __init__(self, n_layers, num_blocks, block_size, kv_heads, head_dim, dtype, device):
        shape = (n_layers, num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.kv_heads, self.head_dim = block_size, kv_heads, head_dim

    @property
    def num_slots(self) -> int:
        return self.k.shape[1] * self.block_size

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one layer as (slots, kv_heads, head_dim) views."""
        shape = (-1, self.kv_heads, self.head_dim)
        return self.k[layer].view(shape), self.v[layer].view(shape)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy-on-write: block src -> block dst, in every layer."""
        if pairs:
            src = torch.tensor([s for s, _ in pairs], device=self.k.device)
            dst = torch.tensor([d for _, d in pairs], device=self.k.device)
            self.k[:, dst] = self.k[:, src]
            self.v[:, dst] = self.v[:, src]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass
class RequestKV:
    """The entries one request holds: the slot of each and its token's position, per KV head.
    One list item per layer, or a single item every layer shares (no eviction policy)."""

    slots: list[torch.Tensor]  # (kv_heads, n) long
    positions: list[torch.Tensor]  # (kv_heads, n) long
    stats: list[dict] = field(default_factory=list)  # per layer: a selector's (kv_heads, n) statistics
    prompt_len: int = 0  # tokens of its first forward (the prompt, or prompt and output on a resume)
    forwards: int = 0  # forwards run so far: a selector's step

    @property
    def held(self) -> int:
        return self.slots[0].shape[1]

    def copy(self) -> "RequestKV":
        return RequestKV(list(self.slots), list(self.positions), [dict(s) for s in self.stats], self.prompt_len, self.forwards)

    def keep(self, layer: int, keep: torch.Tensor) -> None:
        """Keep the layer's entries ``keep`` (kv_heads, k), per KV head."""
        n = self.slots[layer].shape[1]
        self.slots[layer] = self.slots[layer].gather(1, keep)
        self.positions[layer] = self.positions[layer].gather(1, keep)
        self.stats[layer] = {k: s.gather(1, keep) if s.shape[-1] == n else s for k, s in self.stats[layer].items()}

    def drop_blocks(self, blocks: torch.Tensor, block_size: int) -> None:
        """Drop the entries in ``blocks`` from every layer (each KV head holds the same slots)."""
        for layer, slots in enumerate(self.slots):
            keep = (~torch.isin(slots[0] // block_size, blocks)).nonzero()[:, 0].expand(slots.shape[0], -1)
            self.keep(layer, keep)


@dataclass
class Row:
    """One request in a forward: the tokens it feeds, their slots and the first one's position."""

    rid: str
    token_ids: list[int]
    slots: list[int]
    start: int


class PagedLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, owner: "PagedCache", layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        """key_states, value_states: (batch, kv_heads, q, head_dim) -> the requests' entries, padded."""
        owner = self.owner
        batch, kv_heads, q, head_dim = key_states.shape
        k_flat, v_flat = owner.pool.flat(self.layer_idx)  # (slots, kv_heads, head_dim)
        for new, flat in ((key_states, k_flat), (value_states, v_flat)):
            rows = new.transpose(1, 2).reshape(batch * q, kv_heads, head_dim)
            flat.index_copy_(0, owner.write_to, rows.index_select(0, owner.write_from))
        index = owner.gather_index(self.layer_idx)  # (batch * kv_heads * entries,) into (slots * kv_heads)
        shape = (batch, kv_heads, -1, head_dim)
        keys = k_flat.view(-1, head_dim).index_select(0, index).view(shape)
        values = v_flat.view(-1, head_dim).index_select(0, index).view(shape)
        if owner.evictor is not None:
            owner.evictor.after_update(self.layer_idx, keys, values)
        return keys, values

    def get_seq_length(self) -> int:
        return self.owner.longest

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.owner.longest, 0  # unused: the model gets a ready 4D mask

    def reset(self):
        pass


class PagedCache(Cache):
    """The requests of one paged run: their entries per layer, read through the pool's slots."""

    def __init__(self, pool: KVPool, n_layers: int, evictor=None):
        super().__init__(layers=[PagedLayer(self, i) for i in range(n_layers)])
        self.pool, self.n_layers, self.evictor = pool, n_layers, evictor
        self.requests: dict[str, RequestKV] = {}
        self.rows: list[Row] = []  # the batch of the forward being run
        self.q = 0  # its query length (the longest row)
        self.longest = 0
        self._gather: dict[int, torch.Tensor] = {}
        self.write_from = self.write_to = None
        device = pool.k.device
        self.head_ids = torch.arange(pool.kv_heads, device=device)[None, :, None]  # (1, kv_heads, 1)

    @property
    def device(self):
        return self.pool.k.device

    @property
    def per_layer(self) -> bool:
        return self.evictor is not None

    # -- requests -------------------------------------------------------------------------------

    def add(self, rid: str, slots: list[int]) -> None:
        """A request whose first ``len(slots)`` tokens are already in the pool (prefix hits)."""
        n_tables = self.n_layers if self.per_layer else 1
        s = torch.tensor(slots, dtype=torch.long, device=self.device).expand(self.pool.kv_heads, -1)
        p = torch.arange(len(slots), device=self.device).expand(self.pool.kv_heads, -1)
        self.requests[rid] = RequestKV([s] * n_tables, [p] * n_tables, [{} for _ in range(n_tables)])

    def fork(self, parent: str, child: str) -> None:
        self.requests[child] = self.requests[parent].copy()

    def remove(self, rid: str) -> None:
        self.requests.pop(rid, None)

    def moved(self, rid: str, src: int, dst: int) -> None:
        """``rid``'s entries in block ``src`` now live in its copy ``dst`` (copy-on-write)."""
        kv, bs = self.requests[rid], self.pool.block_size
        kv.slots = [torch.where(s // bs == src, s + (dst - src) * bs, s) for s in kv.slots]

    # -- one forward ----------------------------------------------------------------------------

    def begin(self, rows: list[Row], mask_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Record where the rows' new K/V go; returns input ids and position ids (batch, q) and
        the 4D mask (batch, 1, q, entries): boolean, or additive in ``mask_dtype`` for eager."""
        device, heads = self.device, self.pool.kv_heads
        q = max(len(r.token_ids) for r in rows)
        ids = torch.zeros(len(rows), q, dtype=torch.long)
        pos = torch.zeros(len(rows), q, dtype=torch.long)
        write_from, held, n_new = [], [], []
        for i, r in enumerate(rows):
            n = len(r.token_ids)
            ids[i, q - n :] = torch.tensor(r.token_ids)
            pos[i, q - n :] = torch.arange(r.start, r.start + n)
            write_from.append(torch.arange(i * q + q - n, i * q + q))
            kv = self.requests[r.rid]
            held.append(kv.held)
            if kv.forwards == 0:
                kv.prompt_len = kv.held + n
            n_new.append(n)
            new_slots = torch.tensor(r.slots, dtype=torch.long, device=device).expand(heads, -1)
            new_pos = pos[i, q - n :].to(device).expand(heads, -1)
            kv.slots = [torch.cat([s, new_slots], dim=1) for s in kv.slots]
            kv.positions = [torch.cat([p, new_pos], dim=1) for p in kv.positions]
            kv.stats = [{k: torch.cat([t, t.new_zeros(heads, n)], dim=1) for k, t in st.items()} for st in kv.stats]
        self.rows, self.q = rows, q
        self.write_from = torch.cat(write_from).to(device)
        self.write_to = torch.tensor([s for r in rows for s in r.slots], dtype=torch.long, device=device)
        held_t, new_t = torch.tensor(held), torch.tensor(n_new)
        self.longest = int((held_t + new_t).max())
        self._gather = {}
        query = torch.arange(q)[None, :] - (q - new_t)[:, None]  # (batch, q) index among the new tokens; < 0: padding
        entry = torch.arange(self.longest)[None, None, :]
        padding = (query < 0)[:, :, None]  # padding queries see entry 0 only (no row may be empty)
        visible = ~padding & (entry <= held_t[:, None, None] + query[:, :, None]) | padding & (entry == 0)  # (batch, q, entries)
        mask = visible[:, None].to(device)
        if mask_dtype is not None:
            mask = torch.zeros(mask.shape, dtype=mask_dtype, device=device).masked_fill(~mask, torch.finfo(mask_dtype).min)
        return ids.to(device), pos.to(device), mask

    def gather_index(self, layer_idx: int) -> torch.Tensor:
        """Flat index of every request's entries in the layer, (batch * kv_heads * entries,)."""
        table = layer_idx if self.per_layer else 0
        if table not in self._gather:
            heads = self.pool.kv_heads
            index = torch.zeros(len(self.rows), heads, self.longest, dtype=torch.long, device=self.device)
            for i, row in enumerate(self.rows):
                slots = self.requests[row.rid].slots[table]  # (kv_heads, n)
                index[i, :, : slots.shape[1]] = slots
            self._gather[table] = (index * heads + self.head_ids).view(-1)
        return self._gather[table]

    # -- transformers' Cache API ----------------------------------------------------------------

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.longest

    def get_mask_sizes(self, query_length, layer_idx=0, *args):
        return self.longest, 0


def mask_dtype_for(model) -> torch.dtype | None:
    """The 4D mask the model's attention takes: boolean for SDPA, additive for eager."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return None
    if impl == "eager":
        return model.dtype
    raise PolicyError(f"The paged cache builds its own attention mask, for 'sdpa' or 'eager' attention, not '{impl}'.")


def forward(model, cache: PagedCache, rows: list[Row], cache_kw: str) -> torch.Tensor:
    """One forward of several requests; returns each one's next-token logits (batch, vocab)."""
    ids, positions, mask = cache.begin(rows, mask_dtype_for(model))
    out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    if cache.evictor is not None:
        cache.evictor.after_forward()
    for row in rows:
        cache.requests[row.rid].forwards += 1
    return out.logits[:, -1]
