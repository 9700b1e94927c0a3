"""PolicyCache: a transformers ``Cache`` whose layers really hold the compressed tensors.

Every step of a layer appends the new keys/values to the layer's store and returns what the
attention of this forward reads (the entries before this step's eviction, as in H2O, where the
new token attends to the budget plus itself). Then the selector decides what stays, and the
evicted entries leave the store: memory saved is memory freed. Each layer keeps the true position
of each entry per KV head; RoPE was applied with that position before the entry was cached, and
the engine feeds explicit position ids, so eviction never shifts positions.

A step gets what it needs as arguments: ``PolicyLayer.step(keys, values, positions, queries)``.
The attention module only calls ``cache.update(keys, values, layer_idx)``, so while a run is
attached (``PolicyCache.attached(model)``) a forward pre-hook on each attention module reads the
call's own arguments (``position_ids``, and the layer input from which the queries are computed,
see ``kvviz.model.attention_inputs``) and hands the module, in place of the cache, a ``LayerCall``
whose ``update`` passes them on. A hook acts only on calls that carry its own cache object, so
runs on other threads sharing the model are left alone, with no global state.

The cache also records, on the device and without host synchronization, what the Trace needs:
the step at which each entry was evicted, the score that decided it, and the attention mass the
step's last query put on the entries evicted at that step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, cast

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvviz.model.attention_inputs import AttentionCall, CaptureError, decoder_attention, unreadable
from kvviz.model.capture import sliding_window
from kvviz.runtime.jobs import Stopped
from kvviz.model.devices import layers_by_device
from kvviz.storage.fixed_capacity import FixedLayer
from kvviz.policies import Pipeline, PolicyError
from kvviz.policies.recall import topk_recall
from kvviz.policies.selector import LayerView, Retriever, Selection, StepContext
from kvviz.policies.store import Store
from kvviz.policies.scoring import attention_probs, last_query_probs
from kvviz.record.trace import Protection, StoreError

if TYPE_CHECKING:
    from kvviz.runtime.fused_steps import Steps

CACHE_KEYWORDS = ("cache", "past_key_values", "layer_past")  # the attention's cache argument (>= 5.24, before; GPT-NeoX)


def sized_mask(mask: torch.Tensor, held: int, q_len: int, seen: int | None = None) -> torch.Tensor:
    """The model's mask (1, 1, q_len, m) for a layer that holds ``held`` entries before this
    step, of the ``seen`` tokens it has read: transformers sizes it from layer 0, and layers may
    hold different numbers (PyramidKV), which eager attention, adding the mask to the scores,
    cannot broadcast. Every held entry is in the past of the new queries: visible to all of them;
    the new ones keep their own mask. Several new tokens after the prefill (a question after its
    compressed context, a forced continuation read in chunks): the model offsets its causal mask
    by the tokens seen, not by the entries held, so the new tokens' causal mask is made here,
    unless nothing was evicted (``held == seen``): then each entry's index is its position and
    the model's own mask is right, its sliding window included."""
    if mask.dim() != 4:
        return mask
    if q_len > 1 and held == seen and mask.shape[-2:] == (q_len, held + q_len):
        return mask
    if q_len > 1:
        visible = torch.ones(q_len, held + q_len, dtype=torch.bool, device=mask.device).tril(held)  # (q_len, held + q_len)
        if mask.dtype == torch.bool:
            return visible[None, None]
        return torch.zeros(visible.shape, dtype=mask.dtype, device=mask.device).masked_fill(~visible, torch.finfo(mask.dtype).min)[None, None]
    if mask.shape[-1] == held + q_len:
        return mask
    visible = mask.new_full((*mask.shape[:-1], held), True if mask.dtype == torch.bool else 0)
    return torch.cat([visible, mask[..., -q_len:]], dim=-1)


