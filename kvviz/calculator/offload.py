"""The calculator's offload mode: the whole KV cache of a context in host (CPU) memory, and on the
device only a retrieval method's summary of every entry plus the read set of each decode step.

Per layer holding h entries (a sliding layer at most its window), with a read set of k entries per
KV head (Quest: max(read_budget // page_size, 3) whole pages, as ``kvviz.policies.quest`` reads;
SimHash, SparQ: read_budget, the newest entry among them):

  on the device   the summary, ``summary_bytes(kv_heads, h, d)`` of the policy itself (Quest: the
                  min and max key of every page; SimHash: bits × tables bits per key), plus a
                  buffer for the read set's keys and values (k entries)
  on the host     all h entries' keys and values
  moved per step  the read set, host -> device (the newest entry is made on the device, so this
                  over-counts one entry per layer and KV head); SparQ keeps no summary
                  (its ``summary_bytes`` is 0): each step it reads r components of every key,
                  which live on the host, so those move too and are shown as its "summary"

A layer whose read set covers all it holds reads everything, as the policies do: it stays on the
device whole. Quest's first ``full_layers`` layers read everything (the paper's choice) and stay
on the device too. MLA counts as one KV head whose vector is the latent + RoPE key.

Time per step: the bytes moved for the batch over the host link (a parameter: PCIe 5.0 x16 moves
about 64 GB/s each way, PCIe 4.0 x16 about 32, NVLink-C2C of a Grace Hopper about 450), beside the
time the device's HBM takes to read the same bytes and to read the whole cache (the plain decode).
Pure Python and numpy; the policy classes load torch when first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvviz.i18n import N_, _
from kvviz.calculator.memory import CACHE_DTYPES, DEFAULT_UTILIZATION, GPUS, Architecture, CalcError, Scenario, estimate, held_tokens, shown, vector_bytes, value_text

METHODS = {  # name -> what the page shows (N_-marked: translated where shown)
    "quest": N_("Quest: the min and max key of every page"),
    "simhash": N_("SimHash: bits × tables signature bits per key"),
    "sparq": N_("SparQ: no summary kept; r components of every key read each step"),
}
POLICY_CLASSES = {"quest": "kvviz.policies.quest.Quest", "simhash": "kvviz.policies.simhash.SimHash", "sparq": "kvviz.policies.sparq.SparQ"}
# which of a method's parameters the calculator asks for (the rest keep the policy's defaults)
METHOD_PARAMS = {"quest": ("page_size", "full_layers"), "simhash": ("bits", "tables"), "sparq": ("r",)}
DEFAULT_LINK_GBPS = 64.0  # PCIe 5.0 x16: 32 GT/s × 16 lanes × 128/130 ≈ 63 GB/s per direction
MAX_LINK_GBPS = 10_000.0
# HBM bandwidth of each GPU, GB/s, from the vendors' spec sheets (H100 SXM, H200 SXM, A100 SXM)
HBM_GBPS = {"h100": 3350.0, "h200": 4800.0, "a100-80gb": 2039.0, "a100-40gb": 1555.0, "l4": 300.0, "rtx-4090": 1008.0}


@dataclass(frozen=True)
class Offload:
    """What the offload mode assumes: a retrieval method, its read budget and parameters, the link."""

    method: str = "quest"
    read_budget: int = 2048
    params: dict = field(default_factory=dict)  # e.g. {"page_size": 16}; names as the policy's
    link_gbps: float = DEFAULT_LINK_GBPS

    def policy(self):
        """The retrieval policy itself (kvviz.policies), its parameters checked by it."""
        import importlib

        from kvviz.policies.params import PolicyError

        if not isinstance(self.method, str) or self.method not in METHODS:
            raise CalcError(_("unknown offload method {method}. Known: {known}.").format(method=shown(self.method), known=", ".join(METHODS)))
        unknown = sorted(set(self.params) - set(METHOD_PARAMS[self.method]))
        if unknown:
            raise CalcError(_("{method} takes {params}, not {unknown}.").format(
                method=self.method, params=", ".join(METHOD_PARAMS[self.method]), unknown=", ".join(unknown)))
        try:
            module, name = POLICY_CLASSES[self.method].rsplit(".", 1)
            cls = getattr(importlib.import_module(module), name)  # only this policy's module (torch), not the registry
            return cls.from_params({"read_budget": self.read_budget, **self.params})
        except PolicyError as exc:
            raise CalcError(str(exc)) from None

    def check_link(self) -> float:
        g = self.link_gbps
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 < g <= MAX_LINK_GBPS:
            raise CalcError(_("the host link bandwidth must be in (0, {most}] GB/s, not {value}.").format(most=f"{MAX_LINK_GBPS:,.0f}", value=value_text(g)))
        return float(g)


@dataclass
class OffloadEstimate:
    arch: str
    display: str
    attention: str
    dtype: str
    context: int
    batch: int
    method: str
    read_budget: int
    params: dict
    read_entries: int  # read set per layer and KV head (a layer holding fewer reads what it holds)
    full_bytes: int  # the plain cache of one sequence, all on the device
    device_bytes: int  # on the device per sequence: summaries + read-set buffers + layers kept whole
    summary_bytes: int  # of those, the summaries (SparQ: 0, none kept)
    read_buffer_bytes: int  # of those, the read sets' buffers
    whole_layer_bytes: int  # of those, layers kept whole (read everything)
    host_bytes: int  # offloaded to host memory per sequence
    moved_bytes: int  # host -> device per decode step per sequence
    sparq_key_bytes: int  # SparQ: r components of every key, part of moved_bytes (0 otherwise)
    link_gbps: float
    moved_batch_bytes: int  # moved per step for the whole batch
    link_ms: float  # moved_batch_bytes over the link
    gpu: str | None = None
    hbm_gbps: float | None = None
    hbm_ms: float | None = None  # the same bytes read from HBM
    full_hbm_ms: float | None = None  # the whole plain cache of the batch read from HBM (a plain decode step)
    kv_budget_bytes: int | None = None  # usable GPU memory − weights
    max_sequences_full: int | None = None
    max_sequences_offload: int | None = None
    formulas: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def offload_estimate(
    arch: Architecture, scenario: Scenario, offload: Offload, gpu: str | None = None,
    weights_dtype: str = "bf16", utilization: float = DEFAULT_UTILIZATION, params: int | None = None,
) -> OffloadEstimate:
    if CACHE_DTYPES.get(scenario.dtype) is None or CACHE_DTYPES[scenario.dtype].kind != "float":
        raise CalcError(_("the offload mode sizes a float cache (fp32, bf16, fp16, fp8), not {dtype}.").format(dtype=shown(scenario.dtype)))
    plain = estimate(arch, scenario, gpu=gpu, weights_dtype=weights_dtype, utilization=utilization, params=params)
    policy = offload.policy()
    link = offload.check_link()
    lay = arch.layout
    heads = lay.n_kv_heads or 1
    d = lay.vector_dim
    elem = CACHE_DTYPES[scenario.dtype].bits // 8
    held = held_tokens(lay, scenario, scenario.context)[:, 0]
    k = offload.read_budget
    if offload.method == "quest":  # whole pages, at least 3 (kvviz.policies.quest.Quest.read)
        k = max(offload.read_budget // policy.page_size, 3) * policy.page_size
    whole_first = policy.full_layers if offload.method == "quest" else 0

    def entries(n: int) -> int:  # keys and values of n entries of every KV head of a layer
        return int(vector_bytes(lay, scenario, np.array([n], dtype=np.int64))[0]) * heads

    summary = buffer = whole = host = moved = sparq = 0
    whole_layers = 0
    for i, h in enumerate(held.tolist()):
        if i < whole_first or k >= h:
            whole += entries(h)
            whole_layers += 1
            continue
        summary += int(policy.summary_bytes(heads, h, d))
        buffer += entries(k)
        host += entries(h)
        moved += entries(k)
        if offload.method == "sparq":
            sparq += heads * h * min(policy.r, d) * elem
    moved += sparq
    device = summary + buffer + whole
    B = scenario.batch
    moved_batch = moved * B
    est = OffloadEstimate(
        arch=arch.name, display=arch.display, attention=lay.attention, dtype=scenario.dtype, context=scenario.context,
        batch=B, method=offload.method, read_budget=offload.read_budget,
        params={n: getattr(policy, n) for n in METHOD_PARAMS[offload.method]}, read_entries=k,
        full_bytes=plain.bytes_per_sequence, device_bytes=device, summary_bytes=summary, read_buffer_bytes=buffer,
        whole_layer_bytes=whole, host_bytes=host, moved_bytes=moved, sparq_key_bytes=sparq, link_gbps=link,
        moved_batch_bytes=moved_batch, link_ms=moved_batch / (link * 1e9) * 1e3,
    )
    f = est.formulas
    L = lay.n_layers
    f["read_set"] = _("{k} entries per layer and KV head").format(k=f"{k:,}") + (
        _(" (max(⌊{budget} / {page}⌋, 3) pages of {page})").format(budget=f"{offload.read_budget:,}", page=policy.page_size)
        if offload.method == "quest" else ""
    )
    f["device"] = _(
        "{summary} bytes of summaries + {buffer} bytes of read-set buffers + {whole} bytes of {whole_layers} of {layers} layers "
        "kept whole = {device} bytes per sequence"
    ).format(summary=f"{summary:,}", buffer=f"{buffer:,}", whole=f"{whole:,}", whole_layers=whole_layers, layers=L, device=f"{device:,}")
    f["moved"] = (
        _("{layers} layers × {heads} KV heads × {k} entries' keys and values").format(layers=L - whole_layers, heads=heads, k=f"{k:,}")
        + (" + " + _("r = {r} components × {elem} bytes of every key ({bytes} bytes)").format(r=min(policy.r, d), elem=elem, bytes=f"{sparq:,}")
           if sparq else "")
        + " = " + _("{bytes} bytes per sequence per step").format(bytes=f"{moved:,}")
    )
    f["link"] = _("{bytes} bytes for batch {batch} / {gbps} GB/s = {ms} ms per step").format(
        bytes=f"{moved_batch:,}", batch=B, gbps=f"{link:g}", ms=f"{est.link_ms:.3f}")
    if gpu is not None:
        key = str(gpu).strip().lower()
        est.gpu, est.hbm_gbps = plain.gpu, HBM_GBPS[key]
        est.hbm_ms = moved_batch / (est.hbm_gbps * 1e9) * 1e3
        est.full_hbm_ms = plain.bytes_total / (est.hbm_gbps * 1e9) * 1e3
        est.kv_budget_bytes, est.max_sequences_full = plain.kv_budget_bytes, plain.max_sequences
        est.max_sequences_offload = int(max(plain.kv_budget_bytes or 0, 0) // device) if device else 0
        f["hbm"] = _(
            "the same {bytes} bytes / {gbps} GB/s ({gpu} HBM) = {ms} ms; the whole plain cache of the batch, {full} bytes, = {full_ms} ms"
        ).format(bytes=f"{moved_batch:,}", gbps=f"{est.hbm_gbps:g}", gpu=est.gpu, ms=f"{est.hbm_ms:.3f}", full=f"{plain.bytes_total:,}",
                 full_ms=f"{est.full_hbm_ms:.3f}")
        f["fit"] = _(
            "⌊{left} bytes left after the weights / {device} bytes per sequence⌋ = {n} sequences (plain cache: {plain})"
        ).format(left=f"{max(plain.kv_budget_bytes or 0, 0):,}", device=f"{device:,}", n=f"{est.max_sequences_offload:,}",
                 plain=f"{plain.max_sequences:,}")
    return est


def offload_many(archs, scenario: Scenario, dtypes, offload: Offload, **kwargs) -> tuple[list[OffloadEstimate], list[str]]:
    """``offload_estimate`` for every architecture and dtype; what cannot be computed comes back as messages."""
    from dataclasses import replace

    out, problems = [], []
    for arch in archs:
        for dtype in dtypes:
            try:
                out.append(offload_estimate(arch, replace(scenario, dtype=dtype), offload, **kwargs))
            except CalcError as exc:
                problems.append(f"{arch.display}, {dtype}: {exc}")
    return out, problems


assert set(HBM_GBPS) == set(GPUS), "every GPU needs its HBM bandwidth"
