"""kvviz's own prefill/decode loop over a PolicyCache, recording a Trace.

One run, top to bottom (``run``):

  prefill(prompt)                        the prompt in one forward; the policy compresses it
  Decoder.after_prefill(...)             graphs or eager steps; a growing cache to fixed buffers
  for each step:
      record what the cache holds        (StepRecords: bytes, lost attention mass, log-probs)
      choose_token(log-probs)            greedy, sampled with the run's seed, or forced
      Decoder.step(token)                decode_step: one forward of the new token, eager or
                                         replayed from a CUDA graph
  (or, for a forced continuation that the cache only appends to: forced_chunks.decode, many
   tokens per forward)
  build_trace(...)                       the Trace: tokens, evictions, scores, bytes, timings
                                         (kvviz.runtime.run_records, with StepRecords)

The loop passes explicit position ids (the tokens' true positions), so it does not depend on how
``generate`` or a cache derives positions, and it works across transformers releases (the model
call's cache keyword is ``past_key_values`` up to 5.23 and ``cache`` from 5.24).

``decode_step(model, cache, ids, positions)`` is a pure function of device tensors (ids (1, 1),
positions (1,)): what a CUDA graph captures and replays (``kvviz.runtime.cuda_graphs``). The cache takes
what a step needs as arguments of that forward (positions and queries, through its attached
hooks). After the prefill, ``Decoder.after_prefill`` moves a growing cache (the full cache,
SnapKV/PyramidKV after the prompt, a store on its own) into fixed-capacity buffers where graphs
will replay (``kvviz.storage.fixed_capacity``): every registered policy but ``random`` then decodes from
a CUDA graph; ``trace.timings["decode_path"]`` says whether a run did ("graph", "eager", or
"chunked" for a forced continuation read in chunks).

Options that shape the decoding (``DecodeOptions``) are one value; ``run`` also takes them as
keywords: ``engine.run(model, tokenizer, ids, "h2o", budget=64, max_new_tokens=16)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kvviz.runtime import cuda_graphs, forced_chunks, fused, fused_steps
from kvviz.runtime.jobs import Stopped
from kvviz.runtime.lanes import TokenFeed
from kvviz.model import devices
from kvviz.model.attention_inputs import MLA_REFUSAL, decoder_attention, unreadable
from kvviz.storage import fixed_capacity
from kvviz.record import metrics
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.runtime.inputs import check_run
from kvviz.runtime.run_records import StepRecords, build_trace, device_memory
from kvviz.policies import Pipeline, PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.record.trace import Trace


@dataclass(frozen=True, eq=False)
class DecodeOptions:
    """How a run decodes: everything but the model, the prompt and the policy."""

    max_new_tokens: int = 32
    sample: bool = False  # sample from the softmax instead of taking the argmax
    temperature: float = 1.0  # divides the logits when sampling
    seed: int = 0  # seeds sampling and the policy's random choices (random, sparse_pattern)
    stop_at_eos: bool = True
    top_k: int = 5  # alternatives recorded per step (trace.topk_ids / topk_probs)
    # teacher forcing: feed these tokens, one per step, instead of the model's choices
    forced_ids: tuple[int, ...] | None = None
    # teacher forcing on the tokens of a run in progress on another lane (kvviz.runtime.lanes), read
    # as they come, up to max_new_tokens; its log-probabilities are the reference unless given
    forced_feed: TokenFeed | None = None
    # (steps, vocab) log-probabilities of a reference run, for per-step KL and top-1 agreement
    reference_logprobs: torch.Tensor | None = None
    keep_logprobs: bool = False  # keep the (steps, vocab) log-probs as trace.extra["logprobs"] (not saved)
    # compute each layer's queries even for policies that do not score with them, to measure the
    # attention mass that fell on evicted entries (trace.lost_mass)
    capture_queries: bool = False
    # on CUDA, replay decode steps from a CUDA graph once every step keeps the cache's shapes:
    # a selector that evicts at decode holds its budget, or a growing cache is held at a fixed
    # capacity (kvviz.storage.fixed_capacity); trace.timings["decode_path"] says which way a run went
    cuda_graphs: bool = True
    # hold a growing cache in fixed-capacity buffers after the prefill: None = when graphs are
    # replayed; True also decodes that layout eagerly (on the CPU too); False never
    fixed_capacity: bool | None = None
    # decode with the model's pure blocks (norms, MLPs, rotary embedding) fused by torch.compile,
    # built in the background (kvviz.runtime.fused): None = on CUDA unless KVVIZ_FUSED=0; True also
    # on the CPU; False never.
    # trace.timings["fused"] says how the steps ran ("all", "some", "building", or why not)
    fused: bool | None = None
    # fuse the policy's own step too (kvviz.runtime.fused_steps), in a fused run: None = unless
    # KVVIZ_FUSED_STEPS=0; False never (a sweep: each of its points would build its own step, a
    # build of seconds for a run of about one second)
    fused_steps: bool | None = None
    # query-agnostic compression: the prompt's first ``question_at`` tokens (the context) are
    # prefilled and compressed alone, then the rest (the question) is fed in one more forward,
    # before the first new token; None: the whole prompt at once (the policy sees the question)
    question_at: int | None = None
    # a teacher-forced continuation (forced_ids) whose cache evicts nothing after the prompt (the
    # full cache, a prompt-only selector, a store that holds each token on its own; no retriever)
    # is read in forwards of this many tokens (kvviz.runtime.forced_chunks: the same entries,
    # rounded as larger matrix products; forced_chunks.why_not says when a run steps instead);
    # 0 or 1: step by step, as a decode
    forced_chunk: int = forced_chunks.CHUNK

    def __post_init__(self):
        if self.forced_ids is not None:
            object.__setattr__(self, "forced_ids", tuple(int(i) for i in self.forced_ids))

    @property
    def n_steps(self) -> int:
        """Steps to run: one per new token (the forced tokens, when given)."""
        return len(self.forced_ids) if self.forced_ids is not None else self.max_new_tokens

    @property
    def forced(self) -> bool:
        """Teacher-forced: the tokens are given (``forced_ids``) or followed (``forced_feed``)."""
        return self.forced_ids is not None or self.forced_feed is not None


@dataclass
class StepEvent:
    """Passed to ``on_step`` after each generated token, for live views."""

    step: int
    token_id: int
    token: str
    kv_bytes: int
    kv_bytes_full: int
    held_entries: int


@dataclass(frozen=True)
class ModelShape:
    """What a run needs to know of the model: its KV cache layout and context."""

    n_layers: int
    n_kv_heads: int
    n_q_heads: int
    head_dim: int
    max_context: int | None
    full_bytes_per_token: int  # keys and values of one token, every layer, in the model's dtype

    @classmethod
    def of(cls, model) -> "ModelShape":
        c = model.config
        n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        dtype_bytes = torch.empty(0, dtype=model.dtype).element_size()
        return cls(
            n_layers=c.num_hidden_layers,
            n_kv_heads=n_kv,
            n_q_heads=c.num_attention_heads,
            head_dim=head_dim,
            max_context=getattr(c, "max_position_embeddings", None),
            full_bytes_per_token=2 * c.num_hidden_layers * n_kv * head_dim * dtype_bytes,
        )


def cache_keyword(model) -> str:
    """The model call's cache argument: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return _cache_keyword(type(model))