def window_mask(held: torch.Tensor, new: torch.Tensor, window: int, q_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, q_heads, q_len, h + q_len) additive mask of a sliding-window layer over a compressed
    cache: query i (true position new[i]) sees the held entries and the new tokens whose true
    position lies in (new[i] - window, new[i]]. held (kv_heads, h): the held entries' true
    positions, per KV head (an evicting policy keeps different ones per head); new (q_len,).
    The model's own mask counts slots as positions, which is right only while nothing is evicted."""
    kv_heads, new = held.shape[0], new.to(held.device)  # a split model's layer may sit on another device
    pos = torch.cat([held, new.expand(kv_heads, -1)], dim=1)[:, None, :]  # (kv_heads, 1, n)
    q = new[None, :, None]  # (1, q_len, 1)
    visible = (pos <= q) & (pos > q - window)  # (kv_heads, q_len, n)
    visible = visible.repeat_interleave(q_heads // kv_heads, dim=0)
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None]


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
        self.fixed: FixedLayer | None = None  # set by hold_fixed: the entries in preallocated buffers
        self.last_read_bytes = 0  # K/V bytes the last step's attention read (kept for a retriever)
        self.mix: tuple[torch.Tensor, torch.Tensor] | None = None  # a retriever's (alpha, v) for this step's output

    def held(self) -> tuple[Store, torch.Tensor]:
        """(store, positions) of a layer that has seen its first tokens; RuntimeError before."""
        if self.store is None or self.positions is None:
            raise RuntimeError(f"layer {self.layer_idx} holds nothing before its first update")
        return self.store, self.positions

    # transformers' CacheLayerMixin API --------------------------------------------------------

    def lazy_initialization(self, key_states, value_states):
        _, kv_heads, _, head_dim = key_states.shape
        self.device = key_states.device
        self.store = self.owner.make_store(self.layer_idx, kv_heads, head_dim, key_states.dtype, key_states.device)
        self.positions = torch.empty(kv_heads, 0, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """transformers' entry point, for a forward with no run attached: the new tokens follow
        the ones seen, and no queries are known."""
        positions = torch.arange(self.seen, self.seen + key_states.shape[2], device=key_states.device)
        return self.step(key_states, value_states, positions)

    def step(self, key_states, value_states, positions: torch.Tensor, queries: torch.Tensor | None = None):
        """One forward's new entries, then the policy's decision. key_states, value_states:
        (1, kv_heads, q, head_dim); positions (q,) the tokens' true positions; queries
        (q_heads, q, head_dim), RoPE applied, when the selector scores with them. Returns the
        keys and values the attention reads, (1, kv_heads, n, head_dim) each."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != 1:
            raise ValueError("PolicyCache runs one sequence at a time (batch size 1).")
        q_len, kv_heads = key_states.shape[2], key_states.shape[1]
        if self.fixed is not None:  # buffers of fixed capacity; no selector evicts at decode
            if len(self) + q_len > self.fixed.capacity:
                raise ValueError(f"layer {self.layer_idx}: more tokens than its fixed capacity of {self.fixed.capacity}.")
            keys, values = self.fixed.step(key_states[0], value_states[0], positions)
            self.seen += q_len
            if self.owner.reader is not None:  # a retriever: the read set, gathered in static shapes
                keys, values = self.owner.read_fixed(self, keys, values, positions, queries)
            return keys.unsqueeze(0), values.unsqueeze(0)
        prefill = self.seen == 0
        store, held = self.held()
        if prefill and store.needs_prefill_queries:
            if queries is None:
                raise PolicyError("This store scores with the prompt's attention queries, but none were captured for this model.")
            store.observe_queries(queries)
        store.append(key_states[0], value_states[0])
        self.positions = torch.cat([held, positions.expand(kv_heads, -1)], dim=1)
        for name, s in self.stats.items():
            self.stats[name] = torch.cat([s, s.new_zeros(kv_heads, q_len)], dim=1)
        self.seen += q_len
        if prefill and store.full_precision_prefill:
            keys, values = key_states[0], value_states[0]  # what the store now holds, before compression
        else:
            keys, values = store.materialize()
        held_bytes = store.nbytes() if self.owner.reader is not None else 0  # before the selector evicts
        read = self.owner.select(self, keys, values, positions, queries, prefill)
        if self.owner.reader is not None:  # bytes this step's attention read: its share of the held bytes
            self.last_read_bytes = held_bytes * (keys.shape[1] if read is None else read.shape[1]) // max(keys.shape[1], 1)
        if read is not None:  # a retriever: the attention reads only these entries; the cache keeps all
            keys = keys.gather(1, read[..., None].expand(-1, -1, keys.shape[-1]))
            values = values.gather(1, read[..., None].expand(-1, -1, values.shape[-1]))
        return keys.unsqueeze(0), values.unsqueeze(0)

    def wants_queries(self) -> bool:
        """Whether the coming step's selector needs this layer's queries."""
        return self.owner.wants_queries(prefill=self.seen == 0)

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
        self.store = self.positions = self.fixed = None
        self.stats = {}
        self.seen = 0
        self.is_initialized = False

    # kvviz ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        if self.fixed is not None:
            return self.fixed.held(self.seen)
        return 0 if self.store is None else len(self.store)

    def hold_fixed(self, capacity: int) -> None:
        """Move the entries into buffers of ``capacity`` slots (see ``kvviz.storage.fixed_capacity``)."""
        self.fixed = FixedLayer(self, capacity)

    def state_paths(self, fixed: bool = True) -> list[tuple[str, ...]]:
        """Attribute paths, from the layer, of every tensor a decode step reads or replaces: the
        store's (through its dicts and kvviz objects), the positions, the stats, and with ``fixed``
        a fixed-capacity layer's buffers. An object reached by two paths is listed under both (a
        step may replace it under one), never inside itself. A CUDA graph copies them back
        (``kvviz.runtime.cuda_graphs``); a fused step swaps them in (``kvviz.runtime.fused_steps``)."""
        out: list[tuple[str, ...]] = []

        def walk(obj, path, above: tuple[int, ...] = ()):
            if id(obj) in above:
                return
            for name, value in (obj.items() if isinstance(obj, dict) else vars(obj).items()):
                if isinstance(value, torch.Tensor):
                    out.append(path + (name,))
                elif isinstance(value, dict) or _is_state(value):
                    walk(value, path + (name,), above + (id(obj),))

        for name in ("store", "positions", "stats", "fixed") if fixed else ("store", "positions", "stats"):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                out.append((name,))
            elif value is not None:
                walk(value, (name,))
        return out

    def nbytes(self) -> int:
        """Bytes of the K/V tensors held (of the entries held, for a fixed-capacity layer)."""
        if self.store is None:
            return 0
        return self.fixed.nbytes(len(self)) if self.fixed is not None else self.store.nbytes()

    def bookkeeping_bytes(self) -> int:
        """Bytes of the positions and stats of the entries held."""
        if self.positions is None:
            return 0
        if self.fixed is not None:
            return self.fixed.bookkeeping_bytes(len(self))
        return sum(t.numel() * t.element_size() for t in (self.positions, *self.stats.values()))

    def apply(self, sel: Selection) -> torch.Tensor:
        """Keep ``sel.keep``; returns the (kv_heads, n) bool mask of evicted entries."""
        store, positions = self.held()
        n = positions.shape[1]
        kept = torch.zeros(positions.shape, dtype=torch.bool, device=self.device)
        kept.scatter_(1, sel.keep, True)
        store.keep(sel.keep, sel.keys, sel.values)
        self.positions = positions.gather(1, sel.keep)
        for name, s in self.stats.items():
            if s.shape[-1] == n:
                self.stats[name] = s.gather(1, sel.keep)
        return ~kept


def _is_state(value) -> bool:
    """Objects of kvviz's own whose tensors are part of a layer's state (streams, meters, buffers)."""
    return type(value).__module__.startswith("kvviz.") and not isinstance(value, (torch.Tensor, PolicyCache, PolicyLayer))


class LayerCall:
    """Stands in for the PolicyCache in one attention call: the attention's
    ``cache.update(keys, values, layer_idx)`` becomes ``layer.step(keys, values, positions,
    queries)`` with what the pre-hook read from the same call. Any other attribute is the cache's."""

    def __init__(self, cache: "PolicyCache", positions: torch.Tensor, queries: torch.Tensor | None):
        self._cache, self._positions, self._queries = cache, positions, queries

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer, steps = self._cache.layers[layer_idx], self._cache.fused_steps
        if steps is not None:  # the step compiled, where built (kvviz.runtime.fused_steps)
            out = steps.step(layer, key_states, value_states, self._positions, self._queries)
            if out is not None:
                return out
        return layer.step(key_states, value_states, self._positions, self._queries)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class RunRecords:
    """What the Trace needs from the layers on one device, written there without host reads. Every
    tensor has one row per layer (a fused policy step, kvviz.runtime.fused_steps, is handed its layer's)."""

    def __init__(self, device, layers: list[int], n_kv_heads: int, capacity: int):
        self.device, self.layers = torch.device(device), layers
        n = len(layers)
        self.evicted_at = torch.full((n, n_kv_heads, capacity), -1, dtype=torch.int32, device=device)
        self.scores = torch.full((n, n_kv_heads, capacity), float("nan"), dtype=torch.float32, device=device)
        self.lost_mass = torch.zeros(n, dtype=torch.float32, device=device)  # this step's, per layer
        self.read_at = torch.full((n, n_kv_heads, capacity), -1, dtype=torch.int32, device=device)  # last step read
        self.recall = torch.full((n,), float("nan"), dtype=torch.float32, device=device)  # this step's top-k recall


