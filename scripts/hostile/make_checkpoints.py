#!/usr/bin/env python3
"""Writes hostile (and a few benign) torch.save checkpoints for the reader's tests.

No torch needed: the pickle opcodes are written by hand (protocol 2, as torch.save
writes them) and zipped in the layout torch.save uses: archive/data.pkl,
archive/data/<key>, archive/version and archive/byteorder. The cases whose zip headers
lie (a forged size, a zip bomb) are zipped by the small writer below instead of
`zipfile`, which would write honest headers.

Usage: python3 scripts/hostile/make_checkpoints.py [OUT_DIR]
(default: tests/fixtures/hostile/checkpoints). The output is deterministic.
"""
import io
import os
import pickle as P
import struct
import sys
import zipfile
import zlib

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "tests", "fixtures", "hostile", "checkpoints"
)
MIB = 1 << 20


# ---------------------------------------------------------------- pickle opcodes


def s(text):
    """A str (BINUNICODE)."""
    b = text.encode()
    return P.BINUNICODE + struct.pack("<I", len(b)) + b


def i(n):
    """An int: BININT when it fits in 32 bits, LONG1 otherwise."""
    if -(1 << 31) <= n < (1 << 31):
        return P.BININT + struct.pack("<i", n)
    b = n.to_bytes(8, "little", signed=True)
    return P.LONG1 + bytes([len(b)]) + b


def tup(*items):
    return P.MARK + b"".join(items) + P.TUPLE


def ints(xs):
    return tup(*[i(x) for x in xs])


def glob(module, name):
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def dict_(*pairs):
    """A dict from (key opcode bytes, value opcode bytes) pairs."""
    body = b"".join(k + v for k, v in pairs)
    return P.EMPTY_DICT + (P.MARK + body + P.SETITEMS if pairs else b"")


