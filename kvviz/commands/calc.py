"""``python -m kvviz calc``: KV-cache memory of a real architecture from its config, with what-ifs
and how many sequences fit on a GPU. No model is loaded: the numbers come from the config alone
(see ``kvviz.calculator.memory`` for every formula).

  python -m kvviz calc --arch llama-3.1-70b --context 32k --gpu h100 --weights-dtype int4 --dtype kivi-2
  python -m kvviz calc --config path/to/config.json --context 4096 --json
  python -m kvviz calc --list
  python -m kvviz calc --arch llama-3.1-8b --context 32k --gpu h100 --offload quest --read-budget 2048 --page-size 16
"""

from __future__ import annotations

import json
import math
import sys
from typing import overload

HELP = "KV-cache memory of a real architecture from its config (no model is loaded)"


def configure(p) -> None:
    from kvviz.calculator.memory import CACHE_DTYPES, DEFAULT_UTILIZATION, GPUS, WEIGHT_DTYPES
    from kvviz.calculator.offload import DEFAULT_LINK_GBPS

    p.error = _one_line_error  # bad flags too: one line and exit status 2, no usage block
    p.add_argument("--arch", metavar="NAME", help="a bundled architecture (see --list) or a Hugging Face id (owner/name, needs the network)")
    p.add_argument("--config", metavar="FILE", help="a Hugging Face config.json")
    p.add_argument("--list", action="store_true", help="list the bundled architectures")
    p.add_argument("--context", metavar="N", help="tokens per sequence (e.g. 4096 or 32k = 32,768)")
    p.add_argument("--batch", metavar="B", default="1", help="sequences (default 1)")
    p.add_argument("--dtype", default="bf16", metavar="D", help=f"cache dtype: {', '.join(CACHE_DTYPES)} (default bf16)")
    p.add_argument("--group-size", metavar="G", default="32", help="elements per scale and zero point of intN / KIVI values (default 32)")
    p.add_argument("--residual", metavar="R", default="128", help="KIVI's full-precision window and key group, tokens (default 128, the paper's)")
    p.add_argument("--scale-bytes", metavar="S", default="2", help="bytes of a scale, zero point or full-precision element (default 2)")
    p.add_argument("--keep-ratio", metavar="r", help="what if a cache policy keeps this share of the tokens (0 < r <= 1)")
    p.add_argument("--window", metavar="W", help="what if every layer keeps only the last W tokens")
    p.add_argument("--gpu", metavar="NAME", help=f"how many sequences fit on: {', '.join(GPUS)}")
    p.add_argument("--weights-dtype", default="bf16", metavar="D", help=f"weights: {', '.join(WEIGHT_DTYPES)} (default bf16; int4 = 4 bits + fp16 scale and zero per 128)")
    p.add_argument("--params", metavar="N", help="parameter count to use instead of the one derived from the config (e.g. 7.2e9)")
    p.add_argument("--utilization", metavar="U", default=str(DEFAULT_UTILIZATION), help=f"usable share of GPU memory (default {DEFAULT_UTILIZATION}, vLLM's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    o = p.add_argument_group("offload mode: the cache in host memory, a retrieval summary and the read set on the device")
    o.add_argument("--offload", metavar="METHOD", help="quest, simhash or sparq: size the offloaded cache instead of the plain one")
    o.add_argument("--read-budget", metavar="K", default="2048", help="entries each decode step reads per layer and KV head (default 2048)")
    o.add_argument("--page-size", metavar="P", help="Quest: entries per page (default the policy's, 16)")
    o.add_argument("--full-layers", metavar="N", help="Quest: first layers that read everything, kept on the device (default the policy's, 2)")
    o.add_argument("--bits", metavar="B", help="SimHash: signature bits per key and table (default 8)")
    o.add_argument("--tables", metavar="T", help="SimHash: hash tables (default 4)")
    o.add_argument("--r", metavar="R", help="SparQ: query components read of every key each step (default 16)")
    o.add_argument("--link-gbps", metavar="GBPS", default=str(DEFAULT_LINK_GBPS),
                   help=f"host-device bandwidth per direction, GB/s (default {DEFAULT_LINK_GBPS:g}: PCIe 5.0 x16; PCIe 4.0 x16 ~32, NVLink-C2C ~450)")


def _one_line_error(message: str):
    from kvviz.calculator.memory import shown

    print(f"error: {shown(message, 300)[1:-1]}", file=sys.stderr)
    sys.exit(2)


def main(args) -> int:
    from kvviz.calculator import memory as calc

    if args.list:
        return list_architectures(args.json)
    if bool(args.arch) == bool(args.config):
        raise calc.CalcError("give one of --arch NAME or --config FILE (or --list).")
    arch = calc.architecture_from_file(args.config) if args.config else calc.resolve(args.arch)  # before the numbers
    if args.context is None:
        raise calc.CalcError("give --context N (tokens per sequence).")
    scenario = calc.Scenario(
        context=tokens(args.context, "--context"),
        batch=integer(args.batch, "--batch"),
        dtype=args.dtype.lower(),
        group_size=integer(args.group_size, "--group-size"),
        residual=integer(args.residual, "--residual"),
        full_bytes=integer(args.scale_bytes, "--scale-bytes"),
        keep_ratio=number(args.keep_ratio, "--keep-ratio"),
        window=tokens(args.window, "--window") if args.window is not None else None,
    )
    params = integer(args.params, "--params") if args.params is not None else None
    if args.offload is not None:
        return offload_main(args, arch, scenario, params)
    est = calc.estimate(
        arch, scenario, gpu=args.gpu, weights_dtype=args.weights_dtype.lower(),
        utilization=number(args.utilization, "--utilization"), params=params,
    )
    if args.json:
        print(json.dumps(est.to_dict() | {"source": arch.source}))
    else:
        print(report(est, arch))
    return 0


def offload_main(args, arch, scenario, params) -> int:
    from kvviz.calculator.offload import METHOD_PARAMS, Offload, offload_estimate

    method = args.offload.strip().lower()
    given = {name: getattr(args, name) for names in METHOD_PARAMS.values() for name in names if getattr(args, name) is not None}
    stray = sorted(set(given) - set(METHOD_PARAMS.get(method, ())))
    if stray and method in METHOD_PARAMS:
        raise calc_error(f"--{stray[0].replace('_', '-')} is not a parameter of {method} (it takes {', '.join('--' + n.replace('_', '-') for n in METHOD_PARAMS[method])}).")
    offload = Offload(
        method=method, read_budget=integer(args.read_budget, "--read-budget"),
        params={name: integer(value, "--" + name.replace("_", "-")) for name, value in given.items()},
        link_gbps=number(args.link_gbps, "--link-gbps"),
    )
    est = offload_estimate(
        arch, scenario, offload, gpu=args.gpu, weights_dtype=args.weights_dtype.lower(),
        utilization=number(args.utilization, "--utilization"), params=params,
    )
    if args.json:
        print(json.dumps(est.to_dict() | {"source": arch.source}))
    else:
        print(offload_report(est, arch))
    return 0


def calc_error(message: str):
    from kvviz.calculator.memory import CalcError

    return CalcError(message)


def offload_report(est, arch) -> str:
    from kvviz.record.metrics import format_bytes

    setting = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in est.params.items())
    lines = [
        f"{est.display} ({est.attention}) · {est.context:,} tokens · batch {est.batch} · {est.dtype} cache offloaded to host · "
        f"{est.method} ({setting}) reads {est.read_entries:,} entries per layer and KV head · config: {arch.source}"
    ]
    f = est.formulas
    summary = "r key components, moved each step (SparQ keeps none)" if est.method == "sparq" else "summaries, on the device"
    rows = [
        ("plain cache on the device", format_bytes(est.full_bytes), "per sequence, for comparison"),
        ("on the device", format_bytes(est.device_bytes), f["device"]),
        ("summary" if est.method != "sparq" else "r key components", format_bytes(est.summary_bytes if est.method != "sparq" else est.sparq_key_bytes), summary),
        ("offloaded to host", format_bytes(est.host_bytes), "per sequence: every entry of the offloaded layers"),
        ("moved per step", format_bytes(est.moved_bytes), f["moved"]),
        (f"over {est.link_gbps:g} GB/s", f"{est.link_ms:.3f} ms", f["link"]),
    ]
    if est.gpu:
        rows.append(("HBM read", f"{est.hbm_ms:.3f} ms", f["hbm"]))
        rows.append((est.gpu, f"{est.max_sequences_offload:,} fit", f["fit"]))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {name:<{width}}  {value:>10}  {formula}" for name, value, formula in rows]
    return "\n".join(lines)


