"""A sweep's budget for a retriever is its read budget (issue 27): at a point of budget b a
retriever reads b entries per step (h2o keeps b), at a ratio r it reads round(r x prompt tokens),
a composed snapkv+quest keeps what its spec says and reads b; a spec naming read_budget runs once.
By hand arithmetic on the points, a ppl plan and the rows."""

from types import SimpleNamespace

import pytest

from kvviz.sweep.run import PlannedRun, SweepSettings, _row_basics, plan, points


def test_a_budget_is_the_read_budget():
    settings = SweepSettings(policies=("h2o", "quest", "sparq:r=8", "snapkv+quest", "snapkv+quest:budget=64", "quest:read_budget=8"), budgets=(16, 32))
    got = [spec for spec, _ in points(settings)]
    by = {}
    for s in got:
        reader = s.pipeline().reader or s.pipeline().selector
        by.setdefault(s.to_text().partition(":")[0] + ("/64" if s.budget == 64 else ""), []).append(
            (getattr(reader, "read_budget", None), s.budget, s.ratio))
    assert by["h2o"] == [(None, 16, None), (None, 32, None)]
    assert by["quest"] == [(16, None, None), (32, None, None), (8, None, None)]  # the last: quest:read_budget=8, once
    assert by["sparq"] == [(16, None, None), (32, None, None)]
    assert by["snapkv+quest"] == [(16, None, 0.25), (32, None, 0.25)]  # snapkv keeps its default 25%, quest reads b
    assert by["snapkv+quest/64"] == [(16, 64, None), (32, 64, None)]
    assert {s.pipeline().selector.r for s in got if s.name == "sparq"} == {8}  # other parameters kept


def test_a_ratio_reads_that_share_of_the_prompt():
    settings = SweepSettings(policies=("h2o", "simhash"), ratios=(0.1, 0.25))
    at_150 = [s for s, _ in points(settings, prompt_len=150)]
    assert [(s.name, s.ratio, s.pipeline().selector.read_budget if s.name == "simhash" else None) for s in at_150] == [
        ("h2o", 0.1, None), ("h2o", 0.25, None), ("simhash", None, 15), ("simhash", None, 38)]  # 37.5 -> 38 (half to even)
    unresolved = [s for s, _ in points(settings) if s.name == "simhash"]
    assert len(unresolved) == 1 and unresolved[0].pipeline().selector.read_budget == 64  # as written, for checks


class Tok:
    def __call__(self, text):
        return SimpleNamespace(input_ids=list(range(len(text.split()))))


def test_a_ppl_plan_and_its_rows():
    settings = SweepSettings(policies=("quest:page_size=4", "h2o"), ratios=(0.25,), text="w " * 100, context=42, continuation=5)
    runs = plan(Tok(), settings).runs
    quest = next(r for r in runs if r.spec is not None and r.spec.name == "quest")
    assert quest.spec.pipeline().selector.read_budget == 10  # 0.25 x 42 = 10.5 -> 10
    assert quest.series == "quest:page_size=4"
    trace = SimpleNamespace(budget=None, kv_bytes=[1, 2], kv_bytes_full=[2, 2], prompt_len=42)
    row = _row_basics(PlannedRun(quest.spec, quest.prompt_ids, 5, quest.series), trace, 1.0)
    assert (row["budget"], row["ratio"]) == (10, None)
    h2o = next(r for r in runs if r.spec is not None and r.spec.name == "h2o")
    row = _row_basics(h2o, SimpleNamespace(budget=10, kv_bytes=[1], kv_bytes_full=[2], prompt_len=42), 1.0)
    assert (row["budget"], row["ratio"]) == (10, 0.25)


@pytest.mark.parametrize("text", ["quest:read_budget=8", "snapkv+quest:quest.read_budget=8"])
def test_a_named_read_budget_runs_once(text):
    assert len(points(SweepSettings(policies=(text,), budgets=(16, 32)))) == 1
