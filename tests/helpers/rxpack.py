"""A packer the suite builds: shared objects encrypted behind a self-decrypting stub (rxpack_stub.c).

    packed = pack(stub_bytes, [librandomx, payload])

Layout: the stub's ELF, then each object XORed with an xorshift32 keystream (seeded from a
random key and its index), then one ``(offset, size)`` pair per object and the trailer
``(magic, count, key)``. The stub decrypts each into a memfd, ``dlopen``s it (RTLD_GLOBAL, in
order) and calls ``run()`` of the last. On disk the packed file holds none of the objects'
bytes in the clear: a file scan sees the stub and noise.
"""
from __future__ import annotations

import os
import struct

MAGIC = 0x31B7C0DE5EEDF00D
_MASK = 0xFFFFFFFF



def _xor(data: bytes, seed: int) -> bytes:
    s = seed & _MASK
    out = bytearray(len(data))
    for j, b in enumerate(data):
        s ^= (s << 13) & _MASK
        s ^= s >> 17
        s ^= (s << 5) & _MASK
        out[j] = b ^ (s & 0xFF)
    return bytes(out)


def pack(stub: bytes, objects: list[bytes], key: int | None = None) -> bytes:
    key = int.from_bytes(os.urandom(4), "little") | 1 if key is None else key
    out = bytearray(stub)
    entries = []
    for i, obj in enumerate(objects):
        seed = key ^ ((0x9E3779B9 * (i + 1)) & _MASK)
        entries.append((len(out), len(obj)))
        out += _xor(obj, seed)
    for off, size in entries:
        out += struct.pack("<QQ", off, size)
    out += struct.pack("<QII", MAGIC, len(objects), key)
    return bytes(out)
