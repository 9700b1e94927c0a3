"""Benchmark of the Attention page's computations on a real model: the overview (every layer and
head: pooled thumbnails and head profiles) and one head's detail view, for an N-token prompt.

    python benchmarks/attention_bench.py                      # CPU: 1,024 tokens; GPU: 8,192
    python benchmarks/attention_bench.py --tokens 8192 --device cuda --out bench.json

Reported, each the median of ``--repeats`` runs after one warm-up:
  forward      a plain forward pass of the base model (no capture), for scale
  overview     kvviz.attention.maps.overview (keeps each layer's q/k within the page's 512 MiB)
  detail       one head's pooled view plus the selected token's row, from the kept q/k
  detail_cold  the same with its own forward pass (capture_layers), when q/k were not kept
  total        overview + detail: what the page computes for a new prompt
the process CPU time (all threads; on a shared machine it moves less than wall time), and the
extra peak memory of each over what the loaded model holds: on a GPU
``torch.cuda.max_memory_allocated`` minus the memory allocated before; on the CPU the peak
resident set size (sampled every 2 ms) minus the size before.
Targets: 8k tokens on a GPU within 2 s and 1 GiB; 1k tokens on the CPU within 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvviz.attention import maps as attention_maps  # noqa: E402
from kvviz.model import capture
from kvviz.runtime.bench import prompt_ids  # noqa: E402
from kvviz.model.loading import load_model  # noqa: E402

KEEP_QK_BYTES = 512 << 20  # as the page (kvviz/ui/attention_cache.py)
MAX_CELLS = 128


class PeakMemory:
    """Extra peak memory of a block: CUDA allocator peak, or sampled resident set size."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = self.peak = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
            self.extra = self.peak - self.base
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, device, repeats: int) -> dict:
    fn()  # warm-up
    times, cpu_times, extras = [], [], []
    result = None
    for _ in range(repeats):
        result = None
        with PeakMemory(device) as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        extras.append(mem.extra)
    return {
        "seconds": statistics.median(times), "seconds_min": min(times), "cpu_seconds": statistics.median(cpu_times),
        "extra_bytes": max(extras), "result": result,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=None, help="prompt length (default: 8192 on a GPU, 1024 on the CPU)")
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--layer", type=int, default=None, help="layer of the detail view (default: the middle one)")
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--pool", default="max", choices=attention_maps.POOLS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    model, s = loaded.model, loaded.summary
    device = next(model.parameters()).device
    n = args.tokens or (8192 if device.type == "cuda" else 1024)
    n = min(n, s.max_context)
    ids = prompt_ids(loaded.tokenizer, n)
    layer = s.n_layers // 2 if args.layer is None else args.layer
    head, token = args.head, n - 1
    base = getattr(model, "model", model)
    input_ids = torch.tensor([ids], device=device)

    def forward():
        with torch.inference_mode():
            base(input_ids=input_ids, use_cache=False)

    def overview():
        return attention_maps.overview(model, ids, pool=args.pool, keep_qk_bytes=KEEP_QK_BYTES)

    def detail(qk):
        view = attention_maps.attention_view(qk, head, max_cells=MAX_CELLS, pool=args.pool)
        row = attention_maps.attention_rows(qk, head, [token])
        return view, row

    def detail_cold():
        qk = capture.capture_layers(model, ids, [layer])[layer]
        return detail(qk)

    rows = {}
    rows["forward"] = measure(forward, device, args.repeats)
    rows["overview"] = measure(overview, device, args.repeats)
    ov = rows["overview"]["result"]
    kept = layer in ov.qk
    if kept:
        rows["detail"] = measure(lambda ov=ov: detail(ov.qk[layer]), device, args.repeats)
    del ov
    rows["overview"]["result"] = None
    rows["detail_cold"] = measure(detail_cold, device, args.repeats)
    detail_row = rows["detail"] if kept else rows["detail_cold"]
    total_s = rows["overview"]["seconds"] + detail_row["seconds"]
    total_extra = max(rows["overview"]["extra_bytes"], detail_row["extra_bytes"])

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    target_s, target_bytes = (2.0, 1 << 30) if device.type == "cuda" else (10.0, None)
    print(f"Attention page benchmark: {s.name}, {n} tokens, {s.n_layers} layers x {s.n_q_heads} heads, "
          f"{device} ({device_name}), {s.dtype}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'step':<13}{'median s':>10}{'min s':>9}{'process CPU s':>15}{'extra peak MiB':>16}")
    for name, r in rows.items():
        print(f"{name:<13}{r['seconds']:>10.3f}{r['seconds_min']:>9.3f}{r['cpu_seconds']:>15.2f}{r['extra_bytes'] / 2**20:>16.1f}")
    print(f"{'total':<13}{total_s:>10.3f}{'':>9}{'':>15}{total_extra / 2**20:>16.1f}   (overview + {'detail' if kept else 'detail_cold'})")
    if device.type == "cpu":
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: on a shared machine, compare process CPU s with wall s")
    verdict = total_s <= target_s and (target_bytes is None or total_extra <= target_bytes)
    print(f"target: within {target_s:g} s" + (f" and {target_bytes / 2**30:g} GiB" if target_bytes else "") + f": {'met' if verdict else 'NOT met'}")

    if args.out:
        out = {
            "model": s.name, "tokens": n, "device": str(device), "device_name": device_name, "dtype": s.dtype,
            "torch": torch.__version__, "cpus": os.cpu_count(), "layer": layer, "head": head, "pool": args.pool,
            "repeats": args.repeats, "qk_kept_by_overview": kept,
            "steps": {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in rows.items()},
            "total_seconds": total_s, "total_extra_bytes": total_extra,
            "target_seconds": target_s, "target_extra_bytes": target_bytes, "target_met": verdict,
        }
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
