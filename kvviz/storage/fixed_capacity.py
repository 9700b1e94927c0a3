"""Fixed-capacity layers: a growing cache held in preallocated buffers, so that every decode step
has the same shapes and can be replayed from a CUDA graph.

After the prefill (and the policy's compression of the prompt), a layer whose cache grows by one
entry per step (the full cache, SnapKV and PyramidKV after the prompt, a store on its own) can
move its entries into buffers of ``capacity`` slots: what it holds after the prefill plus one slot
per new token. The number of valid slots is a device tensor ``length``. A step writes the new
entry at slot ``length`` (``index_copy_`` with a device index: no host read), and the attention
reads every slot: the attention pre-hook (``PolicyCache.attached``) passes, in place of the
model's ``attention_mask``, an additive mask (1, 1, 1, capacity) that is 0 on the valid slots and
the dtype's minimum on the slots not written yet (what transformers' own masks hold; sdpa and
eager attention add it to the scores, so those slots get exactly zero weight). Slots not written
yet hold zeros, so no NaN can leak through a zero weight.

A store says which of its tensors grow by one row per token: ``Store.row_paths()`` gives their
attribute paths (each tensor (heads, n, ...)), or None for a store that cannot be held this way.
``FixedRows`` swaps each for a (heads, capacity, ...) buffer and keeps the store's own code for
the rest: an append runs ``store.append`` on empty rows, so it computes only the new token's rows
(quantized, projected, pooled: the same arithmetic as the growing store), and writes them into
the buffers at ``length``; ``store.materialize()`` then reads whole buffers.

The host keeps its own count without reading the device: a layer that held ``held0`` entries
when it was fixed at ``seen0`` tokens holds ``held0 + seen - seen0`` after ``seen`` tokens (a
replayed graph advances ``seen`` by hand). Byte counts are of the entries held, as in the growing
layout; ``reserved_bytes`` is what the buffers take.
"""

from __future__ import annotations

import torch

from kvviz.storage.quantize import Quantized, dequantize, quantize

Path = tuple[str, ...]


def get_path(obj, path: Path):
    for name in path:
        obj = obj[name] if isinstance(obj, dict) else getattr(obj, name)
    return obj


