"""Length-prefixed frames over raw file descriptors (pool <-> worker, judge <-> candidate).

A frame is a 4-byte big-endian length and that many bytes. Reads use os.read/os.readv on the
descriptor directly (no buffered file objects), so a forked child never inherits half-read buffers
and the worker can read a frame straight into a buffer it later wipes.
"""

from __future__ import annotations

import json
import os
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 << 20


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed frame, or hung up mid-frame."""


def write_frame(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact_into(fd: int, buf, n: int) -> None:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError(f"peer closed after {got} of {n} bytes")
        got += k


def read_frame_len(fd: int, limit: int = MAX_FRAME) -> int | None:
    """Read a frame header; None on a clean end of stream."""
    head = bytearray(4)
    view = memoryview(head)
    got = 0
    while got < 4:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            if got == 0:
                return None
            raise EOFError("peer closed inside a frame header")
        got += k
    (n,) = _HEADER.unpack(head)
    if n > limit:
        raise ProtocolError(f"frame of {n} bytes exceeds the {limit}-byte limit")
    return n


def read_frame(fd: int, limit: int = MAX_FRAME) -> bytes | None:
    n = read_frame_len(fd, limit)
    if n is None:
        return None
    buf = bytearray(n)
    read_exact_into(fd, buf, n)
    return bytes(buf)


def write_json(fd: int, obj) -> None:
    write_frame(fd, json.dumps(obj, separators=(",", ":")).encode())


def read_json(fd: int, limit: int = MAX_FRAME):
    data = read_frame(fd, limit)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ProtocolError(f"frame is not JSON: {e}") from None
