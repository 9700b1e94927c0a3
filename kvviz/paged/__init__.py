"""A paged KV cache as vLLM's PagedAttention lays it out, small enough to read in one sitting.

  block_manager.py  which physical block holds which request's tokens (plain containers)
  paged_cache.py    the pool of K/V blocks and a transformers Cache that reads through block tables
  events.py         what happened, as typed frozen values (block allocated/copied/dropped, request admitted...)
  scheduler.py      decides each step: admits, preempts, forks samples, finishes (no model)
  runner.py         runs the model on the scheduler's plan: the pool, the cache, eviction hooks, sampling
  recorder.py       frames of the pool after every step, for the page
  engine.py         one run step by step: schedule, run, record
  eviction.py       token-level policies on a paged cache (holes) and the block-aware variant
  waste.py          reserved vs used KV bytes under three allocation schemes (no torch)
  run.py            one run from prompts and settings, as the page and the CLI start it
  result.py         the record of a run, in plain Python (no torch)
  scenarios.py      the page's built-in scenarios
"""
