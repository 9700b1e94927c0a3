"""Runs on one shared model from several threads: each attaches and removes its own hooks while
the others run forwards. PyTorch can call a hook without its kwargs while another thread is
registering or removing one; a run must neither fail nor change another run's result."""

import threading

from kvviz.runtime import engine


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_concurrent_runs_with_hooks_on_a_shared_model(tiny_llama):
    ids = list(range(40))
    ref = engine.run(tiny_llama, Tok(), ids, "h2o", budget=10, max_new_tokens=20, stop_at_eos=False).generated_ids
    errors, mismatches = [], []

    def work():
        try:
            for _ in range(25):
                out = engine.run(tiny_llama, Tok(), ids, "h2o", budget=10, max_new_tokens=20, stop_at_eos=False)
                if out.generated_ids != ref:
                    mismatches.append(out.generated_ids)
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []
    assert all(not m._forward_pre_hooks for m in tiny_llama.modules())
