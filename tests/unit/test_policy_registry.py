"""The policy registry: every policy describes itself, and bad specs fail with a clear message."""

import argparse
import json

import pytest

from kvviz.policies import BudgetSelector, PolicyError, build, registry

FAMILIES = {"baseline", "eviction", "sparse", "merging", "quantization", "low-rank", "head sharing", "channel pruning"}
EXPECTED = {
    "full", "window", "streaming_llm", "h2o", "tova", "snapkv", "pyramidkv", "knorm", "lru", "lfu", "random",
    "sparse_pattern", "merge", "quant", "kivi", "lowrank", "head_share",
}
EXPECTED |= {"expected_attention", "chunkkv", "adakv"}  # kvpress presses, part B
EXPECTED |= {"keydiff", "observed_attention", "lagkv"}  # kvpress presses, part A
EXPECTED |= {"think"}  # kvpress ThinKPress: key channels, a store
EXPECTED |= {"minicache"}  # MiniCache: cross-layer merging, a store
EXPECTED |= {"turboquant"}  # TurboQuant: rotation + codebook, a store
EXPECTED |= {"criticalkv", "duo_attention", "kvzip"}  # kvpress presses, part C
FAMILIES |= {"cross-layer merging"}
EXPECTED |= {"quest", "sparq", "simhash"}  # retrieval: every entry kept, each step reads a chosen set
FAMILIES |= {"retrieval"}


def test_every_policy_is_registered():
    assert set(registry()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_policy_describes_itself(name):
    cls = registry()[name]
    d = cls.describe()
    assert d["family"] in FAMILIES
    assert len(d["summary"]) > 120 and d["paper"]
    for p in d["params"]:
        assert p["help"], (name, p["name"])
        assert p["type"] in ("int", "float", "bool", "str")
    assert cls.from_params({}).values() == {p["name"]: p["default"] for p in d["params"]}


def test_families():
    fam = {n: c.family for n, c in registry().items()}
    assert fam["random"] == "baseline" and fam["sparse_pattern"] == "sparse" and fam["merge"] == "merging"
    assert fam["quant"] == fam["kivi"] == "quantization"
    assert fam["lowrank"] == "low-rank" and fam["head_share"] == "head sharing"


def test_build_composes_and_routes_params():
    p = build("snapkv+quant", {"bits": 2, "snapkv.window": 8}, budget=16)
    assert p.selector.window == 8 and p.selector.budget == 16 and p.storage.bits == 2
    p = build("h2o+kivi", {"kivi": {"residual": 16}}, ratio=0.5)
    assert p.storage.residual == 16 and p.selector.ratio == 0.5


@pytest.mark.parametrize(
    "spec, params, budget, message",
    [
        ("nope", {}, None, "Unknown policy 'nope'"),
        ("h2o", {"bogus": 1}, None, "Unknown parameter 'bogus' for 'h2o'"),
        ("h2o", {"h2o.bogus": 1}, None, "Policy 'h2o' has no parameter 'bogus'"),
        ("quant", {"bitz": 4}, None, "Unknown parameter 'bitz'"),
        ("quant", {"bits": 3}, None, "bits must be one of 8, 4, 2, not 3"),
        ("kivi", {"bits": "four"}, None, "bits must be a int"),
        ("h2o", {}, 0, "budget must be at least 1"),
        ("streaming_llm", {}, -4, "budget must be at least 1"),
        ("quant", {}, 16, "takes no budget"),
        ("quant+kivi", {}, None, "at most one selector and one store"),
        ("lru", {"threshold": 2}, None, "threshold must be at most 1"),
    ],
)
def test_build_errors(spec, params, budget, message):
    with pytest.raises(PolicyError, match=message):
        build(spec, params, budget=budget)


@pytest.mark.parametrize(
    "spec, params, budget, message",
    [
        ("knorm", {}, 41, "larger than the prompt"),
        ("streaming_llm", {"n_sink": 8}, 8, "leaves no recent window"),
        ("sparse_pattern", {}, 12, "leaves no local window"),
        ("knorm", {"n_sink": 4, "recent": 8}, 10, "exceed the budget"),
    ],
)
def test_budget_errors_for_a_prompt(spec, params, budget, message):
    sel = build(spec, params, budget=budget).selector
    assert isinstance(sel, BudgetSelector)
    with pytest.raises(PolicyError, match=message):
        sel.resolve_budget(40)


LINKED = sorted(EXPECTED - {"snapkv", "pyramidkv", "kivi"})  # those three get their links from their own files


@pytest.mark.parametrize("name", LINKED)
def test_policy_links_its_paper(name):
    url = registry()[name].describe()["paper_url"]
    assert url.startswith(("https://arxiv.org/abs/", "https://proceedings.mlr.press/")), url


def test_the_paper_link_is_optional_and_listed_by_the_cli(capsys):
    from kvviz.commands import policies as command

    assert all(isinstance(cls.describe()["paper_url"], str) for cls in registry().values())  # "" when a policy gives none
    assert command.main(argparse.Namespace(json=False)) == 0
    text = capsys.readouterr().out
    assert "h2o  [eviction]  Zhang et al., 2023. H2O" in text and "\n    https://arxiv.org/abs/2306.14048\n" in text
    assert command.main(argparse.Namespace(json=True)) == 0
    by_name = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert by_name["streaming_llm"]["paper_url"] == "https://arxiv.org/abs/2309.17453"


def test_readme_counts_the_registered_policies():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    said = re.search(r"(\d+) policies from the literature", text)
    assert said and int(said.group(1)) == len(registry())
