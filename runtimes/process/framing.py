"""Message framing on the host <-> child channel (a unix stream socket).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. JSON, not
pickle: the host parses what a possibly compromised child wrote, so nothing it reads may
carry behaviour. Values inside messages are in the wire format (`runtimes.wire.encode`; tags
become typed values when a frame is decoded). Both ends cap the frame size; the host parses
the child's frames with `runtimes.wire.loads_bounded` (node and depth caps too).

Messages (``"t"`` is the type):

- child -> host: ``ready`` {layers, cpu} once the pre-warmed child is confined and waiting;
  ``out`` {s, text} for output as the guest writes it (``s`` is ``stdout`` or ``stderr``);
  ``call`` {name, args, kwargs} for a capability call; ``done`` {outcome, cpu, cpu_total, maxrss,
  timings} (``timings`` only when the job asked: seconds per phase of the child's own work).
- host -> child: ``job`` {code, bytecode, limits, rlimits, cpu_timer, deadline, capabilities,
  secrets, inputs, session, raw, timings} (``bytecode``: the host-compiled program, base64 of `marshal`,
  or null and the child compiles ``code``; ``cpu_timer``: seconds of CPU before SIGPROF);
  ``ret`` {value} or ``fault`` {fault} answering a ``call``.
"""

from __future__ import annotations

import json
import os
import struct

from runtimes import wire

MAX_FRAME = 256 << 20
_HEADER = struct.Struct(">I")


class ChannelClosed(EOFError):
    """The other end closed the channel (or died)."""


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame cap")
    return _HEADER.pack(len(body)) + body


def decode(body: bytes, max_bytes: int | None = None) -> dict:
    """Parse one frame's body; with ``max_bytes``, as untrusted input within the wire caps
    (`runtimes.wire.ValueTooLarge` over them). Raises `ValueError` for a malformed frame."""
    text = body.decode("utf-8", "surrogatepass")
    try:
        message = wire.loads(text) if max_bytes is None else wire.loads_bounded(text, max_bytes=max_bytes)
    except wire.ValueTooLarge:
        raise
    except wire.WireError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


def write_message(fd: int, message: dict) -> None:
    """Write one frame to ``fd`` (blocking), all of it."""
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, max_frame: int = MAX_FRAME) -> dict:
    """Read one frame from ``fd`` (blocking)."""
    (size,) = _HEADER.unpack(_read_exact(fd, 4))
    if size > max_frame:
        raise ValueError(f"frame of {size} bytes exceeds the {max_frame}-byte cap")
    return decode(_read_exact(fd, size))
