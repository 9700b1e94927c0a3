"""One tiny random-weight model per decoder family, built in the process from its transformers
config class (2 layers, hidden 64, 4 query heads, vocabulary 128): what
tests/unit/test_model_families.py checks, and what README's "Models" table is rendered from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
GQA = dict(num_key_value_heads=2, head_dim=16)
WINDOW = 8  # sliding windows shorter than the test prompt, so that they matter
TWO_KINDS = ["sliding_attention", "full_attention"]


@dataclass(frozen=True)
class Family:
    config: str  # the transformers config class
    args: dict = field(default_factory=dict)
    kernel: str = "sdpa"  # the attention implementation kvviz's loader picks
    runs: bool = True  # kvviz's cache runs it (every policy); False: refused before any forward
    maps: bool = True  # attention maps (the Attention explorer) equal transformers' eager weights
    note: str = ""


FAMILIES: dict[str, Family] = {
    "Llama": Family("LlamaConfig", GQA),
    "Qwen2": Family("Qwen2Config", {"num_key_value_heads": 2}),
    "Qwen3": Family("Qwen3Config", GQA, note="q/k norm per head"),
    "Qwen3-MoE": Family("Qwen3MoeConfig", {**GQA, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    "Mistral": Family("MistralConfig", {**GQA, "sliding_window": WINDOW}, note="sliding window"),
    "Mixtral": Family("MixtralConfig", {**GQA, "num_local_experts": 4, "num_experts_per_tok": 2}, note="mixture of experts"),
    "Gemma 2": Family("Gemma2Config", {**GQA, "sliding_window": WINDOW, "query_pre_attn_scalar": 16, "layer_types": TWO_KINDS},
                      kernel="eager", note="refuses sdpa (logit softcapping) on transformers 5.24; 5.17 takes sdpa"),
    "Gemma 3": Family("Gemma3TextConfig", {**GQA, "sliding_window": WINDOW, "query_pre_attn_scalar": 16, "layer_types": TWO_KINDS},
                      note="sliding and global layers, q/k norm"),
    "Phi-3": Family("Phi3Config", {"num_key_value_heads": 2}, note="fused qkv_proj"),
    "Phi (Phi-2)": Family("PhiConfig", {"num_key_value_heads": 2, "partial_rotary_factor": 0.5},
                          note="partial rotary, separate q/k/v projections with biases"),
    "StableLM": Family("StableLmConfig", {"num_key_value_heads": 2, "qk_layernorm": True}, note="partial rotary, per-head q/k layernorm"),
    "GPT-NeoX / Pythia": Family("GPTNeoXConfig", note="fused query_key_value, partial rotary, layers at gpt_neox.layers"),
    "OLMo 2": Family("Olmo2Config", {"num_key_value_heads": 2}, note="q/k norm over all heads"),
    "Granite": Family("GraniteConfig", {"num_key_value_heads": 2, "attention_multiplier": 0.2}, note="attention multiplier"),
    "Cohere": Family("CohereConfig", {"num_key_value_heads": 2, "use_qk_norm": True}, note="interleaved RoPE, per-head q/k norm"),
    "SmolLM3": Family("SmolLM3Config", {"num_key_value_heads": 2, "no_rope_layers": [1, 0]}, note="layers without RoPE"),
    "gpt-oss": Family("GptOssConfig", {**GQA, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": WINDOW,
                                       "layer_types": TWO_KINDS, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
                      kernel="eager", maps=False,
                      note="refuses sdpa; maps refused (learned attention sinks); h2o/snapkv scores leave the sinks out"),
    "DeepSeek-V3": Family("DeepseekV3Config", {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                                               "qk_nope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                               "n_group": 1, "topk_group": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1},
                          runs=False, maps=False, note="MLA: refused before any forward, `full` too"),
}


def build(name: str):
    """The family's tiny random model in float32 on the CPU, with the attention kvviz's loader
    picks; None when this transformers lacks the family."""
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from kvviz.model.loading import attention_implementation

    family = FAMILIES[name]
    config_class = getattr(transformers, family.config, None)
    if config_class is None:
        return None
    config = config_class(**{**COMMON, **family.args})
    attn = attention_implementation(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    with torch.no_grad():  # norms and biases away from 1 and 0 too, so that a forgotten one changes the numbers
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def render_table() -> str:
    """README's "Models" table (Markdown), from FAMILIES."""
    yes = {True: "yes", False: "no"}
    rows = ["| Family | Attention kernel | kvviz's cache (every policy) | Attention maps | Notes |", "|---|---|---|---|---|"]
    for name, f in FAMILIES.items():
        cache = "refused" if not f.runs else "yes, retrievers refused" if f.args.get("sliding_window") else "yes"
        rows.append(f"| {name} | {f.kernel} | {cache} | {yes[f.maps]} | {f.note} |")
    return "\n".join(rows)
