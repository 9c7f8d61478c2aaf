"""The zip container of torch checkpoints (and .npz): reading the directory and where each
member's bytes start, and writing STORED members aligned to 64 bytes, zip64 when needed.

Members are never decompressed here.  A reader gets (name, data offset, size, method) per
member, checked to lie inside the file, and maps the bytes itself.
"""

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass

from ..errors import FormatError

ZIP64_LIMIT = 0xFFFFFFFF
ALIGN = 64
_LOCAL = struct.Struct("<4sHHHHHIIIHH")        # 30 bytes: local file header
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes: central directory header
_EOCD = struct.Struct("<4sHHHHIIH")             # 22 bytes
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")         # 56 bytes
_LOCATOR = struct.Struct("<4sIQI")              # 20 bytes
assert (_LOCAL.size, _CENTRAL.size, _EOCD.size, _EOCD64.size, _LOCATOR.size) == \
    (30, 46, 22, 56, 20)
_DOS_DATE = (0 << 9) | (1 << 5) | 1             # 1980-01-01: fixed, so output is deterministic


@dataclass(frozen=True)
class Member:
    name: str
    offset: int        # of the data, in the file
    size: int          # uncompressed size
    csize: int         # stored size
    method: int        # 0 stored, 8 deflated
    crc: int


def read_members(f, file_size: int, what: str, buf=None) -> dict:
    """{name: Member} of the zip open as binary file ``f`` (FormatError when malformed);
    ``buf``, a map of the file, saves a read per member."""
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            struct.error, NotImplementedError) as exc:
        raise FormatError(f"{what}: not a readable zip archive ({exc})") from None
    members, spans = {}, []
    for info in infos:
        if info.flag_bits & 0x1:
            raise FormatError(f"{what}: member {info.filename} is encrypted")
        if info.header_offset < 0 or info.header_offset + _LOCAL.size > file_size:
            raise FormatError(f"{what}: member {info.filename} points outside the file")
        if buf is not None:
            head = buf[info.header_offset:info.header_offset + _LOCAL.size]
        else:
            f.seek(info.header_offset)
            head = f.read(_LOCAL.size)
        if len(head) != _LOCAL.size or head[:4] != b"PK\x03\x04":
            raise FormatError(f"{what}: member {info.filename} has no local header "
                              "(truncated or corrupt archive)")
        fields = _LOCAL.unpack(head)
        offset = info.header_offset + _LOCAL.size + fields[9] + fields[10]
        if offset + info.compress_size > file_size:
            raise FormatError(f"{what}: member {info.filename} ({info.compress_size} bytes) "
                              f"runs past the end of the file ({file_size} bytes); "
                              "the file is truncated")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FormatError(f"{what}: member {info.filename} uses compression "
                              f"{info.compress_type}; only stored or deflated are read")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise FormatError(f"{what}: member {info.filename} is stored but its sizes differ")
        members[info.filename] = Member(info.filename, offset, info.file_size,
                                        info.compress_size, info.compress_type, info.CRC)
        spans.append((info.header_offset, offset + info.compress_size, info.filename))
    # Members never share bytes in a real archive; entries that do are the "overlapping
    # files" zip bomb (one deflated stream listed thousands of times).
    spans.sort()
    for (_s0, end0, name0), (start1, _e1, name1) in zip(spans, spans[1:]):
        if start1 < end0:
            raise FormatError(f"{what}: members {name0} and {name1} overlap (a zip bomb?)")
    if len(members) != len(infos):
        raise FormatError(f"{what}: a member name appears twice in the zip directory")
    return members


# Deflate cannot expand more than about 1032:1; a member that claims more is a bomb.
MAX_RATIO = 1032


def read_member_bytes(buf, m: Member, what: str, limit: int) -> bytes:
    """The (decompressed) bytes of a member, at most ``limit`` bytes."""
    if m.size > limit:
        raise FormatError(f"{what}: member {m.name} declares {m.size} bytes, more than the "
                          f"{limit} allowed")
    raw = buf[m.offset:m.offset + m.csize]
    if m.method == zipfile.ZIP_STORED:
        data = bytes(raw)
    else:
        if m.size > MAX_RATIO * max(m.csize, 1):
            raise FormatError(f"{what}: member {m.name} claims a compression ratio above "
                              f"{MAX_RATIO}:1 (a zip bomb?)")
        d = zlib.decompressobj(-15)
        try:
            data = d.decompress(raw, m.size + 1)
        except zlib.error as exc:
            raise FormatError(f"{what}: member {m.name} does not decompress ({exc})") from None
    if len(data) != m.size:
        raise FormatError(f"{what}: member {m.name} has {len(data)} bytes, its header says "
                          f"{m.size}")
    if zlib.crc32(data) != m.crc:
        raise FormatError(f"{what}: member {m.name} fails its CRC check")
    return data