@functools.cache
def _cache_keyword(model_class) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def check_attention(model) -> None:
    """Refuse, before any forward, a model whose cache is not per-head keys and values (MLA)."""
    for module in decoder_attention(model):
        if unreadable(module) == MLA_REFUSAL:  # DeepSeek-V2/V3: kvviz's cache cannot hold it, not even ``full``
            raise PolicyError(f"{type(model).__name__}: {MLA_REFUSAL[:-1]} (kvviz cannot run it, not even with `full`).")


def check_prompt(prompt_ids, options: DecodeOptions, shape: ModelShape) -> list[int]:
    prompt_ids = [int(i) for i in prompt_ids]
    check_run(len(prompt_ids), options.n_steps, max_context=shape.max_context)
    if options.question_at is not None and not 0 < options.question_at < len(prompt_ids):
        raise ValueError(f"the question starts at token {options.question_at}: it must leave a context and a question in the {len(prompt_ids)}-token prompt.")
    return prompt_ids


@torch.inference_mode()
def run(
    model,
    tokenizer,
    prompt_ids: list[int],
    policy: PolicySpec | str | Pipeline = "full",
    options: DecodeOptions | None = None,
    *,
    params: dict | None = None,
    budget: int | None = None,
    ratio: float | None = None,
    model_name: str = "",
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **option_values,
) -> Trace:
    """Prefill ``prompt_ids`` and decode under ``policy``; return the Trace.

    ``policy``: a PolicySpec, or a name / text form (``"snapkv:window=8"``) completed by ``params``,
    ``budget`` and ``ratio``; or a ready-made Pipeline (e.g. with an instrumented selector; the
    Trace's ``spec`` is then None). ``options`` and keyword ``option_values`` (fields of DecodeOptions,
    which override ``options``) say how to decode. ``on_step`` hears each generated token;
    ``should_stop`` is asked after each one (a live view's Stop button), and before each decoder
    layer of the prefill, where a stop raises ``background.Stopped`` (nothing was generated).
    """
    if options is not None and not isinstance(options, DecodeOptions):
        raise TypeError(f"engine.run's fifth argument is DecodeOptions, not {type(options).__name__}; give policy parameters as params=...")
    if isinstance(policy, Pipeline):
        pipeline, spec = policy, None
    else:
        spec = PolicySpec.of(policy, params, budget=budget, ratio=ratio)
        pipeline = spec.pipeline()
    options = dataclasses.replace(options or DecodeOptions(), **option_values)
    shape = ModelShape.of(model)
    prompt_ids = check_prompt(prompt_ids, options, shape)
    check_attention(model)
    if pipeline.storage is not None:  # a storage's refusal of this shape (lowrank's rank), before any forward
        pipeline.storage.make_store(0, shape.n_layers, shape.n_kv_heads, shape.head_dim, model.dtype, torch.device("meta"))
    used = devices.run_devices(model)
    device, layer_devices = used[0], used[1:]  # where the token ids go; a split model's layers are elsewhere too
    generator = torch.Generator(device=device).manual_seed(options.seed)
    cache = PolicyCache(
        pipeline, shape.n_layers, len(prompt_ids), len(prompt_ids) + options.n_steps, shape.n_kv_heads, layer_devices,
        generator=generator, measure_lost_mass=options.capture_queries, context_len=options.question_at,
    )
    if pipeline.selector is not None:
        # kvzip's repeat pass, duo_attention's heads: of what is compressed (the context, without the question)
        pipeline.selector.prepare(model, tokenizer, prompt_ids[: options.question_at] if options.question_at else prompt_ids)
    eos = eos_ids(tokenizer, model.config)
    records = StepRecords()
    generated: list[int] = []
    with cache.attached(model):  # hooks for this run only, removed whatever happens
        t0 = time.perf_counter()
        cache.interrupt = should_stop  # a long prompt on a CPU takes minutes to read
        logits = prefill(model, cache, prompt_ids, options.question_at)
        cache.interrupt = None
        if forced_chunks.why_not(cache, options) is None:  # a forced continuation the cache only appends to
            t_prefill = _sync_time(used) - t0
            way = _read_forced(model, tokenizer, cache, shape, logits, options, records, generated, on_step, should_stop)
        else:
            decoder = Decoder.after_prefill(model, cache, options, graphs=not devices.is_split(used))
            t_prefill = _sync_time(used) - t0
            way = _decode(decoder, tokenizer, logits, options, records, generated, shape, used, generator, eos, on_step, should_stop)
        stopped_by = way.pop("stopped_by")
        t_total = time.perf_counter() - t0
    timings = {
        "prefill_s": t_prefill, "decode_s": float(sum(records.step_s)), "step_s": records.step_s, "total_s": t_total,
        # "graph": steps were replayed from a CUDA graph; "chunked": a forced continuation read in
        # forwards of many tokens (kvviz.runtime.forced_chunks)
        "decode_path": way["path"],
        "fused": way["fused"],  # the model's blocks fused: "all", "some", "building", or why not
        # the policy's steps fused (kvviz.runtime.fused_steps): "all", "some", "building", "none", or why not
        "fused_steps": way["fused_steps"],
    }
    cache.fused_steps = None
    if way.get("graph_failure"):
        timings["graph_failure"] = way["graph_failure"]
    if options.forced_feed is not None and options.reference_logprobs is None:  # the followed run's, once it ended
        options = dataclasses.replace(options, reference_logprobs=options.forced_feed.logprobs())
    trace = build_trace(
        model, tokenizer, spec, cache, shape, prompt_ids, generated, records, options, timings, stopped_by, model_name
    )
    trace.extra.update(fixed_capacity=cache.is_fixed, kv_bytes_reserved=cache.reserved_kv_bytes())
    if options.question_at is not None:
        trace.extra["question_at"] = options.question_at  # the context was compressed before the question
    if pipeline.selector is not None and pipeline.selector.run_details():
        trace.extra["policy_details"] = pipeline.selector.run_details()  # shown in the Live page's run details
    if devices.is_split(used):
        trace.device = devices.describe(layer_devices)
        trace.device_memory = device_memory(model, cache)
    return trace


