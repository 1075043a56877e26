"""gguf_read: an independent GGUF v2/v3 reader for the NumPy reference.

Written from the public GGUF specification, sharing nothing with the C
loader, so that a bug in one is not silently repeated in the other.

    meta, tensors = read_gguf(path)

meta maps each key to a Python value (int, float, bool, str, or a list /
numpy array for GGUF arrays) plus "__version__", "__alignment__" and
"__data_offset__".  tensors maps each name to a GgufTensor that knows its
ggml type, its shape and its raw bytes; .array() dequantises it to a numpy
float32 array whose shape is ne reversed (ne[0] is the fastest dimension,
so a weight with ne = [in, out] becomes an array [out, in]).

Element types understood: F32, F16, BF16, Q8_0, Q4_0.  Everything is read
little-endian and checked against the file size.
"""

import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32 = range(7)
T_BOOL, T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(7, 13)

_SCALAR = {
    T_UINT8: np.dtype("<u1"), T_INT8: np.dtype("<i1"),
    T_UINT16: np.dtype("<u2"), T_INT16: np.dtype("<i2"),
    T_UINT32: np.dtype("<u4"), T_INT32: np.dtype("<i4"),
    T_FLOAT32: np.dtype("<f4"), T_BOOL: np.dtype("<u1"),
    T_UINT64: np.dtype("<u8"), T_INT64: np.dtype("<i8"),
    T_FLOAT64: np.dtype("<f8"),
}

# ggml tensor element types: id -> (name, values per block, bytes per block).
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30
GGML_TYPES = {
    GGML_F32: ("F32", 1, 4),
    GGML_F16: ("F16", 1, 2),
    GGML_Q4_0: ("Q4_0", 32, 18),
    GGML_Q8_0: ("Q8_0", 32, 34),
    GGML_BF16: ("BF16", 1, 2),
}


class GgufError(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reader over a bytes-like object."""

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n):
        if n < 0 or n > len(self.buf) - self.pos:
            raise GgufError("truncated file at offset %d (need %d bytes)" % (self.pos, n))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype, depth=0):
        if vtype in _SCALAR:
            dt = _SCALAR[vtype]
            v = np.frombuffer(self.take(dt.itemsize), dtype=dt)[0]
            if vtype == T_BOOL:
                return bool(v)
            if vtype in (T_FLOAT32, T_FLOAT64):
                return float(v)
            return int(v)
        if vtype == T_STRING:
            return self.string()
        if vtype == T_ARRAY:
            if depth > 8:
                raise GgufError("arrays nested too deeply")
            etype = self.u32()
            count = self.u64()
            if etype in _SCALAR:
                dt = _SCALAR[etype]
                if count > (len(self.buf) - self.pos) // dt.itemsize:
                    raise GgufError("array of %d elements runs past the end" % count)
                arr = np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()
                return arr.astype(bool) if etype == T_BOOL else arr
            if count > len(self.buf) - self.pos:  # every element is at least a byte
                raise GgufError("array of %d elements runs past the end" % count)
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise GgufError("unknown metadata value type %d" % vtype)


class GgufTensor:
    def __init__(self, name, ne, ggml_type, raw):
        self.name = name
        self.ne = tuple(ne)  # ggml order: ne[0] is the fastest dimension
        self.type = ggml_type
        self.raw = raw  # exactly the tensor's bytes
        self.shape = tuple(reversed(self.ne))  # numpy (row-major) order

    @property
    def type_name(self):
        return GGML_TYPES[self.type][0]

    def array(self):
        """Dequantised float32 array of shape ne reversed."""
        return dequantize(self.raw, self.type, self.ne).reshape(self.shape)


def _fp16(u16):
    return u16.view("<f2").astype(np.float32)


def dequantize(raw, ggml_type, ne):
    """Flat float32 array of prod(ne) values from the raw bytes of a tensor."""
    n = int(np.prod(ne, dtype=np.int64)) if len(ne) else 1
    buf = np.frombuffer(raw, dtype=np.uint8)
    if ggml_type == GGML_F32:
        return buf.view("<f4").astype(np.float32)
    if ggml_type == GGML_F16:
        return buf.view("<f2").astype(np.float32)
    if ggml_type == GGML_BF16:
        # bf16 is the top half of an IEEE single.
        return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if ggml_type == GGML_Q8_0:
        blocks = buf.reshape(n // 32, 34)
        d = _fp16(blocks[:, 0:2].copy().view("<u2"))  # [nb, 1]
        q = blocks[:, 2:].view(np.int8).astype(np.float32)  # [nb, 32]
        return (d * q).reshape(n)
    if ggml_type == GGML_Q4_0:
        blocks = buf.reshape(n // 32, 18)
        d = _fp16(blocks[:, 0:2].copy().view("<u2"))  # [nb, 1]
        qs = blocks[:, 2:]  # [nb, 16]
        lo = (qs & 15).astype(np.int8) - 8  # values 0..15 of the block
        hi = (qs >> 4).astype(np.int8) - 8  # values 16..31
        q = np.concatenate([lo, hi], axis=1).astype(np.float32)
        return (d * q).reshape(n)
    raise GgufError("unsupported ggml type %d" % ggml_type)


def tensor_nbytes(ggml_type, ne):
    if ggml_type not in GGML_TYPES:
        raise GgufError("unsupported ggml type %d" % ggml_type)
    _, blck, size = GGML_TYPES[ggml_type]
    if len(ne) and ne[0] % blck:
        raise GgufError("row of %d elements is not a multiple of the block size %d"
                        % (ne[0], blck))
    n = 1
    for v in ne:
        n *= v
    return n // blck * size


def read_gguf(path):
    """Parse a GGUF v2/v3 file: (metadata dict, {name: GgufTensor})."""
    with open(path, "rb") as f:
        data = f.read()
    cur = _Cursor(memoryview(data))
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise GgufError("%s: not a GGUF file" % path)
    version = cur.u32()
    if version not in (2, 3):
        raise GgufError("%s: GGUF version %d not supported (2 or 3)" % (path, version))
    n_tensors = cur.u64()
    n_kv = cur.u64()

    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.u32())

    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > 4:
            raise GgufError("tensor %s has %d dimensions" % (name, n_dims))
        ne = [cur.u64() for _ in range(n_dims)]
        ttype = cur.u32()
        offset = cur.u64()
        infos.append((name, ne, ttype, offset))

    alignment = int(meta.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GgufError("alignment %d is not a power of two" % alignment)
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    meta["__version__"] = version
    meta["__alignment__"] = alignment
    meta["__data_offset__"] = data_offset

    tensors = {}
    for name, ne, ttype, offset in infos:
        nbytes = tensor_nbytes(ttype, ne)
        if offset % alignment:
            raise GgufError("tensor %s offset %d is not aligned" % (name, offset))
        start = data_offset + offset
        if start > len(data) or nbytes > len(data) - start:
            raise GgufError("tensor %s runs past the end of the file" % name)
        if name in tensors:
            raise GgufError("duplicate tensor %s" % name)
        tensors[name] = GgufTensor(name, ne, ttype, data[start:start + nbytes])
    return meta, tensors


def _main(argv):
    if len(argv) != 2:
        print("usage: gguf_read.py FILE.gguf", file=sys.stderr)
        return 2
    meta, tensors = read_gguf(argv[1])
    for k, v in meta.items():
        if isinstance(v, (list, np.ndarray)) and len(v) > 8:
            v = "[%d items] %s ..." % (len(v), list(v[:4]))
        print("%s = %s" % (k, v))
    for t in tensors.values():
        print("%-28s %-5s ne=%s" % (t.name, t.type_name, list(t.ne)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
