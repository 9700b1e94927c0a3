"""Token-eviction policies on a paged cache, and what they cost there.

A selector (h2o, streaming_llm, snapkv, tova...) runs exactly as on the contiguous cache: after
each layer's update it scores the request's entries in that layer and says which stay, per KV
head. On a paged server this frees nothing by itself: a block holds one slot per token for
every layer and KV head, and it goes back to the pool only when no layer or head of the
request reads any of its slots. Evicted entries leave **holes** inside blocks that stay
allocated.

Two ways to run a selector here:

* ``token``: apply its decision entry by entry, as kvviz's contiguous cache does. Held
  entries follow the budget; reserved slots barely shrink (see ``live_fraction``).
* ``block``: keep whole blocks instead (as block-wise eviction does, e.g. PagedEviction,
  2025): every step the selector still says which entries it would keep; a block's score is
  the fraction of its entries (over layers, KV heads and slots) that the selector would keep,
  and when a request holds more than ``ceil(budget / block_size)`` blocks the lowest-scoring
  ones are dropped whole (the block being written is always kept). Freed blocks return to the
  pool at once.

Simplified: a request's keys and values after an eviction differ from a full cache's, so its
blocks filled from then on stay out of the prefix table; a preempted request is recomputed
from its tokens and the policy starts over on them; with prefix hits the selector never sees
the queries of the reused prefix (H2O's scores then start from the new tokens); policies that
give layers different budgets (PyramidKV), merge entries or change how they are stored are
refused, because one attention mask serves every layer.
"""

from __future__ import annotations

import torch

from kvviz.model.attention_inputs import AttentionCall, attention_modules
from kvviz.runtime.policy_cache import CACHE_KEYWORDS
from kvviz.policies import Pipeline, PolicyError, Selector
from kvviz.paged.events import EntriesEvicted
from kvviz.policies.selector import LayerView, StepContext

MODES = ("token", "block")


