"""Fused kernels for the model's pure blocks, compiled by torch in the background.

A CUDA graph removes the cost of launching a decode step's kernels, not the kernels: an eager
Llama layer runs each RMSNorm as eight elementwise kernels, the MLP's activation and product as
two, the rotary embedding as ten. The blocks that are pure functions of their tensors (every
``*RMSNorm`` and ``*MLP`` module, the ``*RotaryEmbedding`` module and the attention's
``apply_rotary_pos_emb``) are compiled by ``torch.compile`` (inductor, static shapes, one graph
each) into a few fused kernels, and a decode step that is then captured in a CUDA graph replays
those. The cache, the attention and every policy stay kvviz's own eager code.

The app never waits for the compiler:
- inside a run's decode loop (``decoding``), a block called with a shape not built yet runs
  eagerly and asks a background thread to build it (it compiles every module of that class with a
  copy of the input, so that no module's first compiled call compiles in the foreground);
- once built, the blocks are used by the next step that is not captured yet: a run whose graph was
  captured before the build decodes as today; the next run replays the fused blocks;
- inductor keeps what it compiled on disk (its FX-graph and Triton caches), so a restarted
  server builds again in seconds.
``trace.timings["fused"]`` says how a run's decode steps ran: "all" (every block call fused),
"some", "building" (none yet), or why not ("off", "failed: ...").

Numbers: inductor is asked to round every intermediate to the model's dtype as eager does
(``emulate_precision_casts``); in float32 a fused run's logits equal the eager run's to rounding
and its tokens are the same (``tests/integration/test_fused_blocks.py``).

The blocks are swapped only for the thread of a run that asked for them (other sessions sharing
the model call the model's own code), and only while some run decodes: the dispatchers are
installed by the first run and removed by the last.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import queue
import threading
import weakref
from contextlib import contextmanager

import torch

from kvviz.runtime import cuda_graphs

COMPILE_OPTIONS: dict = {"emulate_precision_casts": True}  # round as eager does: bf16 after every op
_local = threading.local()  # .blocks: the Blocks of the run decoding on this thread, if fused
_lock = threading.Lock()
_compiled: dict = {}  # function or module class -> its torch.compile'd callable (shared by every model)
_builds: "queue.Queue[tuple[Blocks, tuple, tuple]]" = queue.Queue()
_builder: threading.Thread | None = None
_models: "weakref.WeakKeyDictionary[torch.nn.Module, Blocks]" = weakref.WeakKeyDictionary()


def available(model) -> str | None:
    """None when this model's blocks can be fused here, else why not (a short text)."""
    if next(model.parameters()).device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "off (no triton)"  # inductor's GPU code generator
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        return "off (torch.compile is not supported on this Python)"
    return None


def by_default() -> bool:
    """Whether runs on CUDA fuse when they do not say (``KVVIZ_FUSED=0`` turns the default off)."""
    return os.environ.get("KVVIZ_FUSED", "1") != "0"


def _kind(module) -> str | None:
    name = type(module).__name__
    for kind in ("RMSNorm", "MLP", "RotaryEmbedding"):
        if name.endswith(kind):
            return kind
    return None


def _rotary_owners(model) -> list[dict]:
    """The module namespaces whose ``apply_rotary_pos_emb`` the attention forwards call."""
    from kvviz.model.attention_inputs import decoder_attention

    out = []
    for module in decoder_attention(model):
        if module is None:
            continue
        space = getattr(inspect.unwrap(type(module).forward), "__globals__", {})  # past transformers' decorators
        if callable(space.get("apply_rotary_pos_emb")) and all(space is not o for o in out):
            out.append(space)
    return out


def _signature(args: tuple, kwargs: dict) -> tuple | None:
    """What a compiled block is specialized on: each tensor's shape, dtype and device (keywords by
    name); None when an argument is neither a tensor nor a plain number (the block then runs eagerly)."""
    out: list = sorted(kwargs)
    for a in (*args, *(kwargs[k] for k in sorted(kwargs))):
        if isinstance(a, torch.Tensor):
            out.append((tuple(a.shape), a.dtype, str(a.device)))
        elif isinstance(a, (int, float, bool)) or a is None:
            out.append(a)
        else:
            return None
    return tuple(out)