def read_member_head(buf, m: Member, what: str, n: int) -> bytes:
    """The first ``n`` (decompressed) bytes of a member, without its CRC check."""
    raw = buf[m.offset:m.offset + m.csize]
    if m.method == zipfile.ZIP_STORED:
        return bytes(raw[:n])
    try:
        return zlib.decompressobj(-15).decompress(raw, n)
    except zlib.error as exc:
        raise FormatError(f"{what}: member {m.name} does not decompress ({exc})") from None


class ZipWriter:
    """Write STORED members whose data starts on a 64-byte boundary (torch's layout: the
    padding is a local-header extra field 'FB' filled with 'Z')."""

    CHUNK = 8 << 20

    def __init__(self, f, *, zip64_limit=ZIP64_LIMIT):
        self.f = f
        self.limit = zip64_limit
        self.entries = []
        self.pos = f.tell()

    def add(self, name: str, data) -> int:
        """Append a member; ``data`` is bytes or a 1-D uint8 array (written without a
        copy).  Returns its CRC-32."""
        return self.add_parts(name, [data])

    def add_parts(self, name: str, parts) -> int:
        """Append a member made of several byte buffers, in order."""
        parts = [memoryview(p).cast("B") for p in parts]
        size = sum(p.nbytes for p in parts)
        bname = name.encode("utf-8")
        flags = 0x0800 if not name.isascii() else 0
        big = size >= self.limit
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        pad = -(self.pos + _LOCAL.size + len(bname) + len(extra)) % ALIGN
        if pad:
            if pad < 4:
                pad += ALIGN
            extra += b"FB" + struct.pack("<H", pad - 4) + b"Z" * (pad - 4)
        lho = self.pos
        head_size = 0xFFFFFFFF if big else size
        # CRC is patched once the data has streamed through.
        header = _LOCAL.pack(b"PK\x03\x04", 45 if big else 20, flags, 0, 0, _DOS_DATE,
                             0, head_size, head_size, len(bname), len(extra))
        self.f.write(header + bname + extra)
        crc = 0
        for mv in parts:
            for i in range(0, mv.nbytes, self.CHUNK):
                chunk = mv[i:i + self.CHUNK]
                crc = zlib.crc32(chunk, crc)
                self.f.write(chunk)
        end = lho + len(header) + len(bname) + len(extra) + size
        self.f.seek(lho + 14)
        self.f.write(struct.pack("<I", crc))
        self.f.seek(end)
        self.pos = end
        self.entries.append((bname, flags, crc, size, lho))
        return crc

    def close(self):
        cd_start = self.pos
        out = bytearray()
        for bname, flags, crc, size, lho in self.entries:
            extra = b""
            fields = []
            if size >= self.limit:
                fields += [size, size]
            if lho >= self.limit:
                fields.append(lho)
            if fields:
                extra = struct.pack("<HH", 1, 8 * len(fields)) + struct.pack(
                    f"<{len(fields)}Q", *fields)
            s = 0xFFFFFFFF if size >= self.limit else size
            o = 0xFFFFFFFF if lho >= self.limit else lho
            v = 45 if fields else 20
            out += _CENTRAL.pack(b"PK\x01\x02", v, v, flags, 0, 0, _DOS_DATE, crc, s, s,
                                 len(bname), len(extra), 0, 0, 0, 0, o)
            out += bname + extra
        cd_size = len(out)
        n = len(self.entries)
        zip64 = (n >= 0xFFFF or cd_start >= self.limit or cd_size >= self.limit
                 or any(size >= self.limit or lho >= self.limit
                        for _b, _f, _c, size, lho in self.entries))
        if zip64:
            eocd64_at = cd_start + cd_size
            out += _EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_start)
            out += _LOCATOR.pack(b"PK\x06\x07", 0, eocd64_at, 1)
        out += _EOCD.pack(b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                          min(cd_size, 0xFFFFFFFF) if not zip64 else 0xFFFFFFFF,
                          0xFFFFFFFF if zip64 else cd_start, 0)
        self.f.write(out)
        self.pos += len(out)


def file_size(f) -> int:
    return os.fstat(f.fileno()).st_size
