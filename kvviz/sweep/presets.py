"""Built-in sweeps that each tell one story in one click, sized for the device: about a minute or
two on a laptop-class CPU, larger on a GPU. The Tradeoffs page offers them; the README's known
results are their GPU sizes run through the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kvviz.i18n import N_
from kvviz.sweep.run import SweepSettings


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    story: str  # what to look for (our own text, markdown); title and story N_-marked, shown with _()
    cpu: SweepSettings
    gpu: dict = field(default_factory=dict)  # fields that grow on a GPU

    def settings(self, device: str) -> SweepSettings:
        """The preset's settings for ``device`` ("cpu", "cuda", "mps", ...); the text is the
        caller's (``text`` of the ppl task)."""
        return self.cpu if device == "cpu" else dataclasses.replace(self.cpu, **self.gpu)


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in [
        Preset(
            "sinks",
            N_("Sinks matter"),
            N_("A plain **window** keeps the most recent tokens and drops the first ones; **streaming_llm** keeps "
            "the 4 first tokens (attention sinks) plus a window of the same total size. At the same memory the "
            "window's perplexity climbs to several times the full cache's, StreamingLLM's stays far closer to it "
            "(Xiao et al., 2023)."),
            SweepSettings(policies=("window", "streaming_llm:n_sink=4"), ratios=(0.125, 0.25, 0.5), context=128, continuation=32),
            {"context": 1024, "continuation": 256, "ratios": (0.05, 0.1, 0.25, 0.5)},
        ),
        Preset(
            "snapkv",
            N_("SnapKV needs a short pooled window on a small model"),
            N_("SnapKV lets the prompt's last `window` queries vote for the entries to keep, pools the votes along "
            "the sequence (`kernel`), and always keeps the window itself. At a 10% budget on this 135M model a "
            "**window of 8 with pooling (kernel 7)** keeps the pass key at every depth. A **window of 32** (the "
            "default) protects 32 of the budget's slots (58 at 500 filler tokens) for the question and the chat template, "
            "and the key is lost; "
            "**no pooling (kernel 1)** keeps isolated tokens without their neighbours, and the answer holds at "
            "most the key's first digit."),
            SweepSettings(
                policies=("full", "snapkv:window=8,kernel=7", "snapkv:window=32", "snapkv:window=8,kernel=1"),
                ratios=(0.1,), task="passkey", depths=(0.1, 0.5, 0.9), lengths=(500,),
            ),
            {"lengths": (1800,), "depths": (0.1, 0.3, 0.5, 0.7, 0.9)},
        ),
        Preset(
            "bytes",
            N_("Eviction vs quantization at the same bytes"),
            N_("Two ways to hold fewer bytes: **h2o** evicts tokens (it keeps a fraction of them at full "
            "precision), **kivi** and **quant** keep every token at 2 or 4 bits. Compare them where their "
            "bytes meet: at the same memory, which loses less? (Quantization's bytes count its scales and zero "
            "points in the model's dtype, so a 4-bit store holds more than a quarter.) Measured in float32 on a CPU: "
            "near 20% of the bytes 4-bit quant stays closest to the full cache, and near 10% 2-bit quant falls "
            "apart while H2O still holds."),
            SweepSettings(policies=("h2o", "kivi:bits=2", "quant:bits=4", "quant:bits=2"), ratios=(0.125, 0.25, 0.5), context=128, continuation=32),
            {"context": 1024, "continuation": 256, "ratios": (0.1, 0.2, 0.3, 0.5)},
        ),
        Preset(
            "retrieval",
            N_("Retrieval vs eviction at the same read budget"),
            N_("Eviction (**snapkv**, **h2o**, **streaming_llm**) holds 32 entries per layer and KV head and the "
            "attention reads those; retrieval (**quest**, **sparq**, **simhash**) holds every entry and each "
            "decode step reads 32 of them, chosen for that step's query. Every row reads about the same K/V per "
            "step, but retrieval's resident memory is the whole cache: its KV bytes column is the full cache's, "
            "eviction's a few percent of it. Retrieval can find what an eviction dropped at the prefill, when a "
            "later query asks for it. Measured on a CPU (500 filler tokens, float32): every eviction loses the "
            "pass key at all three depths, **sparq** keeps it at all three (with or without its mean-value correction), "
            "**quest** (pages of 16, two pages read) and **simhash** lose it."),
            SweepSettings(
                policies=("full", "snapkv", "h2o", "streaming_llm", "quest:read_budget=32",
                          "sparq:read_budget=32", "simhash:read_budget=32"),
                budgets=(32,), task="passkey", depths=(0.1, 0.5, 0.9), lengths=(500,),
            ),
            {"lengths": (1800,), "depths": (0.1, 0.3, 0.5, 0.7, 0.9)},
        ),
        Preset(
            "retrieval_ppl",
            N_("Retrieval vs eviction: perplexity at the same read budget"),
            N_("Eviction (**snapkv**, **h2o**, **streaming_llm**) holds a budget of entries per layer and KV head (16 and 32 "
            "on a CPU); retrieval (**quest** with pages of 4, **sparq**, **simhash**) holds every entry and each decode "
            "step reads as many, chosen for that step's query: the budget is what the attention reads, for both. "
            "Perplexity, KL to the full cache and top-1 agreement of the continuation (switch *Quality*). Measured on a CPU (float32, 32 tokens after 128): reading 32, **sparq** stays closest to the full cache (KL 0.017, "
            "top-1 97%), **quest** (KL 0.089) about as close as **h2o** holding 32 (KL 0.084); **simhash**'s random "
            "hyperplanes choose worse (KL 0.65), and **snapkv**, which compresses the prompt once for its last "
            "queries, is far off (KL 1.66). Retrieval's memory held stays the full cache's; eviction's is 10-40% of it."),
            SweepSettings(
                policies=("full", "snapkv", "h2o", "streaming_llm", "quest:page_size=4", "sparq", "simhash"),
                budgets=(16, 32), context=128, continuation=32,
            ),
            {"context": 1024, "continuation": 256, "budgets": (32, 64, 128)},
        ),
    ]
}
