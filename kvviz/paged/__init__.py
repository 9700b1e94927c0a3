"""A paged KV cache as vLLM's PagedAttention lays it out, small enough to read in one sitting.

  block_manager.py  which physical block holds which request's tokens (plain containers)
  cache.py          the pool of K/V blocks and a transformers Cache that reads through block tables
  scheduler.py      admits, decodes together, preempts, forks samples; records frames for the page
  eviction.py       token-level policies on a paged cache (holes) and the block-aware variant
  waste.py          reserved vs used KV bytes under three allocation schemes (no torch)
  run.py            one run from prompts and settings, as the page and the CLI start it
  result.py         the record of a run, in plain Python (no torch)
  scenarios.py      the page's built-in scenarios
"""