class PolicyCache(Cache):
    """A Cache for one sequence, compressed by a policy pipeline (selector and/or store)."""

    layers: list[PolicyLayer]  # transformers' Cache declares its base layer types; ours are all PolicyLayer

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
        context_len: int | None = None,
    ):
        self._layer_list = [PolicyLayer(self, i) for i in range(n_layers)]
        # the one cast of this module: transformers' Cache takes a list of its own layer types
        # (lists are invariant), and PolicyLayer is a CacheLayerMixin
        super().__init__(layers=cast(list, self._layer_list))
        self.pipeline = pipeline
        self.n_layers = n_layers
        self.prompt_len = prompt_len
        # query-agnostic runs: the prefill holds the first ``context_len`` prompt tokens alone (the
        # policy compresses them as if they were the prompt, budget and ratio included), and the
        # rest of the prompt, the question, follows in one more forward before the first new token
        self.context_len = prompt_len if context_len is None else context_len
        self.generator = generator
        self.measure_lost_mass = measure_lost_mass
        self.interrupt: Callable[[], bool] | None = None  # asked before each layer while set (the prefill)
        self.fused_steps: Steps | None = None  # a run's fused policy steps while it decodes fused
        self.windows: dict[int, int] = {}  # layer -> its sliding window (the model's, set by ``attached``)
        self.q_heads = 0  # the model's query heads (set by ``attached``)
        sel = pipeline.selector
        self.budget = sel.resolve_budget(self.context_len) if sel is not None else None
        self.layer_budgets = [
            sel.layer_budget(self.budget, i, n_layers, self.context_len) if sel is not None else None for i in range(n_layers)
        ]
        self.protection = sel.protection(self.budget) if sel is not None else Protection()
        # Trace records, on the device of the layers they describe (a model split across GPUs
        # has several): one RunRecords per device, and the row of each layer in its device's
        self.layer_devices = [torch.device(d) for d in (device if isinstance(device, (list, tuple)) else [device] * n_layers)]
        if len(self.layer_devices) != n_layers:
            raise ValueError(f"{len(self.layer_devices)} layer devices for {n_layers} layers")
        self.records = [
            RunRecords(d, layers, n_kv_heads, capacity) for d, layers in layers_by_device(self.layer_devices).items()
        ]
        slots = {li: (rec, row) for rec in self.records for row, li in enumerate(rec.layers)}
        self.record_slot = [slots[li] for li in range(n_layers)]  # layer -> (its device's RunRecords, its row there)

    # attached to a model for one run ----------------------------------------------------------

    @contextmanager
    def attached(self, model):
        """Forward pre-hooks on the model's attention modules, for this run only (removed on
        exit): each call that carries this cache gets a ``LayerCall`` with the tokens' positions
        and, when the selector needs them, the layer's queries. Calls of other runs sharing the
        model carry their own cache and are left alone."""
        modules = decoder_attention(model)
        missing = [i for i, m in enumerate(modules) if m is None]
        if missing:
            raise CaptureError(f"no attention module found in decoder layer(s) {missing}: a PolicyCache cannot follow this model")
        self.windows = {i: w for i, m in enumerate(modules) if (w := sliding_window(m, i))}  # layer -> its window
        self.q_heads = model.config.get_text_config().num_attention_heads
        if self.windows and self.reader is not None:
            raise PolicyError(
                f"{self.reader.name} picks the entries each step reads, and this model's layers "
                f"{', '.join(map(str, sorted(self.windows)))} read only a sliding window of the last keys: "
                "kvviz does not apply a window to a retrieved set yet. Pick an evicting policy or a store."
            )
        handles = [m.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, m in enumerate(modules) if m is not None]
        if self.reader is not None:  # a retriever may mix each head's output (SparQ's mean-value correction)
            outs = [getattr(m, "o_proj", None) for m in modules]
            handles += [o.register_forward_pre_hook(self._mix_hook(i)) for i, o in enumerate(outs) if o is not None]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _mix_hook(self, layer_idx: int):
        """A pre-hook on the layer's output projection: query head h's attention output (one new
        token) becomes ``alpha[h] * out[h] + (1 - alpha[h]) * v[h // group]`` when the step's
        retriever asked for it (``PolicyLayer.mix``, used once)."""

        def hook(module, args):
            layer = self.layers[layer_idx]
            if layer.mix is None or args[0].shape[1] != 1:
                return None
            (alpha, v), layer.mix = layer.mix, None
            x = args[0]
            heads = alpha.shape[0]
            out = x.float().reshape(*x.shape[:-1], heads, -1)  # (batch, 1, heads, d)
            v = v.repeat_interleave(heads // v.shape[0], dim=0)  # (heads, d)
            mixed = alpha[:, None] * out + (1 - alpha[:, None]) * v
            return (mixed.reshape(x.shape).to(x.dtype), *args[1:])

        return hook

    def _hook(self, layer_idx: int):
        def hook(module, args, kwargs=None):
            # kwargs is None only in the instant another thread registers or removes its hooks,
            # for a hook that is not of the run being called
            if kwargs is None:
                return None
            key = next((k for k in CACHE_KEYWORDS if kwargs.get(k) is self), None)
            if key is None:
                return None  # another run's forward (or no cache at all)
            if self.interrupt is not None and self.interrupt():
                raise Stopped  # Stop during a long prefill: the run ends here, with nothing generated
            position_ids = kwargs.get("position_ids")
            layer = self.layers[layer_idx]
            if position_ids is None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                positions = torch.arange(layer.seen, layer.seen + hidden.shape[1], device=hidden.device)
            else:
                positions = position_ids[0]  # (q_len,)
            queries = None
            if layer.wants_queries():
                why = unreadable(module)
                if why:
                    raise CaptureError(f"{self.pipeline.spec} scores with the attention queries: {why}")
                queries = AttentionCall.read(module, args, kwargs).queries()
            kwargs = {**kwargs, key: LayerCall(self, positions, queries)}
            if layer.fixed is not None and self.reader is not None:  # a read set: its buffer, rewritten by the step
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                width = self.reader.read_width(layer_idx, layer.fixed.capacity)
                kwargs["attention_mask"] = layer.fixed.read_mask(width, hidden.dtype)
            elif layer.fixed is not None:  # the attention reads every slot: hide those not written yet
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                kwargs["attention_mask"] = layer.fixed.attention_mask(hidden.dtype)
            elif layer.seen and positions.shape[0] == 1 and self.retrieves:
                kwargs["attention_mask"] = None  # one query reads a gathered set of its past: nothing to hide
            elif layer.seen and layer_idx in self.windows and len(layer) != layer.seen:  # a window over a compressed cache
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                kwargs["attention_mask"] = window_mask(layer.held()[1], positions, self.windows[layer_idx], self.q_heads, hidden.dtype)
            elif layer.seen and isinstance(kwargs.get("attention_mask"), torch.Tensor):
                kwargs["attention_mask"] = sized_mask(kwargs["attention_mask"], len(layer), positions.shape[0], layer.seen)
            return args, kwargs

        return hook

    def wants_queries(self, prefill: bool) -> bool:
        """Whether a step (the prefill, or a decode step) needs the layers' queries: for a
        selector that scores with them, or to measure the attention mass lost to eviction."""
        if prefill and self.pipeline.storage is not None and self.pipeline.storage.needs_prefill_queries:
            return True
        if self.reader is not None and not prefill:
            return True
        sel = self.pipeline.selector
        if sel is None or not (prefill or sel.acts_at_decode):
            return False
        return sel.needs_queries or (self.measure_lost_mass and self.budget is not None)

    # built by layers --------------------------------------------------------------------------

    def make_store(self, layer_idx, kv_heads, head_dim, dtype, device) -> Store:
        if self.pipeline.storage is None:
            return Store(kv_heads, head_dim, dtype, device)
        return self.pipeline.storage.make_store(layer_idx, self.n_layers, kv_heads, head_dim, dtype, device)

    @property
    def retrieves(self) -> bool:
        """Whether the selector picks, at each decode step, the entries the attention reads."""
        return self.reader is not None

    @property
    def reader(self) -> Retriever | None:
        """The policy that picks what each decode step reads: a retriever alone or composed after a selector."""
        sel = self.pipeline.reader or self.pipeline.selector
        return sel if isinstance(sel, Retriever) else None

    def select(self, layer: PolicyLayer, keys, values, new_positions, queries, prefill: bool) -> torch.Tensor | None:
        """Let the selector decide what the layer keeps, and record the decision. Returns the
        (kv_heads, k) entries this step's attention reads, for a retriever; None = all."""
        sel, reader = self.pipeline.selector, self.reader
        layer.mix = None
        acting = sel if sel is not None and (prefill or sel.acts_at_decode) else None
        if acting is None and reader is None:
            return None
        if acting is not None and acting.needs_queries and queries is None:
            raise PolicyError(f"{acting.name} needs the attention queries, but none were captured for this model.")
        view = LayerView(
            layer_idx=layer.layer_idx,
            n_layers=self.n_layers,
            keys=keys,
            values=values,
            positions=layer.held()[1],
            stats=layer.stats,
            queries=queries,
            query_positions=new_positions if queries is not None else None,
            n_new=new_positions.shape[0],
        )
        ctx = StepContext(
            step=0 if prefill else layer.seen - self.prompt_len,
            prompt_len=self.context_len if prefill else self.prompt_len,
            seq_len=layer.seen,
            budget=self.layer_budgets[layer.layer_idx],
            generator=self.generator,
        )
        read = reader.read(view, ctx) if reader is not None else None
        if read is not None and reader is not None:
            layer.mix = reader.mix(view, ctx, read)
            self.record_read(layer, view, read, None, new_positions)
        decision = acting.step(view, ctx) if acting is not None else None
        if decision is not None:
            self.record(layer, decision, view, new_positions)
        if read is not None and self.measure_lost_mass and queries is not None:
            self.record_unread(layer, view, read, None, queries, new_positions, add=decision is not None)
        return read

    def read_fixed(self, layer: PolicyLayer, keys, values, new_positions, queries):
        """A decode step of a retriever over a fixed-capacity layer: its read set in static shapes
        (``Retriever.read_fixed``), recorded as ``select`` records the growing layout's, the
        attention's read mask rewritten in place; returns the keys and values read,
        (kv_heads, width, head_dim) each, where columns not read are masked."""
        reader, fixed = self.reader, layer.fixed
        assert reader is not None and fixed is not None
        if queries is None:
            raise PolicyError(f"{reader.name} reads the layer's queries, but none were captured for this model.")
        layer.mix = None
        view = LayerView(
            layer_idx=layer.layer_idx, n_layers=self.n_layers, keys=keys, values=values, positions=layer.held()[1],
            stats=layer.stats, queries=queries, query_positions=new_positions, n_new=new_positions.shape[0], length=fixed.length,
        )
        ctx = StepContext(step=layer.seen - self.prompt_len, prompt_len=self.prompt_len, seq_len=layer.seen,
                          budget=self.layer_budgets[layer.layer_idx], generator=self.generator)
        slots, reading = reader.read_fixed(view, ctx)  # (kv_heads, width) each
        fixed.mask_reads(reading)
        layer.mix = reader.mix(view, ctx, slots, reading)
        self.record_read(layer, view, slots, reading, new_positions)
        if self.measure_lost_mass:
            self.record_unread(layer, view, slots, reading, queries, new_positions)
        index = slots[..., None].expand(-1, -1, keys.shape[-1])
        return keys.gather(1, index), values.gather(1, index)

    def record_read(self, layer: PolicyLayer, view: LayerView, read, reading, new_positions) -> None:
        """Write the step into ``read_at`` for the entries read: read (kv_heads, k) indices into the
        view, reading (kv_heads, k) bool the columns read (None = all). A step's number only
        grows, so the largest is the last step that read an entry (columns not read leave it)."""
        rec, row = self.record_slot[layer.layer_idx]
        step = (new_positions[-1] - (self.prompt_len - 1)).clamp_min(0).to(torch.int32)
        values = step.expand(read.shape) if reading is None else torch.where(reading, step, -1).to(torch.int32)
        rec.read_at[row].scatter_reduce_(1, view.positions.gather(1, read), values.contiguous(), reduce="amax")

    def record_unread(self, layer: PolicyLayer, view: LayerView, read, reading, queries, new_positions, add=False) -> None:
        """The attention mass the step's query would put on the entries it did not read, and the
        share of the true top-k it read (k = the entries read); slots holding no entry weigh 0."""
        rec, row = self.record_slot[layer.layer_idx]
        key_positions = view.positions
        if view.length is not None:  # slots not written yet: in the future of every query
            key_positions = torch.where(view.valid(), key_positions, torch.iinfo(key_positions.dtype).max)
        probs = attention_probs(queries[:, -1:], view.keys, new_positions[-1:], key_positions)[:, 0]  # (kv_heads, n)
        got = probs.gather(1, read)
        unread = (probs.sum(-1) - (got if reading is None else got * reading).sum(-1)).mean()
        rec.lost_mass[row] = unread + (rec.lost_mass[row] if add else 0)
        rec.recall[row] = topk_recall(probs, read, reading)

    def record(self, layer: PolicyLayer, decision: Selection, view: LayerView, new_positions: torch.Tensor) -> None:
        """Apply the decision to the layer and write the trace's records: scores, the step at
        which each evicted entry left (computed on the device from the new tokens' positions:
        a step's last new token sits at ``prompt_len + step - 1``, the prompt's at
        ``prompt_len - 1``, so a replayed CUDA graph writes the right step) and the lost mass:
        the attention the step's last query put on the entries evicted."""
        positions = view.positions
        rec, row = self.record_slot[layer.layer_idx]
        if decision.scores is not None:
            rec.scores[row].scatter_(1, positions, decision.scores.float())
        evicted = layer.apply(decision)  # (kv_heads, n) bool
        step = (new_positions[-1] - (self.prompt_len - 1)).clamp_min(0).to(torch.int32)
        # every entry held until now was never evicted (-1): write the step where it leaves
        rec.evicted_at[row].scatter_(1, positions, torch.where(evicted, step, -1).to(torch.int32))
        if self.measure_lost_mass and view.queries is not None:
            rec.lost_mass[row] = (last_query_probs(view) * evicted).sum(dim=-1).mean()

    @property
    def evicted_at(self) -> torch.Tensor:
        """(layers, kv_heads, capacity) int32: the step at which each entry left, -1 = never. On
        the device of a model on one device; gathered to the CPU from a split model's devices."""
        return self._gathered("evicted_at")

    @property
    def scores(self) -> torch.Tensor:
        """(layers, kv_heads, capacity) float32: the last score that decided each entry, NaN = never scored."""
        return self._gathered("scores")

    def _gathered(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """The records called ``name`` of every layer, in layer order: the one device's own
        tensor, or, for a split model, the devices' parts copied into one on ``device``."""
        if len(self.records) == 1:
            return getattr(self.records[0], name)
        parts = [getattr(rec, name) for rec in self.records]
        out = parts[0].new_empty((self.n_layers, *parts[0].shape[1:]), device=device)
        for rec, part in zip(self.records, parts):
            out[rec.layers] = part.to(out.device)
        return out

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
        return sum(layer.nbytes() for layer in self.layers)

    def reserved_kv_bytes(self) -> int:
        """Bytes the K/V tensors take in memory: the whole buffers of fixed-capacity layers."""
        return sum(layer.store.nbytes() for layer in self.layers if layer.store is not None)

    def bookkeeping_bytes(self) -> int:
        """Positions and policy statistics kvviz keeps beside the K/V tensors."""
        return sum(layer.bookkeeping_bytes() for layer in self.layers)

    def take_lost_mass(self) -> torch.Tensor:
        """(layers,) the attention mass lost to this step's evictions; the record starts again at 0.
        On the device of the first layer (a split model's other devices copy theirs there)."""
        out = self._gathered("lost_mass", self.records[0].device).clone()
        for rec in self.records:
            rec.lost_mass.zero_()
        return out

    def take_recall(self) -> torch.Tensor:
        """(layers,) the share of the true top-k this step's read sets held (NaN where nothing was
        chosen or measured); the record starts again at NaN."""
        out = self._gathered("recall", self.records[0].device).clone()
        for rec in self.records:
            rec.recall.fill_(float("nan"))
        return out

    def read_bytes(self) -> int:
        """K/V bytes the last step's attention read, all layers (a retriever's read sets). A
        fixed-capacity layer's are host arithmetic (a replayed step runs no Python)."""
        reader, total = self.reader, 0
        for layer in self.layers:
            if reader is not None and layer.fixed is not None and layer.seen > layer.fixed.seen0:
                n = len(layer)
                total += layer.nbytes() * reader.read_count(layer.layer_idx, n) // n
            else:
                total += layer.last_read_bytes
        return total

    def read_now(self, step: int) -> torch.Tensor:
        """(layers, kv_heads, capacity) bool: the entries step ``step``'s attention read, chosen
        by a retriever (none at the prefill, which reads everything)."""
        return self._gathered("read_at") == step

    def summary_bytes(self) -> int:
        """Bytes of the retriever's key summaries beside the held entries, all layers."""
        reader = self.reader
        if reader is None:
            return 0
        return sum(
            reader.summary_bytes(layer.held()[1].shape[0], len(layer), layer.store.head_dim)
            for layer in self.layers if layer.store is not None
        )

    def kv_bytes_by_device(self) -> dict[str, int]:
        """Bytes of K/V tensors held on each device (``kv_bytes`` split by where the layers live)."""
        out = {str(d): 0 for d in self.layer_devices}
        for layer, device in zip(self.layers, self.layer_devices):
            out[str(device)] += layer.nbytes()
        return out

    def store_error(self) -> StoreError | None:
        """The reconstruction error of a lossy store, per layer; None for a store that holds the
        entries as they are. Reads the device once (at the end of a run)."""
        found = [layer.store.error() for layer in self.layers if layer.store is not None]
        errors = [e for e in found if e is not None]
        if not errors or len(errors) < len(found):
            return None

        def most(values):  # every layer sees the same tokens, so the layers agree
            return None if any(v is None for v in values) else max(values)

        return StoreError(
            key=[e.key for e in errors],
            value=[e.value for e in errors],
            full_precision_keys=most([e.full_precision_keys for e in errors]),
            full_precision_values=most([e.full_precision_values for e in errors]),
        )

    def grows(self) -> bool:
        """True when no selector evicts at decode: every layer grows by one entry per step (a
        retriever evicts nothing: it reads a gathered part of what is held)."""
        sel = self.pipeline.selector
        return sel is None or not sel.acts_at_decode or isinstance(sel, Retriever)

    def can_hold_fixed(self) -> bool:
        """Whether every layer's store can be held at a fixed capacity (after the prefill)."""
        return all(layer.store is not None and layer.store.can_hold_fixed() for layer in self.layers)

    def hold_fixed(self, new_tokens: int) -> None:
        """After the prefill of a growing cache: each layer's entries move into buffers with room
        for ``new_tokens`` more, so decode steps keep their shapes (``kvviz.storage.fixed_capacity``)."""
        if not self.grows():
            raise PolicyError(f"{self.pipeline.spec}: a selector that evicts at decode keeps its own fixed budget.")
        if not self.can_hold_fixed():
            raise PolicyError(f"{self.pipeline.spec}: this store cannot be held at a fixed capacity.")
        for layer in self.layers:
            layer.hold_fixed(len(layer) + new_tokens)

    @property
    def is_fixed(self) -> bool:
        """Whether every layer is held at a fixed capacity."""
        return all(layer.fixed is not None for layer in self.layers)

    def steady(self) -> bool:
        """True when every decode step keeps every tensor's shape (what a CUDA graph needs):
        every layer holds exactly its budget, so each step appends one entry and evicts one, or
        every layer is held at a fixed capacity."""
        return self.is_fixed or all(
            b is not None and layer.is_initialized and len(layer) == b
            for layer, b in zip(self.layers, self.layer_budgets)
        )
