"""An uploaded .npz is read within bounds (issue 24): each member's .npy header (dtype, shape) and
its unpacked size are checked before any array is read, so a small file that declares a huge
array is refused at once, in little memory, and nothing is unpickled.

Before this, a 65 KB npz of zeros took 320 MB of memory before it was refused (np.load reads
every array in full). Memory here is measured with tracemalloc, which numpy reports to."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from live_synthetic import make_trace

from kvviz.record import trace_reader
from kvviz.record.trace import ARRAY_FIELDS, Trace, TraceError
from kvviz.runs import store as run_store

MB = 1 << 20


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def meta_member() -> tuple[str, bytes]:
    t = make_trace()
    meta = {k: v for k, v in json.loads(t.to_json()).items() if k not in ARRAY_FIELDS}
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    return "meta.npy", buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def lie_about_size(data: bytes, member: str, size: int) -> bytes:
    """The zip with ``member``'s unpacked size rewritten (local header and central directory), as a
    crafted file would declare it: nothing has to be compressed to claim gigabytes."""
    raw = bytearray(data)
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        while at != -1:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if raw[name_at : name_at + len(name)] == name:
                raw[at + offset : at + offset + 4] = struct.pack("<I", size)
                break
            at = raw.find(signature, at + 4)
    return bytes(raw)


def measured(fn, *args):
    """(exception message, peak bytes traced, seconds)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn(*args)
    except TraceError as exc:
        message = str(exc)
    else:
        message = None
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return message, peak, seconds


def test_a_header_that_declares_gigabytes_is_refused_from_the_header():
    shape = (30, 3, 10_000_000)  # 3.6 GB of float32 declared, a few bytes held
    header = npy_header(shape)
    data = zip_of(dict([meta_member(), ("scores.npy", header + bytes(64))]))
    message, peak, seconds = measured(run_store.read_trace_file, "huge.npz", data)
    assert "huge.npz: trace.scores: its header declares 3433.2 MiB of data, the file holds 64 bytes" in message
    # the same file whose zip directory also claims 3.6 GB: refused by the limit on unpacked arrays
    lying = lie_about_size(data, "scores.npy", len(header) + 4 * 30 * 3 * 10_000_000)
    message, peak2, seconds2 = measured(run_store.read_trace_file, "huge.npz", lying)
    assert f"unpacks to more than {trace_reader.MAX_ARRAY_BYTES >> 20} MiB of arrays (trace.scores alone 3433.2 MiB)" in message
    assert len(data) < 2000 and max(peak, peak2) < 2 * MB and max(seconds, seconds2) < 0.5


def test_zeros_that_unpack_past_the_limit_are_refused_before_they_are_read(monkeypatch):
    """An honest array, 1000:1 compressed (the issue's case, at a tenth of the size)."""
    monkeypatch.setattr(trace_reader, "MAX_ARRAY_BYTES", 16 * MB)
    shape = (30, 3, 90_000)  # 32.4 MB of float32 zeros
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        name, meta = meta_member()
        zf.writestr(name, meta)
        with zf.open("scores.npy", "w") as f:
            f.write(npy_header(shape))
            for _ in range(30 * 3 * 90_000 * 4 // MB):
                f.write(bytes(MB))
            f.write(bytes(30 * 3 * 90_000 * 4 % MB))
    data = buf.getvalue()
    assert len(data) < 64_000  # about 1000:1
    message, peak, seconds = measured(run_store.read_trace_file, "zeros.npz", data)
    assert "unpacks to more than 16 MiB of arrays (trace.scores alone 30.9 MiB)" in message
    assert peak < 2 * MB and seconds < 0.5


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    data = zip_of(dict([meta_member(), ("entropy.npy", buf.getvalue())]))
    with pytest.raises(TraceError, match=r"t.npz: trace.entropy holds Python objects; kvviz never reads pickled data"):
        run_store.read_trace_file("t.npz", data)
    (tmp_path / "t.npz").write_bytes(data)
    with pytest.raises(TraceError, match="holds Python objects"):
        Trace.load(tmp_path / "t.npz")


@pytest.mark.parametrize("members, message", [
    ({"notes.npy": npy_header((2,)) + bytes(8)}, "trace: unknown field 'notes.npy' in the .npz file"),
    ({"scores.npy": npy_header((2, 2)) + bytes(16)}, "trace.scores: 2 dimensions, expected 3"),
    ({"entropy.npy": npy_header((4,), "<c8") + bytes(32)}, "trace.entropy: complex64 values; a trace's arrays hold numbers"),
    ({"entropy.npy": b"not an npy file at all"}, "trace.entropy: not a readable .npy array"),
])
def test_bad_members_are_named(members, message):
    data = zip_of(dict([meta_member()]) | members)
    with pytest.raises(TraceError) as info:
        run_store.read_trace_file("t.npz", data)
    assert message in str(info.value), str(info.value)


def test_not_a_zip_and_no_meta():
    with pytest.raises(TraceError, match="t.npz: The file is not a readable .npz archive"):
        run_store.read_trace_file("t.npz", b"PK\x03\x04 truncated")
    with pytest.raises(TraceError, match="has no meta"):
        run_store.read_trace_file("t.npz", zip_of({"entropy.npy": npy_header((4,)) + bytes(16)}))


def test_a_saved_trace_reads_back_within_the_limits(tmp_path):
    trace = make_trace()
    path = trace.save(tmp_path / "t.npz")
    back = run_store.read_trace_file("t.npz", path.read_bytes())
    assert back.tokens == trace.tokens and (back.evicted_at_step == trace.evicted_at_step).all()
    message, peak, _ = measured(Trace.load, path)
    assert message is None and peak < 2 * MB
