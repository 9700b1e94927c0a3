"""The weights cache's fast path (kvviz.model.weight_files.load_mapped): the model built on the
meta device with the file's tensors (read in one go) assigned to it gives exactly the logits of transformers'
from_pretrained of the same entry; the checksum is skipped only for a file whose stat is the one
recorded when its checksum last matched."""

from __future__ import annotations

import os

import pytest
import torch

from kvviz.model import loading
from kvviz.model import weight_files as wf

FAKE_SHA = "0" * 64


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_mapped_smollm_gives_the_logits_of_from_pretrained_exactly(smollm):
    entry = wf.gguf_cache_entry(loading.embedded_gguf_path())
    assert smollm.summary.weights_cache in ("hit", "built")
    slow, slow_tokenizer = wf.load_with_from_pretrained(entry, None, torch.float32)
    ids = torch.tensor([smollm.tokenizer("The key-value cache of a transformer keeps, for every layer, the keys and values of the tokens read so far.").input_ids])
    assert ids.shape[1] >= 20 and slow_tokenizer(smollm.tokenizer.decode(ids[0])).input_ids == ids[0].tolist()
    assert torch.equal(_logits(smollm.model, ids), _logits(slow, ids))
    fast_state, slow_state = smollm.model.state_dict(), slow.state_dict()
    assert fast_state.keys() == slow_state.keys()
    assert all(torch.equal(fast_state[k], slow_state[k]) for k in fast_state)  # buffers (rotary frequencies) too
    assert smollm.model.lm_head.weight.data_ptr() == smollm.model.model.embed_tokens.weight.data_ptr()  # still tied
    assert smollm.model.config._attn_implementation == slow.config._attn_implementation == "sdpa"
    assert smollm.model.generation_config.eos_token_id == slow.generation_config.eos_token_id


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mapped_tiny_model_in_another_dtype_equals_from_pretrained(tmp_path, tiny_llama, smollm, dtype):
    entry = tmp_path / FAKE_SHA
    wf.save_cache_entry(tiny_llama, smollm.tokenizer, entry, gguf_sha256=FAKE_SHA, gguf_name="tiny.gguf")
    fast, _ = wf.load_mapped(entry, None, dtype)
    slow, _ = wf.load_with_from_pretrained(entry, None, dtype)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert next(fast.parameters()).dtype == dtype
    assert torch.equal(_logits(fast, ids), _logits(slow, ids))
    fast.model.embed_tokens.weight.data.add_(1.0)  # the model holds a copy: the file is left as it was
    assert wf.check_cache_entry(entry, FAKE_SHA) is None


def test_a_file_changed_after_its_check_is_hashed_again(tmp_path, tiny_llama, smollm):
    entry = tmp_path / FAKE_SHA
    wf.save_cache_entry(tiny_llama, smollm.tokenizer, entry, gguf_sha256=FAKE_SHA, gguf_name="tiny.gguf")
    assert wf.check_cache_entry(entry, FAKE_SHA) is None
    assert (entry / wf.VERIFIED_FILE).is_file()
    weights = entry / wf.WEIGHTS_FILE
    stat = weights.stat()
    with open(weights, "r+b") as handle:  # same size, and the old mtime put back: only the ctime tells
        handle.seek(stat.st_size - 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert wf.check_cache_entry(entry, FAKE_SHA) == "model.safetensors does not match its checksum"