def tokens(text: str, flag: str) -> int:
    """'4096' or '32k' (x 1024)."""
    t = str(text).strip().lower()
    scale = 1024 if t.endswith("k") and len(t) > 1 else 1
    return integer(t[:-1] if scale > 1 else t, flag, text) * scale


def integer(text, flag: str, shown_as=None) -> int:
    """A whole number ('4096', '7.2e9'); CalcError naming ``flag`` otherwise (a number too large to
    be one is refused here, the sizes' own bounds are the calculator's)."""
    from kvviz.calculator.memory import CalcError, shown

    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise CalcError(f"{flag} must be a whole number, not {shown(text if shown_as is None else shown_as)}.")
    return int(value)


@overload
def number(text: None, flag: str) -> None: ...
@overload
def number(text: str, flag: str) -> float: ...
def number(text: str | None, flag: str) -> float | None:
    """A finite number from ``text`` (None stays None: an option left out); CalcError naming ``flag`` otherwise."""
    from kvviz.calculator.memory import CalcError, shown

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CalcError(f"{flag} must be a number, not {shown(text)}.") from None
    if not math.isfinite(value):
        raise CalcError(f"{flag} must be a finite number, not {shown(text)}.")
    return value


def report(est, arch) -> str:
    from kvviz.record.metrics import format_bytes

    lines = [f"{est.display} ({est.attention}) · {est.context:,} tokens · batch {est.batch} · {est.dtype} cache · config: {arch.source}"]
    rows = [
        ("per token", format_bytes(est.bytes_per_token), est.formulas["per_token"]),
        ("per sequence", format_bytes(est.bytes_per_sequence), est.formulas["per_sequence"]),
        ("batch", format_bytes(est.bytes_total), est.formulas["total"]),
    ]
    if est.weights_bytes:
        rows.append(("weights", format_bytes(est.weights_bytes), f"{est.params:,} parameters × {est.weights_dtype}"))
    if est.gpu:
        rows.append((est.gpu, f"{est.max_sequences:,} fit", est.formulas["fit"]))
        if not est.weights_fit:
            rows.append(("", "", f"the {est.weights_dtype} weights alone exceed {est.utilization:.0%} of the {est.gpu}: try --weights-dtype fp8 or int4"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {name:<{width}}  {value:>10}  {formula}" for name, value, formula in rows]
    lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)


def list_architectures(as_json: bool) -> int:
    from kvviz.calculator import memory as calc
    from kvviz.record.metrics import format_bytes

    rows = []
    for arch in calc.bundled().values():
        lay = arch.layout
        per_token = calc.estimate(arch, calc.Scenario(context=1)).bytes_per_token
        rows.append({
            "arch": arch.name, "display": arch.display, "attention": lay.attention, "layers": lay.n_layers,
            "kv_heads": lay.n_kv_heads, "head_dim": lay.head_dim, "kv_lora_rank": lay.kv_lora_rank,
            "sliding_layers": lay.sliding_layers, "bytes_per_token_bf16": per_token, "params": arch.params,
            "max_context": arch.max_context, "hf_id": arch.hf_id, "source": arch.source,
        })
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<16} {'model':<24} {'attn':<4} {'layers':>6} {'KV heads':>8} {'per token (bf16)':>17} {'params':>8}  source")
    for r in rows:
        heads = "latent" if r["attention"] == "MLA" else r["kv_heads"]
        print(
            f"{r['arch']:<16} {r['display']:<24} {r['attention']:<4} {r['layers']:>6} {heads:>8} "
            f"{format_bytes(r['bytes_per_token_bf16']):>17} {r['params'] / 1e9:>7.2f}B  {r['hf_id']}"
        )
    return 0
