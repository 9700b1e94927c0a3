"""PolicyCache: a transformers ``Cache`` whose layers really hold the compressed tensors.

Every update appends the new keys/values to the layer's store and returns what the attention
of this forward reads (the entries before this step's eviction, as in H2O, where the new token
attends to the budget plus itself). Then the selector decides what stays, and the evicted
entries leave the store: memory saved is memory freed. Each layer keeps the true position of
each entry per KV head; RoPE was applied with that position before the entry was cached, and
the engine feeds explicit position ids, so eviction never shifts positions.

The cache also records, on the device and without host synchronization, what the Trace needs:
the step at which each entry was evicted, the score that decided it, and the attention mass the
step's last query put on the entries evicted at that step.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvviz.policies import Pipeline, PolicyError
from kvviz.policies.base import LayerView, Selection, StepContext, Store
from kvviz.scoring import attention_probs


class PolicyLayer(CacheLayerMixin):
    """One decoder layer's cache: a store of entries, their positions and the policy's stats."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: "PolicyCache", layer_idx: int):
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        self.store: Store | None = None
        self.positions: torch.Tensor | None = None  # (kv_heads, n) long
        self.stats: dict[str, torch.Tensor] = {}
        self.seen = 0  # tokens this layer has processed (the length of a full cache)

    # transformers' CacheLayerMixin API --------------------------------------------------------

    def lazy_initialization(self, key_states, value_states):
        _, kv_heads, _, head_dim = key_states.shape
        self.device = key_states.device
        self.store = self.owner.make_store(self.layer_idx, kv_heads, head_dim, key_states.dtype, key_states.device)
        self.positions = torch.empty(kv_heads, 0, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """key_states, value_states: (1, kv_heads, q, head_dim). Returns what attention reads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != 1:
            raise ValueError("PolicyCache runs one sequence at a time (batch size 1).")
        q_len = key_states.shape[2]
        kv_heads = key_states.shape[1]
        new_pos = self.owner.current_positions  # (q_len,) on the device, set by the engine
        if new_pos is None:
            new_pos = torch.arange(self.seen, self.seen + q_len, device=self.device)
        self.store.append(key_states[0], value_states[0])
        self.positions = torch.cat([self.positions, new_pos.expand(kv_heads, -1)], dim=1)
        for name, s in self.stats.items():
            self.stats[name] = torch.cat([s, s.new_zeros(kv_heads, q_len)], dim=1)
        self.seen += q_len
        keys, values = self.store.materialize()
        out = keys.unsqueeze(0), values.unsqueeze(0)
        self.owner.after_update(self, keys, values, new_pos, q_len)
        return out

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        # The attention reads the held entries plus the new ones. Every held entry is in the
        # past of the new queries (whose offset is ``seen``), so a causal mask of this size
        # hides none of them. (transformers skips the mask for one query, except while a CUDA
        # graph is being captured, where it is materialized with this size.)
        return len(self) + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self):
        self.store = self.positions = None
        self.stats = {}
        self.seen = 0
        self.is_initialized = False

    # kvviz ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self.store is None else len(self.store)

    def apply(self, sel: Selection) -> torch.Tensor:
        """Keep ``sel.keep``; returns the (kv_heads, n) bool mask of evicted entries."""
        n = self.positions.shape[1]
        kept = torch.zeros(self.positions.shape, dtype=torch.bool, device=self.device)
        kept.scatter_(1, sel.keep, True)
        self.store.keep(sel.keep, sel.keys, sel.values)
        self.positions = self.positions.gather(1, sel.keep)
        for name, s in self.stats.items():
            if s.shape[-1] == n:
                self.stats[name] = s.gather(1, sel.keep)
        return ~kept


class PolicyCache(Cache):
    """A Cache for one sequence, compressed by a policy pipeline (selector and/or store)."""

    def __init__(
        self,
        pipeline: Pipeline,
        n_layers: int,
        prompt_len: int,
        capacity: int,
        n_kv_heads: int,
        device,
        generator: torch.Generator | None = None,
        measure_lost_mass: bool = False,
    ):
        self._layer_list = [PolicyLayer(self, i) for i in range(n_layers)]
        super().__init__(layers=self._layer_list)
        self.pipeline = pipeline
        self.n_layers = n_layers
        self.prompt_len = prompt_len
        self.step = 0
        # the step and the positions of the tokens being fed, as device tensors, so that a
        # captured CUDA graph reads them at replay instead of baking in Python numbers
        self.step_t = torch.zeros((), dtype=torch.int32, device=device)
        self.current_positions: torch.Tensor | None = None
        self.generator = generator
        self.measure_lost_mass = measure_lost_mass
        self.queries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (queries, positions)
        sel = pipeline.selector
        self.budget = sel.resolve_budget(prompt_len) if sel is not None else None
        self.layer_budgets = [
            sel.layer_budget(self.budget, i, n_layers) if sel is not None else None for i in range(n_layers)
        ]
        # Trace records, on the device: (layers, kv_heads, capacity)
        self.evicted_at = torch.full((n_layers, n_kv_heads, capacity), -1, dtype=torch.int32, device=device)
        self.scores = torch.full((n_layers, n_kv_heads, capacity), float("nan"), dtype=torch.float32, device=device)
        self.lost_mass_now = torch.zeros(n_layers, dtype=torch.float32, device=device)

    # built by layers --------------------------------------------------------------------------

    def make_store(self, layer_idx, kv_heads, head_dim, dtype, device) -> Store:
        if self.pipeline.storage is None:
            return Store(kv_heads, head_dim, dtype, device)
        return self.pipeline.storage.make_store(layer_idx, self.n_layers, kv_heads, head_dim, dtype, device)

    @property
    def needs_queries(self) -> bool:
        sel = self.pipeline.selector
        return sel is not None and sel.needs_queries

    def after_update(self, layer: PolicyLayer, keys, values, new_pos, q_len):
        """Let the selector decide what the layer keeps, and record the decision."""
        sel = self.pipeline.selector
        if sel is None or (self.step > 0 and not sel.acts_at_decode):
            self.queries.pop(layer.layer_idx, None)
            return
        q = self.queries.pop(layer.layer_idx, None)
        queries, query_positions = q if q is not None else (None, None)
        view = LayerView(
            layer_idx=layer.layer_idx,
            n_layers=self.n_layers,
            keys=keys,
            values=values,
            positions=layer.positions,
            stats=layer.stats,
            queries=queries,
            query_positions=query_positions,
            n_new=q_len,
        )
        ctx = StepContext(
            step=self.step,
            prompt_len=self.prompt_len,
            seq_len=layer.seen,
            budget=self.layer_budgets[layer.layer_idx],
            generator=self.generator,
        )
        if sel.needs_queries and queries is None:
            raise PolicyError(f"{sel.name} needs the attention queries, but none were captured for this model.")
        decision = sel.step(view, ctx)
        if decision is None:
            return
        positions = layer.positions
        if decision.scores is not None:
            self.scores[layer.layer_idx].scatter_(1, positions, decision.scores.float())
        evicted = layer.apply(decision)  # (kv_heads, n) bool
        li = layer.layer_idx
        # every entry held until now was never evicted (-1): write the step where it leaves
        self.evicted_at[li].scatter_(1, positions, torch.where(evicted, self.step_t, -1).to(torch.int32))
        if self.measure_lost_mass and queries is not None:
            probs = attention_probs(queries[:, -1:], keys, query_positions[-1:], positions)[:, 0]  # (kv_heads, n)
            self.lost_mass_now[li] = (probs * evicted).sum(dim=-1).mean()

    # Cache API used by the models -------------------------------------------------------------

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen if layer_idx < len(self.layers) else 0

    def get_mask_sizes(self, query_length, layer_idx=0, *args):
        if isinstance(query_length, torch.Tensor):  # older signature: (cache_position, layer_idx)
            query_length = query_length.shape[0]
        return self.layers[layer_idx].get_mask_sizes(query_length)

    # kvviz ------------------------------------------------------------------------------------

    def kv_bytes(self) -> int:
        """Bytes of every K/V tensor held, quantization scales and zero points included."""
        return sum(layer.store.nbytes() for layer in self.layers if layer.store is not None)

    def bookkeeping_bytes(self) -> int:
        """Positions and policy statistics kvviz keeps beside the K/V tensors."""
        total = 0
        for layer in self.layers:
            if layer.positions is not None:
                total += layer.positions.numel() * layer.positions.element_size()
                total += sum(s.numel() * s.element_size() for s in layer.stats.values())
        return total

    def set_step(self, step: int) -> None:
        self.step = step
        self.step_t.fill_(step)

    def steady(self) -> bool:
        """True when every layer holds exactly its budget, so each decode step appends one entry
        and evicts one: tensor shapes no longer change (what a CUDA graph needs)."""
        return all(
            b is not None and layer.is_initialized and len(layer) == b
            for layer, b in zip(self.layers, self.layer_budgets)
        )

    def held_entries(self) -> list[int]:
        return [len(layer) for layer in self.layers]
