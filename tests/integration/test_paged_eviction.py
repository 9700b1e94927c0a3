"""A token-eviction policy on the paged cache (SmolLM2): the same output as the contiguous
PolicyCache of kvviz's engine, a block held exactly while some layer or head keeps an entry in
it (read from the engine's Trace), and the reserved slots that eviction does not give back."""

from kvviz import policies
from kvviz.runtime import engine
from kvviz.paged.engine import PagedEngine
from kvviz.paged.scheduler import Request

PROMPTS = [
    "The museum opened in 1911 and holds paintings, maps and old clocks from the city. It is",
    "Water boils at a temperature of 100 degrees at sea level, but on a mountain",
]
BS, STEPS = 4, 4


def test_token_eviction_on_the_pool_equals_the_contiguous_policy_cache(smollm):
    tok, model = smollm.tokenizer, smollm.model
    s = PagedEngine(model, tok, num_blocks=32, block_size=BS, pipeline=policies.build("h2o", {}, ratio=0.5))
    for i, p in enumerate(PROMPTS):
        s.submit(Request(f"r{i}", tok(p).input_ids, STEPS))
    s.run()
    budgets = []
    for r in s.requests:
        trace = engine.run(model, tok, r.prompt_ids, "h2o", ratio=0.5, max_new_tokens=STEPS)
        assert r.generated == trace.generated_ids, r.rid
        budgets.append(trace.budget)
        for step in range(STEPS - 1):  # frame k + 1 is the pool after the engine's step k
            table = s.frames[step + 1]["pool"]["tables"][r.rid]
            kept = {int(p) for l in range(trace.n_layers) for h in range(trace.n_kv_heads) for p in trace.kept_positions(step, l, h)}
            assert {i for i, b in enumerate(table) if b is not None} == {p // BS for p in kept}, (r.rid, step)
    # after the prompt each (layer, head) holds its budget: the held token equivalents are the
    # budgets, while the blocks stay reserved for every prompt token
    after_prompt = s.frames[1]
    assert abs(after_prompt["held_tokens"] - sum(budgets)) < 1e-6
    prompt_slots = sum(-(-len(tok(p).input_ids) // BS) * BS for p in PROMPTS)
    assert after_prompt["reserved_slots"] == prompt_slots > 1.8 * after_prompt["held_tokens"]
    assert s.manager.used == 0