def tensor(key, numel, offset, size, stride, cls="FloatStorage"):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    storage = tup(s("storage"), glob("torch", cls), s(key), s("cpu"), i(numel)) + P.BINPERSID
    hooks = glob("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE
    args = tup(storage, i(offset), ints(size), ints(stride), P.NEWFALSE, hooks)
    return glob("torch._utils", "_rebuild_tensor_v2") + args + P.REDUCE


def pkl(body):
    return P.PROTO + b"\x02" + body + P.STOP


def floats(*xs):
    return struct.pack(f"<{len(xs)}f", *xs)


# ---------------------------------------------------------------- zip writers


def torch_zip(name, data_pkl, storages=(), pkl_method=zipfile.ZIP_STORED):
    """The archive torch.save writes, with honest headers (zipfile)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:

        def put(entry, data, method=zipfile.ZIP_STORED):
            info = zipfile.ZipInfo("archive/" + entry, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)

        put("data.pkl", data_pkl, pkl_method)
        put("byteorder", b"little")
        for key, data in storages:
            put(f"data/{key}", data)
        put("version", b"3\n")
    write(name, buf.getvalue())


def deflate_chunks(chunks):
    """Raw deflate of an iterable of byte strings; returns (payload, crc, size)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out, crc, size = bytearray(), 0, 0
    for chunk in chunks:
        out += c.compress(chunk)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    out += c.flush()
    return bytes(out), crc, size


def zeros(n, chunk=MIB):
    while n > 0:
        k = min(n, chunk)
        yield bytes(k)
        n -= k


def raw_zip(name, entries):
    """A zip whose headers say what each entry dict says: name, payload (as stored),
    method (0 stored, 8 deflate), crc, csize, usize, zip64 (sizes in a zip64 extra field)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        fname = e["name"].encode()
        usize, csize = e["usize"], e["csize"]
        if e.get("zip64"):
            extra = struct.pack("<HHQQ", 1, 16, usize, csize)
            usize32 = csize32 = 0xFFFFFFFF
            version = 45
        else:
            extra = b""
            usize32, csize32 = usize, csize
            version = 20
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, version, 0, e["method"], 0, 0x21, e["crc"],
            csize32, usize32, len(fname), len(extra),
        )
        out += fname + extra + e["payload"]
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, 0, e["method"], 0, 0x21,
            e["crc"], csize32, usize32, len(fname), len(extra), 0, 0, 0, 0, offset,
        )
        central += fname + extra
    cd_offset = len(out)
    out += central
    n = len(entries)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    write(name, bytes(out))


def stored(name, data):
    return dict(name=name, payload=data, method=0, crc=zlib.crc32(data), csize=len(data), usize=len(data))


def deflated(name, chunks, declared=None, zip64=False):
    payload, crc, size = deflate_chunks(chunks)
    return dict(
        name=name, payload=payload, method=8, crc=crc, csize=len(payload),
        usize=size if declared is None else declared, zip64=zip64,
    )


def write(name, data):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- the cases


def main():
    six = floats(1, 2, 3, 4, 5, 6)

    # Benign: a plain state_dict of a [2, 3] float tensor and views of its storage.
    torch_zip(
        "benign_state_dict.pt",
        pkl(dict_(
            (s("w"), tensor("0", 6, 0, [2, 3], [3, 1])),
            (s("w.t"), tensor("0", 6, 0, [3, 2], [1, 3])),
            (s("row"), tensor("0", 6, 3, [3], [1])),
            # Overlapping: each row is the same three elements (an `expand`).
            (s("expand"), tensor("0", 6, 0, [4, 3], [0, 1])),
        )),
        [("0", six)],
    )
    # Benign: a Lightning-style wrapper whose hyper-parameters repeat one 1 MB string
    # 8000 times through the memo ({'hparams': [s] * 8000, 'state_dict': {...}}): read
    # by sharing, it costs 1 MB, not 8 GB.
    big = "x" * MIB
    memo_list = P.EMPTY_LIST + P.MARK + s(big) + P.BINPUT + b"\x00" + (P.BINGET + b"\x00") * 7999 + P.APPENDS
    torch_zip(
        "benign_memo_shared.ckpt",
        pkl(dict_(
            (s("hparams"), memo_list),
            (s("state_dict"), dict_((s("w"), tensor("0", 6, 0, [6], [1])))),
        )),
        [("0", six)],
        pkl_method=zipfile.ZIP_DEFLATED,
    )

    # A dict that holds itself under `state_dict` (torch.load loads it).
    torch_zip(
        "self_reference.pt",
        pkl(P.EMPTY_DICT + P.BINPUT + b"\x00" + s("state_dict") + P.BINGET + b"\x00" + P.SETITEM),
    )

    # Nested a million deep (deflated: a few KB on disk).
    depth = 1_000_000
    torch_zip(
        "deep_lists.pt",
        pkl(P.EMPTY_LIST * depth + P.APPEND * (depth - 1)),
        pkl_method=zipfile.ZIP_DEFLATED,
    )
    torch_zip(
        "deep_tuples.pt",
        pkl(P.EMPTY_TUPLE + P.TUPLE1 * depth),
        pkl_method=zipfile.ZIP_DEFLATED,
    )
    # {'state_dict': {'state_dict': ... {} ...}}: the search for the state_dict walks it.
    key = s("state_dict") + P.BINPUT + b"\x00"
    torch_zip(
        "deep_dicts.pt",
        pkl(P.EMPTY_DICT + key + (P.EMPTY_DICT + P.BINGET + b"\x00") * (depth - 1) + P.EMPTY_DICT
            + P.SETITEM * depth),
        pkl_method=zipfile.ZIP_DEFLATED,
    )

    # [s] * 8000 with a 1 MB string s, under a key that is not a state_dict.
    torch_zip(
        "memo_bomb.pt",
        pkl(dict_((s("hparams"), memo_list))),
        pkl_method=zipfile.ZIP_DEFLATED,
    )

    # A stride-0 view of a 4-byte storage declaring 2^29 elements (2 GiB if copied).
    torch_zip(
        "stride0_view.pt",
        pkl(dict_((s("w"), tensor("0", 1, 0, [1 << 29], [0])))),
        [("0", floats(7))],
    )

    # Malformed layouts.
    torch_zip(
        "offset_past_end.pt",
        pkl(dict_((s("w"), tensor("0", 6, 10, [2], [1])))),
        [("0", six)],
    )
    torch_zip(
        "negative_size.pt",
        pkl(dict_((s("w"), tensor("0", 6, 0, [-1, 3], [3, 1])))),
        [("0", six)],
    )
    torch_zip(
        "stride_overflow.pt",
        pkl(dict_((s("w"), tensor("0", 6, 0, [1 << 31, 2], [1 << 40, 1 << 40])))),
        [("0", six)],
    )
    torch_zip(
        "numel_overflow.pt",
        pkl(dict_((s("w"), tensor("0", 6, 0, [1 << 40, 1 << 40], [0, 0])))),
        [("0", six)],
    )
    torch_zip(
        "size_stride_mismatch.pt",
        pkl(dict_((s("w"), tensor("0", 6, 0, [2, 3], [1])))),
        [("0", six)],
    )
    # The pickle says the storage has 2^28 floats; its entry holds 24 bytes.
    torch_zip(
        "storage_numel_mismatch.pt",
        pkl(dict_((s("w"), tensor("0", 1 << 28, 0, [6], [1])))),
        [("0", six)],
    )
    torch_zip(
        "missing_storage.pt",
        pkl(dict_((s("w"), tensor("7", 6, 0, [6], [1])))),
        [("0", six)],
    )
    torch_zip("garbage_pickle.pt", pkl(b"\xff\xfe"))

    # Truncated: the benign file cut in half (no central directory).
    with open(os.path.join(OUT, "benign_state_dict.pt"), "rb") as f:
        whole = f.read()
    write("truncated.pt", whole[: len(whole) // 2])

    # Zip64 headers declaring 2^40 and 2^63 bytes for a tiny storage entry.
    sd_tiny = pkl(dict_((s("w"), tensor("0", 1 << 38, 0, [6], [1]))))
    base = [stored("archive/data.pkl", sd_tiny), stored("archive/byteorder", b"little")]
    raw_zip("zip64_2pow40.pt", base + [deflated("archive/data/0", [six], declared=1 << 40, zip64=True)])
    sd_6 = pkl(dict_((s("w"), tensor("0", 6, 0, [6], [1]))))
    raw_zip(
        "zip64_2pow63.pt",
        [stored("archive/data.pkl", sd_6), stored("archive/byteorder", b"little"),
         deflated("archive/data/0", [six], declared=1 << 63, zip64=True)],
    )

    # Zip bombs: 128 MiB of zeros deflated to ~130 KB; the default budget for such a
    # file is about 64.5 MiB. Each comes with an honest header (refused before reading)
    # and with a header that declares 24 bytes (stopped while decompressing).
    bomb = 128 * MIB
    raw_zip(
        "zipbomb_storage.pt",
        [stored("archive/data.pkl", pkl(dict_((s("w"), tensor("0", bomb // 4, 0, [6], [1]))))),
         stored("archive/byteorder", b"little"),
         deflated("archive/data/0", zeros(bomb))],
    )
    raw_zip(
        "zipbomb_storage_lying.pt",
        [stored("archive/data.pkl", sd_6), stored("archive/byteorder", b"little"),
         deflated("archive/data/0", zeros(bomb), declared=24)],
    )
    # data.pkl: a valid pickle head followed by 128 MiB of zeros.
    head = P.PROTO + b"\x02" + P.EMPTY_DICT
    raw_zip(
        "zipbomb_pickle.pt",
        [deflated("archive/data.pkl", [head] + list(zeros(bomb))), stored("archive/byteorder", b"little")],
    )
    raw_zip(
        "zipbomb_pickle_lying.pt",
        [deflated("archive/data.pkl", [head] + list(zeros(bomb)), declared=64),
         stored("archive/byteorder", b"little")],
    )


if __name__ == "__main__":
    main()
