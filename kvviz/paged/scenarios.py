"""Built-in paged-cache scenarios, each making one mechanism visible in one click."""

from __future__ import annotations

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.record.examples import long_document

DOCUMENT = (
    "The Harbor Museum opened in 1911 in the old customs house by the river. Its collection holds "
    "ship models, sea charts, brass instruments and the great lens of the North Point lighthouse, "
    "which was taken down in 1962 when the light was automated. The museum is open from Tuesday "
    "to Sunday, and entry is free for children under twelve."
)
QUESTIONS = ("When did the museum open?", "What does the collection hold?", "When is the museum open?", "Who gets in for free?")


@dataclass(frozen=True)
class Scenario:
    key: str
    button: str  # the one-click label (N_-marked: shown with _(), as are title and shows)
    title: str
    shows: str  # what to look at, for the page
    prompts: tuple[str, ...]
    block_size: int
    num_blocks: int
    max_new_tokens: int
    n: int = 1
    sample: bool = False
    chat: bool = True
    policy: str | None = None  # PolicySpec text of an eviction policy
    eviction: str = "token"
    seed: int = 0


SCENARIOS = [
    Scenario(
        "prefix", N_("Prefix sharing"), N_("Questions about one document"),
        N_("Four questions about the same document. The chat template and the document fill the same full "
        "blocks in every request: the first request writes them, the others find them by their chained "
        "hash and share them (outlined, ×4). Each request only adds the blocks of its own question."),
        tuple(f"{DOCUMENT}\n\nQuestion: {q}" for q in QUESTIONS), block_size=16, num_blocks=24, max_new_tokens=12,
    ),
    Scenario(
        "sampling", N_("Parallel sampling"), N_("Parallel sampling, n = 4"),
        N_("One prompt, four sampled answers. The four samples share every prompt block; the prompt ends inside "
        "a block, so the first three samples to write there copy it first (copy-on-write) and the last one "
        "writes in place."),
        ("Invent a name for a lighthouse museum.",), block_size=8, num_blocks=48, max_new_tokens=12, n=4, sample=True,
    ),
    Scenario(
        "preemption", N_("Preemption"), N_("More requests than the pool holds"),
        N_("Six requests share a pool of 16 blocks of 4 slots. Requests wait until blocks are free; when a "
        "running request needs a block and none is left, the most recently admitted one is preempted: its "
        "blocks go back and it is recomputed later from its tokens (often finding its own prompt blocks still "
        "cached). The outputs are the same as with a pool large enough."),
        ("The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
         "A good breakfast starts with", "The first rule of sailing is", "Lighthouses were built to"),
        block_size=4, num_blocks=16, max_new_tokens=16, chat=False,
    ),
    Scenario(
        "holes", N_("H2O: holes"), N_("H2O on a paged cache"),
        N_("H2O keeps half of each prompt per layer and KV head, and evicts one entry per step. Each layer and "
        "head evicts different tokens, so evicted entries leave holes (pale and white slots) in blocks that "
        "stay reserved: a block goes back only when no layer or head reads any of its slots. Held tokens drop to "
        "the budget after the prompt and stay there; the reserved slots keep growing with the output."),
        (DOCUMENT, "Lighthouses were built on rocks and headlands to guide ships home at night. The keepers"),
        block_size=8, num_blocks=32, max_new_tokens=8, chat=False, policy="h2o:ratio=0.5",
    ),
    Scenario(
        "blocks", N_("H2O: block-aware"), N_("H2O, block-aware"),
        N_("The same requests and budget, but H2O's choices are pooled per block: a block's score is the share of "
        "its entries (over layers, heads and slots) that H2O would keep, and the lowest-scoring whole blocks go "
        "back to the pool. Reserved slots now follow the budget; the model reads coarser context."),
        (DOCUMENT, "Lighthouses were built on rocks and headlands to guide ships home at night. The keepers"),
        block_size=8, num_blocks=32, max_new_tokens=8, chat=False, policy="h2o:ratio=0.5", eviction="block",
    ),
    Scenario(
        "mixed", N_("Mixed lengths"), N_("A short question beside a long document"),
        N_("A one-line chat question and a long document with a question, decoded together. Paged, each request takes "
        "only the blocks of its own tokens; run as one static batch, the short question is padded to the document's "
        "length: see what the static batch wastes under Memory, below."),
        ("What is the capital of France?", "\n\n".join(long_document().split("\n\n")[:4]) + "\n\nQuestion: What did the first sea marks burn?"),
        block_size=16, num_blocks=40, max_new_tokens=12,
    ),
]
BY_KEY = {s.key: s for s in SCENARIOS}
