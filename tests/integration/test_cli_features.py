"""CLI options no other test runs: ``bench --live``, ``paged --no-prefix-caching``, ``paged
--eviction block`` and ``sweep --html``, through ``python -m kvviz``'s own ``main`` on the
embedded SmolLM2 (loaded once for the session: ``load_model`` hands the CLI that model), with
their numbers checked by hand or against another output of the same command."""

from __future__ import annotations

import html
import json
import re

import pytest

from kvviz import cli

LAYERS, KV, D = 30, 3, 64
PER_TOKEN = 2 * LAYERS * KV * D * 4  # bytes of one token's keys and values, every layer, float32


@pytest.fixture()
def kvviz(smollm, monkeypatch, capsys):
    """Run ``python -m kvviz ARGS`` in this process on the session's model: (exit code, stdout, stderr)."""
    monkeypatch.setattr("kvviz.model.loading.load_model", lambda *a, **k: smollm)

    def main(*args):
        code = cli.main([*args, "--device", "cpu"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return main


# ------------------------------------------------------------------------------ bench --live


def test_bench_live_times_the_live_run_per_policy(kvviz, tmp_path):
    path = tmp_path / "bench.json"
    code, out, err = kvviz("bench", "--prompt-tokens", "16", "--new-tokens", "2", "--repeats", "1",
                           "--policies", "full,window", "--budget", "8", "--live", "--json", str(path))
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    generate, full, window = rows
    assert generate["config"] == "transformers generate" and generate["live_s"] is None  # no Live run of generate
    assert full["live_s"] > 0 and window["live_s"] > 0
    assert window["kv_bytes"] == 8 * PER_TOKEN
    table = [line for line in out.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[5] == "Live run s"
    for row in (full, window):
        cells = [c.strip() for c in next(line for line in table if line.startswith(f"| {row['config']} |")).strip("|").split("|")]
        assert cells[5] == f"{row['live_s']:.2f}"  # the table shows the JSON's number


# ------------------------------------------------------------------------------ paged


SHARED = ["The capital of France is", "The capital of France is a city"]  # 5 and 7 tokens, one block of 4 in common


def paged(kvviz, *args):
    code, out, err = kvviz("paged", *[a for p in SHARED for a in ("--prompt", p)], "--block-size", "4",
                           "--num-blocks", "24", "--max-new-tokens", "3", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_paged_without_prefix_caching_reuses_no_block(kvviz):
    cached, uncached = paged(kvviz), paged(kvviz, "--no-prefix-caching")
    assert cached["prefix_hit_blocks"] == 1 and [r["prefix_hit_blocks"] for r in cached["requests"]] == [0, 1]
    assert uncached["prefix_hit_blocks"] == 0 and [r["prefix_hit_blocks"] for r in uncached["requests"]] == [0, 0]
    first = [r["block_table"][0] for r in uncached["requests"]]
    assert first[0] != first[1]  # each request holds "The capital of France" in a block of its own
    assert len({r["block_table"][0] for r in cached["requests"]}) == 1
    # the same greedy tokens either way: the shared block holds the same keys and values
    assert [r["generated_token_ids"] for r in cached["requests"]] == [r["generated_token_ids"] for r in uncached["requests"]]


PROMPT = "The old lighthouse keeper walked up the narrow stairs every evening, carrying a lamp and a book of poems."  # 21 tokens


def evicting(kvviz, mode):
    code, out, err = kvviz("paged", "--prompt", PROMPT, "--block-size", "4", "--num-blocks", "32", "--max-new-tokens", "6",
                           "--policy", "h2o", "--budget", "8", "--param", "recent=2", "--eviction", mode, "--json")
    assert code == 0, err
    return json.loads(out)


def test_paged_block_eviction_holds_whole_blocks_within_the_budget(kvviz):
    token, block = evicting(kvviz, "token"), evicting(kvviz, "block")
    assert token["eviction"] == "token" and block["eviction"] == "block"
    (r,) = block["requests"]
    assert r["prompt_tokens"] == 21
    # a budget of 8 entries is ceil(8 / 4) = 2 blocks: after every forward the request holds two
    # blocks, the one being written and the best-voted other, and nothing else is reserved
    live = [n for n in block["reserved_slots"] if n]
    assert live == [8] * 6
    # right after the prompt: a full block (4 tokens) and the block holding token 20 (21 = 5 x 4 + 1)
    assert block["held_tokens"][1] == 4 + 21 % 4
    assert all(h <= 8 for h in block["held_tokens"])
    held = [b for b in r["block_table"] if b is not None]
    assert len(held) == 2 and r["block_table"][-1] is not None  # the newest logical block stays
    # token mode holds exactly the budget in entries, but its holes keep blocks reserved
    assert [h for h in token["held_tokens"] if h] == [8.0] * 6
    assert min(n for n in token["reserved_slots"] if n) > 8


# ------------------------------------------------------------------------------ sweep --html


TEXT = (
    "In the spring of that year the river rose higher than anyone in the valley could remember. The miller moved "
    "his sacks of flour to the upper floor, and the farmers drove their cattle to the hills."
)


def test_sweep_html_report_shows_the_rows_of_the_sweep(kvviz, tmp_path):
    text, report = tmp_path / "text.txt", tmp_path / "sweep.html"
    text.write_text(TEXT)
    code, out, err = kvviz("sweep", "--text-file", str(text), "--context", "24", "--continuation", "4",
                           "--policy", "window", "--budgets", "8,12", "--html", str(report), "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>kvviz sweep: perplexity</title>" in page
    assert not re.search(r"<script[^>]*\ssrc=", page)  # standalone: plotly is inside, nothing is fetched
    assert page.count("Plotly.newPlot") == 3  # perplexity, KL, top-1
    assert "Mean KL(full ‖ policy)" in page
    table = page[page.index("<h2>Table</h2>"):]
    head = [html.unescape(h) for h in re.findall(r"<th>([^<]*)</th>", table)]
    body = [[html.unescape(c) for c in re.findall(r"<td>([^<]*)</td>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]  # body rows (the header row has a style)
    assert len(body) == 2
    for row, cells in zip(rows, body):
        shown = dict(zip(head, cells))
        assert int(shown["budget"]) == row["budget"] and int(shown["kv_bytes"]) == row["kv_bytes"] == row["budget"] * PER_TOKEN
        for key in ("ppl", "kl_full", "top1_agree"):
            assert float(shown[key]) == pytest.approx(row[key], rel=1e-3), key
