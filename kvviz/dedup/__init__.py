"""KV deduplication of repeated spans: ``spans`` finds them (plain Python), ``run`` decodes from a
cache that holds one copy of each and measures what the copy costs (torch)."""
