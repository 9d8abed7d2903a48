#!/usr/bin/env python3
"""Writes the hostile safetensors corpus to tests/fixtures/hostile/safetensors/ (issue 17).

Plain Python, no dependencies. Each file breaks one rule of the format; the expected
one-line refusal is in tests/tests/hostile_inputs.rs.
"""
import json
import pathlib
import struct

out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hostile" / "safetensors"
out.mkdir(parents=True, exist_ok=True)


def write(name, header, data=b"", length=None):
    h = header if isinstance(header, bytes) else header.encode()
    n = len(h) if length is None else length
    (out / name).write_bytes(struct.pack("<Q", n) + h + data)


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


write("header_2pow40.safetensors", "{}", length=1 << 40)
write("header_past_end.safetensors", "{}", length=4096)
write("overlapping.safetensors", json.dumps({"a": entry(), "b": entry()}), b"\0" * 4)
write("reversed_offsets.safetensors", json.dumps({"a": entry(offsets=(4, 0))}), b"\0" * 4)
write("dtype_size_mismatch.safetensors", json.dumps({"a": entry("F64", (1,), (0, 4))}), b"\0" * 4)
write("dim_2pow63.safetensors", json.dumps({"a": entry(shape=(2**63 - 1, 4))}), b"\0" * 4)
write("not_utf8.safetensors", b'{"a\xff": 1}')
write("nested_1e5.safetensors", "[" * 100000 + "]" * 100000)
write(
    "duplicate_keys.safetensors",
    '{"a": %s, "a": %s}' % (json.dumps(entry()), json.dumps(entry())),
    b"\0" * 4,
)
write("negative_dim.safetensors", json.dumps({"a": entry(shape=(-1,))}), b"\0" * 4)
for p in sorted(out.iterdir()):
    print(f"{p.name}: {p.stat().st_size} bytes")