def configure_thread() -> None:
    """torch.compile's settings for this thread (torch keeps them per thread: a thread starts with
    the defaults), set by each thread that builds or calls kvviz's compiled code:
    - while the builder thread compiles, torch's FX tracer patches every module's ``__call__`` for
      the whole process, and a compiled function called on another thread would raise
      (``error_on_nested_fx_trace``); it runs its plain code instead: a run decoding meanwhile is
      unfused for those calls, not stopped;
    - one compiled policy step per policy, parameters and shapes (``kvviz.runtime.fused_steps``):
      more than torch's default of 8 per function."""
    torch._dynamo.config.error_on_nested_fx_trace = False
    torch._dynamo.config.recompile_limit = 256


def _compile(target):
    with _lock:
        if target not in _compiled:
            fn = target.forward if isinstance(target, type) else target
            _compiled[target] = torch.compile(fn, dynamic=False, fullgraph=True, options=COMPILE_OPTIONS)
        return _compiled[target]


class Blocks:
    """One model's fusable blocks: what is built, what is being built, and the dispatchers."""

    def __init__(self, model):
        self.modules = [m for m in model.modules() if _kind(m) and "forward" not in vars(m)]
        self.rotary = _rotary_owners(model)
        self.ready: set[tuple] = set()  # (target, signature) built
        self.asked: set[tuple] = set()
        self.failure: str | None = None
        self.users = 0

    # dispatchers, installed while some run decodes ------------------------------------------

    def install(self) -> None:
        for module in self.modules:
            module.forward = self._dispatcher(type(module), module.forward, module)
        for space in self.rotary:
            _patch(space)

    def uninstall(self) -> None:
        for module in self.modules:
            del module.forward
        for space in self.rotary:
            _unpatch(space)

    def _dispatcher(self, target, original, module):
        def call(*args, **kwargs):
            if getattr(_local, "blocks", None) is not self:
                return original(*args, **kwargs)
            return self.call(target, original, module, args, kwargs)

        return call

    def call(self, target, original, module, args: tuple, kwargs: dict):
        """``original(*args, **kwargs)``, or its fused form when built (asked for in the background
        when not)."""
        sig = _signature(args, kwargs)
        if sig is not None and not self.failure and (target, sig) in self.ready:
            _local.fused += 1
            fn = _compiled[target]
            return fn(module, *args, **kwargs) if module is not None else fn(*args, **kwargs)
        _local.eager += 1
        if sig is not None and (target, sig) not in self.asked and not _capturing():
            self.asked.add((target, sig))
            copy = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
            example = (tuple(map(copy, args)), {k: copy(v) for k, v in kwargs.items()})
            if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
                torch.cuda.current_stream().synchronize()  # the copies exist before the builder's stream reads them
            ask(self, (target, sig), example)
        return original(*args, **kwargs)

    # the background build ---------------------------------------------------------------------

    def build(self, key: tuple, example: tuple) -> None:
        """Compile ``key``'s block for its signature, calling it on every module of its class (each
        module's first call, and any guard it fails, is then compiled here, not in a run)."""
        target, _ = key
        args, kwargs = example
        fn = _compile(target)
        cuda = [a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_cuda]
        stream = torch.cuda.Stream(cuda[0]) if cuda else None  # never the legacy default stream, which waits for every other
        with torch.inference_mode(), torch.cuda.stream(stream):
            if isinstance(target, type):
                for module in self.modules:
                    if type(module) is target:
                        fn(module, *args, **kwargs)
            else:
                fn(*args, **kwargs)
            if stream is not None:
                stream.synchronize()
        self.ready.add(key)

    def fail(self, key: tuple, why: str) -> None:
        self.failure = why

    def state(self) -> str:
        if self.failure:
            return f"failed: {self.failure}"
        return "ready" if self.asked and self.asked <= self.ready else "building" if self.asked else "not started"


