"""The Live page's run details say how the policy's steps decoded: from a CUDA graph or eagerly,
and whether the model's blocks ran fused (kvviz.runtime.fused), in the session's language; and a
real CPU run says eager and unfused."""

from __future__ import annotations

from kvviz.i18n import speaking
from kvviz.ui.live_result import decoding_text
from tests.app.test_live_policy_page import page, run_policy  # noqa: F401  (the page fixture)


def test_each_way_a_run_decodes_reads_as_a_sentence():
    assert decoding_text({"decode_path": "graph", "fused": "all"}) == "replayed from a CUDA graph · the model's blocks fused (torch.compile)"
    assert decoding_text({"decode_path": "eager", "fused": "building"}) == (
        "eager, step by step · the model's blocks not fused yet (being built in the background for the next run)")
    assert decoding_text({"decode_path": "eager", "fused": "off (no triton)"}) == "eager, step by step · the model's blocks not fused"
    assert decoding_text({}) == "eager, step by step · the model's blocks not fused"  # a run saved before the row existed
    assert decoding_text({"decode_path": "graph", "fused": "all", "fused_steps": "all"}) == (
        "replayed from a CUDA graph · the model's blocks fused (torch.compile) · the policy's steps fused")
    assert decoding_text({"decode_path": "graph", "fused": "all", "fused_steps": "building"}).endswith(
        "the policy's steps not fused yet (being built in the background for the next run at this length)")
    assert decoding_text({"decode_path": "graph", "fused": "all", "fused_steps": "failed: Unsupported: a generator"}).endswith(
        "the policy's steps not fused (torch.compile could not build them)")
    for quiet in ("off", "none"):  # not asked for, or no step whose shapes repeat: nothing to say
        assert decoding_text({"decode_path": "eager", "fused": "off", "fused_steps": quiet}) == "eager, step by step · the model's blocks not fused"
    with speaking("zh"):
        assert decoding_text({"decode_path": "graph", "fused": "all"}) == "从 CUDA 图重放 · 模型的模块已融合（torch.compile）"
        assert decoding_text({"decode_path": "graph", "fused": "all", "fused_steps": "all"}).endswith("策略的步骤已融合")


def test_a_cpu_run_shows_eager_and_unfused_in_its_details(page):  # noqa: F811
    at = run_policy(page, "h2o", compare=False)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    rows = dict(zip(*[list(col) for col in at.table[0].value.to_dict("list").values()]))
    assert rows["Decoding"] == "eager, step by step · the model's blocks not fused"