def _decode(decoder, tokenizer, logits, options, records, generated, shape, used, generator, eos, on_step, should_stop) -> dict:
    """The decode loop: record a step, choose its token, feed it (eagerly or from a CUDA graph).
    Returns how the steps ran and why they ended."""
    cache, out = decoder.cache, {"stopped_by": "max_new_tokens"}
    if decoder.fused(options) and fused.available(decoder.model) is None and options.fused_steps is not False and fused_steps.by_default():
        cache.fused_steps = fused_steps.Steps(cache)
    with fused.decoding(decoder.model, enabled=decoder.fused(options)) as fused_report:
        for step in range(options.n_steps):
            t_step = time.perf_counter()
            logprobs = logits[0, -1].float().log_softmax(-1)  # (vocab,)
            records.add(logprobs, cache, shape)
            token = choose_token(logprobs, options, step, generator)
            generated.append(token)
            if on_step is not None:
                on_step(StepEvent(step, token, tokenizer.decode([token]), records.kv_bytes[-1], records.kv_bytes_full[-1], len(cache.layers[0])))
            stop = _stop_reason(token, step, options, eos, should_stop)
            if stop is not None:
                out["stopped_by"] = stop
                records.step_s.append(time.perf_counter() - t_step)
                break
            logits = decoder.step(token, position=cache.prompt_len + step)
            records.step_s.append(_sync_time(used) - t_step)
    out.update(path=decoder.path, fused=fused_report["fused"], graph_failure=decoder.failure,
               fused_steps=cache.fused_steps.state() if cache.fused_steps is not None else "off")
    return out