class PagedEviction:
    def __init__(self, scheduler, pipeline: Pipeline, mode: str = "token"):
        sel = pipeline.selector
        if pipeline.storage is not None or sel is None:
            raise PolicyError(f"'{pipeline.spec}': a paged cache holds plain keys and values; give an eviction policy (h2o, snapkv...), no store.")
        if type(sel).layer_budget is not Selector.layer_budget:
            raise PolicyError(f"{sel.name} gives each layer its own budget; the paged cache needs one budget for every layer.")
        if mode not in MODES:
            raise PolicyError(f"eviction mode must be one of {', '.join(MODES)}, not {mode!r}.")
        self.scheduler, self.selector, self.mode = scheduler, sel, mode
        self.queries: dict[int, torch.Tensor] = {}  # layer -> (batch, q_heads, q, head_dim)
        self.votes: dict[str, torch.Tensor] = {}  # block mode: request -> (slots,) entries the selector keeps
        self.evicted: dict[str, int] = {}  # request -> entries evicted in this forward (token mode)
        self.generator = torch.Generator(device=scheduler.device).manual_seed(0)

    # -- around a run ---------------------------------------------------------------------------

    def attach(self, model) -> list:
        """Hooks that capture each layer's queries for selectors that score with them. A hook acts
        only on forwards that carry this scheduler's cache, so other runs sharing the model are
        left alone (as ``PolicyCache.attached``)."""
        if not self.selector.needs_queries:
            return []
        return [m.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, m in enumerate(attention_modules(model))]

    def _hook(self, layer_idx: int):
        def hook(module, args, kwargs=None):
            if kwargs is not None and any(kwargs.get(k) is self.scheduler.cache for k in CACHE_KEYWORDS):
                self.queries[layer_idx] = AttentionCall.read(module, args, kwargs).batch_queries()
        return hook

    @staticmethod
    def detach(hooks: list) -> None:
        for h in hooks:
            h.remove()

    # -- inside a forward -----------------------------------------------------------------------

    def after_update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values: (batch, kv_heads, entries, head_dim), the entries this layer just read."""
        cache, sel = self.scheduler.cache, self.selector
        queries = self.queries.pop(layer_idx, None)
        q = cache.q
        for i, row in enumerate(cache.rows):
            kv = cache.requests[row.rid]
            if kv.forwards > 0 and not sel.acts_at_decode:
                continue
            n_new, n = len(row.token_ids), kv.slots[layer_idx].shape[1]  # this layer: earlier ones may have evicted
            if sel.needs_queries and queries is None:
                raise PolicyError(f"{sel.name} needs the attention queries, but none were captured for this model.")
            view = LayerView(
                layer_idx=layer_idx, n_layers=cache.n_layers, keys=keys[i, :, :n], values=values[i, :, :n],
                positions=kv.positions[layer_idx], stats=kv.stats[layer_idx],
                queries=queries[i, :, q - n_new :] if queries is not None else None,
                query_positions=kv.positions[layer_idx][0, n - n_new :], n_new=n_new,
            )
            budget = sel.resolve_budget(kv.prompt_len)
            ctx = StepContext(kv.forwards, kv.prompt_len, row.start + n_new, budget, self.generator)
            decision = sel.step(view, ctx)
            if decision is None:
                continue
            if decision.keys is not None:
                raise PolicyError(f"{sel.name} merges entries; the paged cache only evicts them.")
            self.evicted[row.rid] = self.evicted.get(row.rid, 0)
            if self.mode == "token":
                self.evicted[row.rid] += decision.keep.shape[0] * (n - decision.keep.shape[1])
                kv.keep(layer_idx, decision.keep)
            else:
                kept = torch.zeros(kv.slots[layer_idx].shape, device=keys.device).scatter_(1, decision.keep, 1.0)
                votes = self.votes.setdefault(row.rid, torch.zeros(cache.pool.num_slots, device=keys.device))
                votes.index_add_(0, kv.slots[layer_idx].flatten(), kept.flatten())

    def after_forward(self) -> None:
        """Give back the blocks no entry of a request reads any more (token mode) or the
        lowest-scoring blocks beyond the block budget (block mode)."""
        cache, m = self.scheduler.cache, self.scheduler.manager
        bs = m.block_size
        for rid in sorted(self.evicted):
            kv = cache.requests[rid]
            if len({s.shape[1] for s in kv.slots}) > 1:
                raise PolicyError(f"{self.selector.name} left layers with different numbers of entries; the paged cache needs the same number in every layer.")
            table = m.tables[rid]
            if self.mode == "block":
                self._drop_blocks(rid, kv, table, self.votes.pop(rid))
            elif self.evicted[rid]:
                per_token = self.scheduler.n_layers * cache.pool.kv_heads
                m.log(EntriesEvicted, request=rid, entries=self.evicted[rid], tokens=round(self.evicted[rid] / per_token, 2), policy=self.selector.name)
            held = set(torch.cat([s.flatten() for s in kv.slots]).div(bs, rounding_mode="floor").tolist())
            m.stop_hashing(rid)
            for logical, block in enumerate(table):
                if block is not None and block not in held:
                    m.drop(rid, logical)
        self.evicted.clear()

    def _drop_blocks(self, rid: str, kv, table: list, votes: torch.Tensor) -> None:
        """Block mode: keep the ``ceil(budget / block_size)`` blocks whose entries the selector
        would keep most (the newest block always among them); the others leave every layer."""
        bs = self.scheduler.manager.block_size
        keep_blocks = -(-self.selector.resolve_budget(kv.prompt_len) // bs)
        held = [(logical, b) for logical, b in enumerate(table) if b is not None]
        if len(held) <= keep_blocks:
            return
        entries = self.scheduler.n_layers * bs * kv.slots[0].shape[0]  # of a full block
        score = {b: float(votes[b * bs : (b + 1) * bs].sum()) / entries for _, b in held[:-1]}
        ranked = sorted(score, key=lambda b: (score[b], b), reverse=True)
        gone = torch.tensor(ranked[keep_blocks - 1 :], device=votes.device)
        kv.drop_blocks(gone, bs)

    # -- what the page shows --------------------------------------------------------------------

    def live_fraction(self) -> list[list[float]]:
        """Per block and slot, the fraction of (layer, KV head) entries some request still reads:
        1 for a slot every layer and head holds, 0 for a hole."""
        cache = self.scheduler.cache
        pool = cache.pool
        held = torch.zeros(cache.n_layers, pool.num_slots, pool.kv_heads, dtype=torch.bool, device=pool.k.device)
        heads = torch.arange(pool.kv_heads, device=pool.k.device)[:, None]
        for kv in cache.requests.values():
            for layer, slots in enumerate(kv.slots):
                held[layer, slots, heads] = True
        live = held.float().mean(dim=(0, 2)).view(-1, pool.block_size)  # (blocks, block_size)
        return live.cpu().tolist()
