"""``python -m kvviz sweep``: policies x ratios (or budgets) on one text; a table, CSV or JSON.

    python -m kvviz sweep --policy full --policy window --policy streaming_llm:n_sink=4 \\
        --ratios 0.1,0.25,0.5 --example long --context 1024 --continuation 256 --csv sinks.csv
    python -m kvviz sweep --task passkey --policy full --policy snapkv:window=8,kernel=7 \\
        --policy snapkv:window=32 --ratios 0.1 --depths 0.1,0.5,0.9 --lengths 1800
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvviz.commands.run import add_model_args, load

HELP = "sweep policies over ratios or budgets: perplexity, KL, top-1 and bytes, or a passkey grid"


def configure(p) -> None:
    p.error = _one_line_error  # bad flags too: one line and exit status 2, no usage block
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="name[:key=value,...], e.g. snapkv:window=8,kernel=7 or h2o+kivi:kivi.bits=2 (repeatable); full needs no ratio")
    p.add_argument("--ratios", help="kept fractions of the prompt, comma separated: 0.1,0.25,0.5")
    p.add_argument("--budgets", help="kept entries per layer and KV head, comma separated: 64,128")
    p.add_argument("--task", choices=["ppl", "passkey"], default="ppl",
                   help="ppl: teacher-forced perplexity, KL and top-1 against the full cache; passkey: is the key found")
    p.add_argument("--text-file", type=Path, help="ppl: the text to read (no chat template)")
    p.add_argument("--example", help="ppl: a built-in text: " + ", ".join(EXAMPLE_ALIASES) + " (or its full name)")
    p.add_argument("--context", type=int, default=256, help="ppl: prompt tokens (the first N of the text)")
    p.add_argument("--continuation", type=int, default=64, help="ppl: forced tokens after the prompt")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="passkey: needle depths, 0 = start of the filler, 1 = its end")
    p.add_argument("--lengths", default="500", help="passkey: filler lengths in tokens")
    p.add_argument("--new-tokens", type=int, default=12, help="passkey: greedy tokens of the answer")
    p.add_argument("--seed", type=int, default=0, help="passkey: seed of the key")
    p.add_argument("--question", choices=["with", "after", "both"], default="with",
                   help="passkey: compress with the question in the prompt, before it (query-agnostic: the question is appended after), or both")
    add_model_args(p)
    p.add_argument("--workers", type=int, default=1,
                   help="spread the runs over N local worker processes, each loading the model once (default 1: in this process)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the points as Ray actors (one per GPU, or --workers of them) on a local Ray cluster or the one at ADDRESS (pip install 'kvviz[ray]')")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV (- for stdout)")
    p.add_argument("--html", metavar="FILE", help="write a standalone HTML report (charts, table, settings)")
    p.add_argument("--json", action="store_true", help="print one JSON object: settings, reference and rows")


EXAMPLE_ALIASES = {"long": "Long document: history of lighthouses", "code": "Code: moving average", "chat": "Chat: capital of France"}


def _one_line_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def settings_from(args):
    from kvviz.record import examples as data
    from kvviz.sweep.run import SweepSettings, parse_numbers

    text = ""
    if args.task == "ppl":
        if (args.text_file is None) == (args.example is None):
            raise ValueError("the ppl task reads one text: give --text-file FILE or --example NAME.")
        if args.text_file is not None:
            text = args.text_file.read_text(encoding="utf-8")
        else:
            name = EXAMPLE_ALIASES.get(args.example, args.example)
            if name not in data.EXAMPLES or name == data.PASSKEY_EXAMPLE:
                raise ValueError(f"unknown example '{args.example}': use {', '.join(EXAMPLE_ALIASES)}.")
            text = data.EXAMPLES[name]
    depths, lengths = parse_numbers(args.depths, float, "--depths"), parse_numbers(args.lengths, int, "--lengths")
    if args.task == "passkey":
        check_passkey(depths, lengths, args.new_tokens)
    return SweepSettings(
        policies=tuple(args.policy), ratios=parse_numbers(args.ratios, float, "--ratios"),
        budgets=parse_numbers(args.budgets, int, "--budgets"), task=args.task, text=text,
        context=args.context, continuation=args.continuation,
        depths=depths, lengths=lengths,
        new_tokens=args.new_tokens, passkey_seed=args.seed, question=args.question,
    )


MAX_PASSKEY_FILLER = 40_000  # tokens: about 180,000 characters, the most within kvviz's 200,000-character prompt


def check_passkey(depths: tuple, lengths: tuple, new_tokens: int) -> None:
    """The passkey grid's numbers, refused before the model loads."""
    bad = [n for n in lengths if not 1 <= n <= MAX_PASSKEY_FILLER]
    if bad:
        raise ValueError(f"--lengths: filler lengths are from 1 to {MAX_PASSKEY_FILLER:,} tokens, not {bad[0]}.")
    bad = [d for d in depths if not 0 <= d <= 1]
    if bad:
        raise ValueError(f"--depths: depths are from 0 (start of the filler) to 1 (its end), not {bad[0]:g}.")
    if new_tokens < 1:
        raise ValueError(f"--new-tokens must be at least 1, not {new_tokens}.")