def _read_forced(model, tokenizer, cache, shape, logits, options, records, generated, on_step, should_stop) -> dict:
    """A forced continuation read in chunks (``kvviz.runtime.forced_chunks``); the steps' events
    are heard after each chunk."""

    def heard(first: int, last: int) -> None:
        generated.extend(options.forced_ids[first:last])
        if on_step is None:
            return
        held = len(cache.layers[0]) - (last - 1)  # the cache holds the steps' tokens up to last - 1
        for s in range(first, last):
            token = generated[s]
            on_step(StepEvent(s, token, tokenizer.decode([token]), records.kv_bytes[s], records.kv_bytes_full[s], held + s))

    forward = functools.partial(_forward, model, cache, keep=0)
    stopped_by = forced_chunks.decode(cache, shape, logits, options, records, forward, should_stop, heard)
    return {"stopped_by": stopped_by, "path": "chunked", "fused": "off", "fused_steps": "off"}


def prefill(model, cache: PolicyCache, prompt_ids: list[int], question_at: int | None = None) -> torch.Tensor:
    """The prompt in one forward (the policy compresses the cache right after); logits (1, 1, vocab).
    With ``question_at``: the context (the tokens before it) in one forward, compressed, then the
    question in another, whose tokens attend to the compressed context."""
    device = devices.input_device(model)
    ids = torch.tensor([prompt_ids], device=device)
    positions = torch.arange(len(prompt_ids), device=device)
    if question_at is None:
        return _forward(model, cache, ids, positions)
    _forward(model, cache, ids[:, :question_at], positions[:question_at])
    return _forward(model, cache, ids[:, question_at:], positions[question_at:])