def set_path(obj, path: Path, value) -> None:
    parent = get_path(obj, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def supported(model) -> bool:
    """Whether the model's attention reads an additive ``attention_mask`` as given (sdpa, eager)."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class FixedRows:
    """The growing tensors of a store, in buffers of ``capacity`` rows; the first ``n`` are the
    store's current rows."""

    def __init__(self, store, paths: list[Path], capacity: int, n: int):
        self.store, self.paths = store, paths
        self.buffers: dict[Path, torch.Tensor] = {}  # (heads, capacity, ...) each
        self.empty: dict[Path, torch.Tensor] = {}  # (heads, 0, ...) each
        for p in paths:
            rows = get_path(store, p)  # (heads, n, ...)
            buffer = rows.new_zeros(rows.shape[0], capacity, *rows.shape[2:])
            buffer[:, :n] = rows
            self.buffers[p], self.empty[p] = buffer, rows[:, :0]
            set_path(store, p, buffer)

    def append(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        """keys, values (kv_heads, 1, head_dim); index (1,) long on the device: the slot to write."""
        for p in self.paths:
            set_path(self.store, p, self.empty[p])
        self.store.append(keys, values)  # the store's rows are now the new token's only
        for p in self.paths:
            self.buffers[p].index_copy_(1, index, get_path(self.store, p))
            set_path(self.store, p, self.buffers[p])

    def nbytes(self, n: int) -> int:
        """Bytes of the store holding ``n`` entries (the rows held plus what does not grow)."""
        rows = sum(_nbytes(b) for b in self.buffers.values())
        per_row = sum(_nbytes(b[:, :1]) for b in self.buffers.values())
        return self.store.nbytes() - rows + n * per_row


class FixedLayer:
    """A layer's entries, positions and stats in buffers of ``capacity`` slots, ``length`` valid."""

    def __init__(self, layer, capacity: int):
        store = layer.store
        if not store.can_hold_fixed():
            raise ValueError(f"{type(store).__name__} cannot be held at a fixed capacity.")
        n = len(store)
        if capacity < n:
            raise ValueError(f"capacity {capacity} is below the {n} entries held.")
        self.capacity, self.held0, self.seen0 = capacity, n, layer.seen
        device = layer.positions.device
        self.length = torch.full((1,), n, dtype=torch.long, device=device)  # valid slots
        self.slots = torch.arange(capacity, device=device)  # (capacity,)
        self.reads: torch.Tensor | None = None  # a retriever's read mask (read_mask)
        self.rows = store.hold_fixed(capacity, n, self.length)  # FixedRows or FixedStreams
        kv_heads = layer.positions.shape[0]
        # positions of slots not written yet are 0 (nothing reads them: no selector acts at decode)
        self.positions = layer.positions.new_zeros(kv_heads, capacity)  # (kv_heads, capacity) long
        self.positions[:, :n] = layer.positions
        layer.positions = self.positions
        self.stats = {}
        for name, s in layer.stats.items():  # (kv_heads, n) -> (kv_heads, capacity)
            buffer = s.new_zeros(kv_heads, capacity)
            buffer[:, :n] = s
            self.stats[name] = layer.stats[name] = buffer

    def read_mask(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, 1, width) additive mask of a retriever's read set (``Retriever.read_fixed``): one
        buffer, made at the first call, that the attention reads and each step rewrites in place
        (``mask_reads``) before the attention runs, so a replayed graph reads the step's own."""
        if self.reads is None or self.reads.shape[-1] != width:
            self.reads = torch.zeros(1, 1, 1, width, dtype=dtype, device=self.slots.device)
        return self.reads

    def mask_reads(self, reading: torch.Tensor) -> None:
        """reading (kv_heads, width) bool: the columns of the read set that are entries read; every
        KV head reads as many, first (``Retriever.read_fixed``), so KV head 0's row masks them all."""
        mask = self.read_mask(reading.shape[1], torch.float32)  # the dtype of the attention's, once it exists
        mask.copy_(torch.where(reading[0], 0.0, torch.finfo(mask.dtype).min).view(mask.shape))

    def held(self, seen: int) -> int:
        """Entries held after ``seen`` tokens (host arithmetic, no device read)."""
        return self.held0 + seen - self.seen0

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, 1, capacity) additive mask for the coming step, whose entry goes to slot ``length``."""
        unwritten = self.slots > self.length  # (capacity,) bool
        mask = torch.zeros(1, 1, 1, self.capacity, dtype=dtype, device=self.slots.device)
        return mask.masked_fill_(unwritten, torch.finfo(dtype).min)

    def step(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):
        """keys, values (kv_heads, 1, head_dim), positions (1,) -> the keys and values the
        attention reads, (kv_heads, capacity, head_dim) each."""
        if keys.shape[1] != 1:
            raise ValueError("a fixed-capacity layer takes one token per forward")
        self.rows.append(keys, values, self.length)
        self.positions.index_copy_(1, self.length, positions.expand(self.positions.shape[0], 1))
        for s in self.stats.values():
            s.index_fill_(1, self.length, 0)
        self.length += 1
        return self.rows.store.materialize()

    def nbytes(self, n: int) -> int:
        return self.rows.nbytes(n)

    def bookkeeping_bytes(self, n: int) -> int:
        """Positions and stats of ``n`` entries, as the growing layout holds them."""
        return sum(_nbytes(t[:, :1]) for t in (self.positions, *self.stats.values())) * n


class FixedStream:
    """A ``kvviz.storage.quantize.QuantizedStream`` at a fixed capacity: the quantized part in buffers of
    ``rows`` token rows (capacity, rounded up to whole groups per channel), the full-precision tail
    in a ring of ``window`` slots (token i in slot i % window): KIVI's residual R per token, or
    the group G that fills before it is quantized per channel. Branch-free, so that one captured
    step serves every later one:
    - per token: the token leaving the residual (i = n - R) is quantized alone and written at its
      row every step; while n < R there is none, the row written (0) is not read as quantized
      yet, and its error is not counted (``where``);
    - per channel: the chunk being filled (KIVI's R tokens, else one group) is quantized every
      step, in groups of G tokens, and written over its rows; it is read as quantized (and its
      error counted) only once full.
    With the stream's ``after_read`` (KIVI), the attention reads as quantized only what was
    quantized before this step (``length`` - 1 tokens held), and the per-token ring holds R + 1
    tokens: the one leaving the residual is read in full precision by the step that quantizes it.
    The arithmetic is the growing stream's: a row, or a whole group, quantized the same way."""

    def __init__(self, stream, capacity: int, length: torch.Tensor):
        self.bits, self.per_channel, self.symmetric = stream.bits, stream.per_channel, stream.symmetric
        self.group_size, self.dtype, self.meter = stream.group_size, stream.dtype, stream.meter
        self.window = stream.chunk if stream.per_channel else stream.residual
        self.lag = int(stream.after_read)  # tokens appended this step that the attention reads unquantized
        self.ring_size = self.window + (self.lag if not self.per_channel and self.window else 0)
        self.length = length  # (1,) long, shared with the layer: tokens held before this step's append
        self.capacity = capacity
        q, tail = stream.q, stream.tail
        kv, d = tail.shape[0], tail.shape[2]
        n_q, n = q.codes.shape[1], q.codes.shape[1] + tail.shape[1]
        g = self.group_size
        rows = -(-capacity // self.window) * self.window if self.per_channel else capacity
        self.rows = rows

        def buffer(t, size):  # (kv, size, ...) with t's rows first
            b = t.new_zeros(kv, size, *t.shape[2:])
            b[:, : t.shape[1]] = t
            return b

        scale_rows = rows // g if self.per_channel else rows
        zero = None if q.zero is None else buffer(q.zero, scale_rows)
        self.q = Quantized(buffer(q.codes, rows), buffer(q.scale, scale_rows), zero, q.bits, q.dim, q.group_size)
        self.ring = tail.new_zeros(kv, max(self.ring_size, 1), d)  # (kv, ring_size, d) full precision
        for i in range(n_q, n):
            self.ring[:, i % self.ring_size] = tail[:, i - n_q]
        self.slots = torch.arange(rows, device=tail.device)  # (rows,)

    def __len__(self) -> int:
        return self.capacity  # slots; the layer counts the entries held

    def quantized(self, n):
        """Tokens held quantized when ``n`` are held (a device tensor or a host integer)."""
        if self.per_channel:
            return n // self.window * self.window
        return (n - self.window).clamp_min(0) if isinstance(n, torch.Tensor) else max(n - self.window, 0)

    def append(self, x: torch.Tensor) -> None:
        """x (kv_heads, 1, head_dim), the token at index ``length``."""
        n = self.length
        self.meter.add(x)
        if self.window == 0:  # per token, no residual: the token is quantized as it arrives
            self._write(quantize(x, self.bits, -1, self.group_size, self.symmetric, self.dtype, return_dequantized=True), x, n, n >= 0)
            return
        slot = n % self.ring_size
        if self.per_channel:
            self.ring.index_copy_(1, slot, x)
            chunk = n // self.window
            full = (n + 1) % self.window == 0
            q = quantize(self.ring, self.bits, 1, self.group_size, self.symmetric, self.dtype, return_dequantized=True)
            groups = self.window // self.group_size
            rows = chunk * self.window + torch.arange(self.window, device=n.device)
            self._write(q, self.ring, rows, full, chunk * groups + torch.arange(groups, device=n.device))
        else:
            leaving = self.ring.index_select(1, (n - self.window) % self.ring_size)  # token n - R, once n >= R
            q = quantize(leaving, self.bits, -1, self.group_size, self.symmetric, self.dtype, return_dequantized=True)
            self._write(q, leaving, (n - self.window).clamp_min(0), n >= self.window)
            self.ring.index_copy_(1, slot, x)

    def _write(self, quantized, x, rows, counted, scale_rows=None) -> None:
        """Write ``quantized`` = (Quantized, x') of ``x`` at token rows ``rows`` (scale rows
        ``scale_rows``, the same per token); its error counts where ``counted`` (1,) bool."""
        q, x_hat = quantized
        scale_rows = rows if scale_rows is None else scale_rows
        self.q.codes.index_copy_(1, rows, q.codes)
        self.q.scale.index_copy_(1, scale_rows, q.scale)
        if q.zero is not None:
            assert self.q.zero is not None, "asymmetric codes written into a symmetric buffer"
            self.q.zero.index_copy_(1, scale_rows, q.zero)
        error = (x.float() - x_hat).square().sum()
        self.meter.err += torch.where(counted[0], error, torch.zeros_like(error))

    def materialize(self) -> torch.Tensor:
        """(kv_heads, capacity, head_dim): token j dequantized, or from the ring while in the tail
        (called after the layer counted this step's token in ``length``)."""
        x = dequantize(self.q, self.dtype)  # (kv, rows, d)
        if self.window:
            in_tail = self.slots >= self.quantized(self.length - self.lag)  # (rows,)
            x = torch.where(in_tail[None, :, None], self.ring.index_select(1, self.slots % self.ring_size), x)
        return x[:, : self.capacity]

    def nbytes(self, n: int) -> int:
        """Bytes of the growing stream holding ``n`` tokens: its quantized rows and its tail."""
        n_q = self.quantized(n)
        per_row = _nbytes(self.q.codes[:, :1]) + (0 if self.per_channel else _nbytes(self.q.scale[:, :1]) * (1 + (self.q.zero is not None)))
        per_group = _nbytes(self.q.scale[:, :1]) * (1 + (self.q.zero is not None)) if self.per_channel else 0
        groups = n_q // self.group_size if self.per_channel else 0
        return n_q * per_row + groups * per_group + (n - n_q) * _nbytes(self.ring[:, :1])

    def full_precision(self) -> int:
        """Tokens of the tail (reads the device: at the end of a run)."""
        n = int(self.length)
        return n - self.quantized(n)

    def tensors(self) -> list[torch.Tensor]:
        return self.q.tensors() + [self.ring]


class FixedStreams:
    """A quantizing store's two streams at a fixed capacity (``FixedStream`` each)."""

    def __init__(self, store, capacity: int, length: torch.Tensor):
        self.store = store
        store.k, store.v = FixedStream(store.k, capacity, length), FixedStream(store.v, capacity, length)

    def append(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        self.store.append(keys, values)  # the streams write at the shared length

    def nbytes(self, n: int) -> int:
        return self.store.k.nbytes(n) + self.store.v.nbytes(n)
