"""On a CUDA host: the full policy matches transformers' generate, and every policy runs.
Exits with status 1 when either is not so."""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kvviz, installed or not

from kvviz.runtime import engine
from kvviz.model.loading import load_model
from kvviz.policies import registry
from kvviz.record.text import encode_prompt

argparse.ArgumentParser(description=__doc__).parse_args()
loaded = load_model()
m, tok = loaded.model, loaded.tokenizer
print(loaded.summary)
ids = encode_prompt(tok, "Lighthouses guided ships home along rocky coasts for centuries. " * 8
                    + "What is the capital of France? Answer in one sentence, then name two rivers there.", chat=True)
trace = engine.run(m, tok, ids, "full", max_new_tokens=32)
ref = m.generate(torch.tensor([ids], device=m.device), max_new_tokens=32, do_sample=False)
matches = trace.generated_ids == ref[0, len(ids):].tolist()
print("full == generate:", matches, repr(trace.generated_text))
failures = [] if matches else ["full != generate"]
# every registered policy (the retrievers quest, sparq, simhash among them) and a retriever after
# an eviction selector; the decode path says whether the steps replayed from a CUDA graph
for name in [*registry(), "snapkv+quest"]:
    try:
        t = engine.run(m, tok, ids, name, max_new_tokens=16, budget=None)
        path = t.timings.get("decode_path", "eager")
        print(f"{name:16s} ok  {path:5s} kv {t.kv_bytes[-1]:>9d} / {t.kv_bytes_full[-1]:>9d}  {t.generated_text[:60]!r}")
    except Exception as e:  # report every failure, keep going
        print(f"{name:16s} FAIL {type(e).__name__}: {e}")
        failures.append(name)
if failures:
    print("FAILED:", ", ".join(failures))
    sys.exit(1)