def decode_step(model, cache: PolicyCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One new token through the model and the policy. ids (1, 1), positions (1,) on the model's
    device -> logits (1, 1, vocab). No host reads: a CUDA graph can capture it."""
    return _forward(model, cache, ids, positions)


class Decoder:
    """Feeds one token per decode step: eagerly, or, with ``use_graphs``, replayed from a CUDA
    graph once the cache is steady (every step keeps its shapes: every layer holds its budget,
    or a growing cache is held at a fixed capacity)."""

    def __init__(self, model, cache: PolicyCache, use_graphs: bool = False, whole: bool = True):
        self.model, self.cache, self.use_graphs = model, cache, use_graphs
        self.whole = whole  # the model on one device (False: split across devices, no graphs, no fusing)
        self.device = devices.input_device(model)
        self.graph: cuda_graphs.DecodeGraph | None = None
        self.failure: str | None = None  # why graph capture failed, if it did
        self.replayed = 0  # steps replayed from a graph

    @classmethod
    def after_prefill(cls, model, cache: PolicyCache, options: DecodeOptions, graphs: bool = True) -> "Decoder":
        """The decoder of a run whose prompt is in the cache: graphs where this run can replay
        them (``graphs`` False: never, e.g. for a model split across devices); a growing cache
        moved to fixed-capacity buffers where graphs are replayed (or where
        ``options.fixed_capacity`` asks for it)."""
        device = devices.input_device(model)
        use_graphs = graphs and options.cuda_graphs and cuda_graphs.usable(cache, device, options.sample, model)
        fixed = use_graphs if options.fixed_capacity is None else options.fixed_capacity
        fixed = fixed and not cache.windows  # a fixed layer's mask hides unwritten slots, not a sliding window's
        if fixed and cache.grows():
            if not fixed_capacity.supported(model):
                raise PolicyError("A fixed-capacity cache needs the model's sdpa or eager attention.")
            cache.hold_fixed(options.n_steps)
        return cls(model, cache, use_graphs, whole=graphs)

    def fused(self, options: DecodeOptions) -> bool:
        """Whether the decode steps use the model's fused blocks (``kvviz.runtime.fused``): asked
        for, or by default on CUDA (unless ``KVVIZ_FUSED=0``); never for a model split across devices."""
        if options.fused is not None:
            return options.fused and self.whole
        return self.device.type == "cuda" and self.whole and fused.by_default()

    @property
    def path(self) -> str:
        """How the run decoded: "graph" once a step was replayed from a CUDA graph, else "eager"."""
        return "graph" if self.replayed else "eager"

    def step(self, token: int, position: int) -> torch.Tensor:
        """logits (1, 1, vocab) after feeding ``token`` at ``position``."""
        if self.graph is None and self.use_graphs and self.cache.steady():
            # a partial, not a lambda over self: no reference cycle keeps an old graph for the GC to
            # free in the middle of a later capture
            self.graph = cuda_graphs.DecodeGraph(functools.partial(decode_step, self.model, self.cache), self.cache, self.device)
        if self.graph is not None:
            logits = self.graph.step(token, position)
            if logits is not None:
                self.replayed += self.graph.graph is not None
                return logits
            self.failure, self.graph, self.use_graphs = self.graph.failure, None, False  # eager from here on
        ids = torch.tensor([[token]], device=self.device)
        return decode_step(self.model, self.cache, ids, torch.tensor([position], device=self.device))


def _forward(model, cache: PolicyCache, ids: torch.Tensor, positions: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """ids (1, q_len), positions (q_len,) -> logits (1, 1, vocab) of the last position (``keep=0``:
    (1, q_len, vocab), every position's)."""
    out = model(input_ids=ids, position_ids=positions[None], use_cache=True, logits_to_keep=keep, **{cache_keyword(model): cache})
    return out.logits


def choose_token(logprobs: torch.Tensor, options: DecodeOptions, step: int, generator: torch.Generator) -> int:
    """The next token: forced, sampled (softmax of logits / temperature, drawn with the run's
    seeded generator) or greedy. logprobs: (vocab,)."""
    if options.forced_ids is not None:
        return options.forced_ids[step]
    if options.forced_feed is not None:
        token = options.forced_feed.get(step)
        if token is None:  # the followed run ended before its first token (it failed or was stopped)
            raise Stopped
        return token
    if options.sample:
        probs = (logprobs / max(options.temperature, 1e-5)).softmax(-1).to(generator.device)  # a split model's logits come from its last device
        return int(torch.multinomial(probs, 1, generator=generator))
    return int(logprobs.argmax())


def _stop_reason(token: int, step: int, options: DecodeOptions, eos: set[int], should_stop) -> str | None:
    """Why the run ends after this token ("eos", "user", "max_new_tokens"), or None to go on."""
    if options.stop_at_eos and not options.forced and token in eos:
        return "eos"
    if should_stop is not None and should_stop():
        return "user"
    if step == options.n_steps - 1 or (options.forced_feed is not None and not options.forced_feed.has(step + 1)):
        return "max_new_tokens"
    return None


def _sync_time(used: list[torch.device]) -> float:
    """The time once this thread's work on ``used`` is done (its own streams: runs on other lanes
    go on)."""
    devices.synchronize_streams(used)
    return time.perf_counter()


def eos_ids(tokenizer, config) -> set[int]:
    ids = set()
    for v in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def perplexity(trace: Trace) -> float:
    """Perplexity of a teacher-forced continuation: exp of the mean negative log-likelihood of
    each forced token given everything before it (the first forced token is scored by the
    prefill's logits)."""
    return metrics.perplexity(trace.chosen_logprob)
