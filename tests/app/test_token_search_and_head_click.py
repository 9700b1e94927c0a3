"""AppTest of two interactions no other test makes: the Live page's token search rings the tokens
that spell the text searched for, and a click on a head square of the Attention page's overview
opens that head below (its heatmap is that head's attention, recomputed here in float64 from the
model's own projections)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import torch
from streamlit.testing.v1 import AppTest
from tests.references import grouped_softmax, projections

from kvviz.record import examples as data
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine

PAGES = Path(__file__).resolve().parents[2] / "pages"
TIMEOUT = 600


def ringed(at: AppTest) -> dict[int, str]:
    """Position -> shown text of every ringed token in the Live page's token view."""
    body = next(h.proto.body for h in at.html if '<div class="kvviz-tokens">' in h.proto.body)
    body = body.split('<div class="kvviz-tokens">', 1)[1]
    spans = re.findall(r'<span class="tok ([^"]*)" data-pos="(\d+)"[^>]*>([^<]*)</span>', body)
    return {int(pos): text for classes, pos, text in spans if "mark" in classes.split()}


def spelled_by(tokens: list[str], text: str) -> set[int]:
    """Positions of the tokens that cover an occurrence of ``text`` in the joined tokens."""
    joined, starts, at = "".join(tokens), [], 0
    for t in tokens:
        starts.append(at)
        at += len(t)
    out = set()
    for m in re.finditer(re.escape(text), joined):
        out |= {i for i, s in enumerate(starts) if s < m.end() and s + len(tokens[i]) > m.start()}
    return out


def test_live_search_rings_the_tokens_that_spell_it(smollm):
    at = AppTest.from_file(str(PAGES / "2_Live_Policy.py"), default_timeout=TIMEOUT).run()
    at.slider(key="_live.new_tokens").set_value(3)
    at.checkbox(key="_live.compare").set_value(False)
    at.button(key="live.run").click().run()
    assert not at.exception, at.exception
    tokens = at.session_state["live.result"].trace.tokens
    assert ringed(at) == {}  # nothing searched (and no pass key in this example)

    at.text_input(key="_live.search").set_value("SmolLM").run()  # the system prompt's " Sm", "ol", "LM"
    found = ringed(at)
    assert set(found) == spelled_by(tokens, "SmolLM") and len(found) == 3
    assert "".join(found[p] for p in sorted(found)).strip() == "SmolLM"

    at.text_input(key="_live.search").set_value("capital of France").run()
    found = ringed(at)
    assert set(found) == spelled_by(tokens, "capital of France") and len(found) == 3

    at.text_input(key="_live.search").set_value("").run()
    assert ringed(at) == {}
    assert not at.exception, at.exception


def decoded(z: dict | list) -> np.ndarray:
    """A plotly array as the page sends it (plotly's typed-array form, or a plain list)."""
    if isinstance(z, list):
        return np.array(z, dtype=float)
    shape = [int(s) for s in str(z["shape"]).split(",")]
    return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)


def test_clicking_a_head_square_opens_that_head(smollm):
    at = AppTest.from_file(str(PAGES / "1_Attention.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert (at.number_input(key="attn.layer").value, at.number_input(key="attn.head").value) == (15, 0)
    # a click on the overview's square of layer 4, query head 7 (what plotly sends: its customdata)
    at.session_state["attn.overview_chart"] = {"selection": {"points": [{"customdata": [4, 7]}]}}
    at.run()
    assert not at.exception, at.exception
    assert (at.number_input(key="attn.layer").value, at.number_input(key="attn.head").value) == (4, 7)
    detail = next(f for f in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
                  if "layer 4 · head 7 (KV head 2)" in str((f["layout"].get("title") or {}).get("text")))
    shown = decoded(next(t for t in detail["data"] if t["name"] == "attention")["z"])  # log10 of attention

    # the sequence the page shows: the example with the chat template, then 8 greedy tokens
    ids = encode_prompt(smollm.tokenizer, data.EXAMPLES[data.CHAT_EXAMPLE], chat=True)
    seq = ids + engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=8).generated_ids
    n = len(seq)
    assert shown.shape == (n, n)
    queries, keys = projections(smollm.model, seq)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    heads = grouped_softmax(queries[4], keys[4], causal).reshape(-1, n, n).numpy()  # (9, n, n)
    visible = causal.numpy() & (heads[7] > 1e-4)  # above the colour scale's floor
    np.testing.assert_allclose(shown[visible], np.log10(heads[7][visible]), atol=1e-4)
    assert np.abs(shown[visible] - np.log10(heads[6][visible])).max() > 0.5  # not its neighbour's