def _capturing() -> bool:
    """Whether this thread's CUDA stream is being captured (nothing may be cloned or asked then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_patched: dict[int, list] = {}  # id of a modeling module's namespace -> [runs decoding, its own function]


def _plain(fn):
    """The plain Python function behind a modeling module's ``apply_rotary_pos_emb``: itself, or the
    function that transformers' kernel-hub wrapper (a ``Func`` module) calls when no hub kernel is
    active; None when neither (the rotation then stays eager)."""
    if inspect.isfunction(fn):
        return fn
    forward = getattr(type(fn), "forward", None)
    names = getattr(getattr(forward, "__code__", None), "co_freevars", ())
    if forward is not None and "func" in names and forward.__closure__:
        inner = forward.__closure__[names.index("func")].cell_contents
        return inner if inspect.isfunction(inner) else None
    return None


def _patch(space: dict) -> None:
    """Route a modeling module's ``apply_rotary_pos_emb`` through the decoding thread's Blocks
    (every model of that family shares the function: one dispatcher, counted)."""
    entry = _patched.setdefault(id(space), [0, space["apply_rotary_pos_emb"]])
    plain = _plain(entry[1])
    if entry[0] == 0 and plain is not None:
        original = entry[1]

        def call(*args, **kwargs):
            blocks = getattr(_local, "blocks", None)
            if blocks is None:
                return original(*args, **kwargs)
            return blocks.call(plain, original, None, args, kwargs)

        space["apply_rotary_pos_emb"] = call
    entry[0] += 1


def _unpatch(space: dict) -> None:
    entry = _patched[id(space)]
    entry[0] -= 1
    if entry[0] == 0:
        space["apply_rotary_pos_emb"] = entry[1]
        del _patched[id(space)]


def ask(owner, key: tuple, example: tuple) -> None:
    """Have the background thread call ``owner.build(key, example)`` (``owner.fail(key, why)`` when
    it raises); ``owner``: a model's Blocks, or a policy step's build (``kvviz.runtime.fused_steps``)."""
    global _builder
    _builds.put((owner, key, example))
    with _lock:
        if _builder is None or not _builder.is_alive():
            _builder = threading.Thread(target=_build_loop, name="kvviz-fused-build", daemon=True)
            _builder.start()


def _build_loop() -> None:
    configure_thread()
    while True:
        owner, key, example = _builds.get()
        try:
            if not owner.failure:
                with cuda_graphs.no_capture():
                    owner.build(key, example)
        except Exception as exc:  # what inductor cannot compile runs eagerly, as before
            first = str(exc).splitlines()[0] if str(exc) else ""
            owner.fail(key, f"{type(exc).__name__}: {first}"[:300])
        finally:
            _builds.task_done()


def wait() -> None:
    """Block until every asked build has finished (tests, benchmarks)."""
    _builds.join()


def blocks_of(model) -> Blocks:
    with _lock:
        if model not in _models:
            _models[model] = Blocks(model)
        return _models[model]


@contextmanager
def decoding(model, enabled: bool = True):
    """For a run's decode loop on this thread: the model's blocks fused where built (and built in
    the background where not). Yields a dict that says, on exit, how the steps ran:
    ``{"fused": "all" | "some" | "building" | "off ..." | "failed: ..."}``."""
    report: dict = {}
    why = None if enabled else "off"
    why = why or available(model)
    if why:
        report["fused"] = why
        yield report
        return
    configure_thread()
    blocks = blocks_of(model)
    with _lock:
        if blocks.users == 0:
            blocks.install()
        blocks.users += 1
    _local.blocks, _local.fused, _local.eager = blocks, 0, 0
    try:
        yield report
    finally:
        fused, eager = _local.fused, _local.eager
        _local.blocks = None
        with _lock:
            blocks.users -= 1
            if blocks.users == 0:
                blocks.uninstall()
        report["fused"] = (f"failed: {blocks.failure}" if blocks.failure and not fused else
                           "all" if fused and not eager else "some" if fused else "building")
