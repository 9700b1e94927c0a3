"""The Tradeoffs preset "Retrieval vs eviction" (issue 27): every eviction point holds 32 entries
per layer and KV head and every retrieval point reads 32 (its read_budget), on the passkey task."""

from kvviz.policies.selector import Retriever
from kvviz.policies import build
from kvviz.sweep.presets import PRESETS
from kvviz.sweep.run import points


def test_retrievers_read_what_evictions_hold():
    settings = PRESETS["retrieval"].settings("cpu")
    assert settings.task == "passkey"
    seen = {}
    for spec, _ in points(settings):
        if spec.name == "full":
            continue
        policy = spec.pipeline().selector
        if isinstance(policy, Retriever):
            assert spec.budget is None and policy.read_budget == 32, spec
        else:
            assert spec.budget == 32, spec
        seen[spec.name] = type(policy).__name__
    assert set(seen) == {"snapkv", "h2o", "streaming_llm", "quest", "sparq", "simhash"}
    assert sum(issubclass(type(build(n, {}).selector), Retriever) for n in seen) == 3