def main(args) -> int:
    from kvviz.sweep import run as sweep

    settings = settings_from(args)

    def progress(p) -> None:
        if p.label:
            print(f"[{p.done + 1}/{p.total}] {p.label}  ({p.elapsed_s:.0f} s so far)", file=sys.stderr, flush=True)
        else:
            print(f"done: {p.done} runs in {p.elapsed_s:.1f} s", file=sys.stderr, flush=True)

    sweep.expand(settings)  # bad specs fail before the model loads
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}.")
    if args.workers > 1 or args.ray is not None:
        if args.device_map:
            raise ValueError("--device-map splits one model over this host's GPUs: use it without --workers or --ray.")
        from kvviz.sweep import spread

        result = spread.run(
            settings, loader=spread.Loader(args.model, args.device, args.dtype), workers=args.workers if args.ray is None or args.workers > 1 else None,
            use_ray=args.ray is not None, ray_address=args.ray or None, on_progress=progress,
        )
        return report(args, settings, result)
    loaded = load(args)
    result = sweep.run(
        loaded.model, loaded.tokenizer, settings, on_progress=progress, model_name=loaded.summary.name,
        max_context=loaded.summary.max_context,
    )
    return report(args, settings, result)


def report(args, settings, result) -> int:
    """The result as --csv, --html, --json or a table."""
    from kvviz.sweep import run as sweep

    csv_text = sweep.rows_csv(result.rows, settings.task)
    if args.csv == "-":
        sys.stdout.write(csv_text)
    elif args.csv:
        Path(args.csv).write_text(csv_text)
    if args.html:
        from kvviz.charts.sweep import sweep_report

        Path(args.html).write_text(sweep_report(result.to_dict()).to_html(), encoding="utf-8")
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    elif args.csv != "-":
        print(table(result))
    return 0


def table(result) -> str:
    """The rows as a text table for a terminal."""
    from kvviz.record.metrics import format_bytes

    lines = [f"{result.model} on {result.device} ({result.dtype}), {result.seconds:.1f} s"]
    if result.settings.task == "ppl":
        ref = result.reference or {}
        lines.append(
            f"perplexity of {result.settings.continuation} forced tokens after {result.settings.context} prompt tokens;"
            f" full cache: ppl {ref.get('ppl', float('nan')):.3f}, {format_bytes(ref.get('kv_bytes_full', 0))}"
        )
        lines.append(f"{'policy':34s} {'budget':>6s} {'KV held':>18s} {'ppl':>9s} {'KL':>7s} {'top-1':>6s} {'s':>6s}")
        for r in result.rows:
            held = f"{format_bytes(r.kv_bytes)} {r.kv_pct:4.0f}%"
            lines.append(f"{r.series[:34]:34s} {r.budget or '-':>6} {held:>18s} {r.ppl:9.3f} {r.kl_full:7.3f} {r.top1_agree:6.0%} {r.seconds:6.1f}")
    else:
        lines.append("passkey found (yes/no) by filler length and depth")
        for r in result.rows:
            mark = "yes" if r.found else "no "
            lines.append(f"{mark}  {r.series[:34]:34s} budget {r.budget or '-':>5} length {r.length:>5} depth {r.depth:4.2f}  {r.answer[:40]!r}")
    if result.stopped:
        lines.append("(stopped: the rows above finished before the stop)")
    return "\n".join(lines)
