"""kvviz.storage.quantize: packing into bytes, exact dequantized values, streams with a full-precision tail."""

import pytest
import torch

from kvviz.storage.quantize import ErrorMeter, QuantizedStream, dequantize, pack, quantize, unpack


def test_pack_layout_low_bits_first():
    codes = torch.tensor([[1, 2, 3, 0, 3, 3, 3, 3]], dtype=torch.uint8)
    packed2 = pack(codes, 2)
    assert packed2.dtype == torch.uint8
    assert packed2.tolist() == [[1 | 2 << 2 | 3 << 4 | 0 << 6, 255]]
    packed4 = pack(torch.tensor([[0, 3, 6, 15]]), 4)
    assert packed4.tolist() == [[0 | 3 << 4, 6 | 15 << 4]]
    assert torch.equal(pack(codes, 8), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_roundtrip_and_size(bits):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2**bits, (3, 5, 64), generator=g, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (3, 5, 64 * bits // 8)
    assert packed.numel() * packed.element_size() == codes.numel() * bits // 8
    assert torch.equal(unpack(packed, bits), codes)


def test_pack_rejects_bad_bits_and_partial_bytes():
    with pytest.raises(ValueError, match="bits must be one of"):
        pack(torch.zeros(1, 8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="whole bytes"):
        pack(torch.zeros(1, 3, dtype=torch.uint8), 4)


def test_asymmetric_per_token_exact_values():
    # one head, one token, 8 channels in two groups of 4
    x = torch.tensor([[[0.0, 1.5, 3.0, 7.5, -1.0, -0.5, 0.3, 6.5]]])
    q = quantize(x, 4, dim=-1, group_size=4)
    assert q.scale.tolist() == [[[0.5, 0.5]]]
    assert q.zero.tolist() == [[[0.0, -1.0]]]
    assert unpack(q.codes, 4).tolist() == [[[0, 3, 6, 15, 0, 1, 3, 15]]]
    assert q.codes.tolist() == [[[0 | 3 << 4, 6 | 15 << 4, 0 | 1 << 4, 3 | 15 << 4]]]
    assert dequantize(q).tolist() == [[[0.0, 1.5, 3.0, 7.5, -1.0, -0.5, 0.5, 6.5]]]


def test_symmetric_exact_values_and_no_zero_point():
    x = torch.tensor([[[-3.0, 1.4, 3.0, 0.0]]])
    q = quantize(x, 4, symmetric=True)
    assert q.zero is None and len(q.tensors()) == 2
    assert torch.allclose(q.scale, torch.tensor([[[3 / 7]]]))
    # q = round(x / scale) = [-7, 3, 7, 0], stored with the offset 8
    assert unpack(q.codes, 4).tolist() == [[[1, 11, 15, 8]]]
    assert torch.allclose(dequantize(q), torch.tensor([[[-3.0, 9 / 7, 3.0, 0.0]]]))


def test_two_bit_levels_and_constant_groups():
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]]])  # (1, 2 tokens, 4)
    q = quantize(x, 2)
    assert unpack(q.codes, 2).tolist() == [[[0, 1, 2, 3], [0, 0, 0, 0]]]
    assert q.codes.shape == (1, 2, 1)  # four 2-bit codes in one byte
    assert dequantize(q).tolist() == x.tolist()  # a constant group is exact (smallest positive scale)
    assert q.scale[0, 1, 0].item() == torch.finfo(torch.float32).tiny


def test_per_channel_groups_of_tokens():
    # channel 0 is an outlier channel: per channel, it gets its own scale
    x = torch.tensor([[[100.0, 0, 1, 1], [103, 3, 4, 4], [0, 6, 1, 1], [3, 3, 4, 7]]])  # (1, 4 tokens, 4 channels)
    q = quantize(x, 2, dim=1, group_size=2)  # two groups of two tokens, one scale per channel each
    assert q.scale.shape == (1, 2, 4) and q.codes.shape == (1, 4, 1)
    assert q.scale.tolist() == [[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0]]]
    assert q.zero.tolist() == [[[100.0, 0.0, 1.0, 1.0], [0.0, 3.0, 1.0, 1.0]]]
    assert unpack(q.codes, 2).tolist() == [[[0, 0, 0, 0], [3, 3, 3, 3], [0, 3, 0, 0], [3, 0, 3, 3]]]
    assert torch.equal(dequantize(q), x)


def test_scales_are_stored_in_the_model_dtype_and_used_as_stored():
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    q = quantize(x, 4, group_size=32)
    assert q.scale.dtype == torch.bfloat16 and q.zero.dtype == torch.bfloat16
    codes = unpack(q.codes, 4).float().unflatten(-1, (2, 32))
    manual = codes * q.scale.float().unsqueeze(-1) + q.zero.float().unsqueeze(-1)
    assert torch.equal(dequantize(q, torch.float32), manual.flatten(-2))
    q2, x_hat = quantize(x, 4, group_size=32, return_dequantized=True)
    assert torch.equal(x_hat, dequantize(q2)) and torch.equal(q2.codes, q.codes)
    assert (dequantize(q) - x.float()).abs().max() <= q.scale.float().max() * 0.51 + 0.02


def test_requantizing_per_token_rows_is_exact():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    once = dequantize(quantize(x, 4, group_size=8))
    twice = dequantize(quantize(once, 4, group_size=8))
    assert torch.allclose(once, twice, atol=1e-6)


def test_stream_per_token_residual():
    s = QuantizedStream(1, 8, torch.float32, "cpu", bits=4, per_channel=False, group_size=8, symmetric=False, residual=2)
    # each row spans 15 in integer steps: exactly representable at 4 bits
    x = (torch.arange(5.0)[:, None] * 10 + torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 15])).unsqueeze(0)  # (1, 5, 8)
    s.append(x[:, :4])
    assert (s.n_quantized, s.tail.shape[1]) == (2, 2)
    s.append(x[:, 4:])
    assert (s.n_quantized, s.tail.shape[1]) == (3, 2)
    assert torch.equal(s.materialize()[:, 3:], x[:, 3:])  # the residual is exact
    assert torch.equal(s.materialize(), x)
    assert s.meter.value() == pytest.approx(0.0, abs=1e-6)


def test_stream_per_channel_waits_for_a_full_group():
    s = QuantizedStream(2, 8, torch.float32, "cpu", bits=2, per_channel=True, group_size=4, symmetric=False)
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3))
    s.append(x[:, :3])
    assert (s.n_quantized, s.tail.shape[1]) == (0, 3)
    s.append(x[:, 3:])
    assert (s.n_quantized, s.tail.shape[1]) == (4, 2)
    # codes 2 heads x 4 tokens x 8 channels / 4 per byte; scale and zero (2, 1 group, 8) float32; tail (2, 2, 8) float32
    assert sum(t.numel() * t.element_size() for t in s.tensors()) == 16 + 2 * 64 + 128


def test_error_meter_relative_frobenius():
    m = ErrorMeter("cpu")
    x = torch.tensor([3.0, 4.0])
    m.add(x, torch.tensor([3.0, 3.0]))
    assert m.value() == pytest.approx(1 / 5)
    m.add(torch.tensor([0.0, 5.0]))  # counted in the reference only
    assert m.value() == pytest.approx(1 / 50**0.5)
