"""The hash chain of a JSONL record file: sealing one line, and finding where a file's chain ends."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox.audit._keys import key_id
from sandbox.audit._records import canonical
from sandbox.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

GENESIS = "0" * 64


def seal(record: Mapping[str, Any], *, seq: int, prev: str, key: Ed25519PrivateKey | None) -> tuple[bytes, str]:
    """One chained, signed JSONL line (without the newline) and its hash."""
    body = canonical({"prev": prev, "record": record, "seq": seq})
    digest = hashlib.sha256(body).hexdigest()
    signature = base64.b64encode(key.sign(body)).decode("ascii") if key is not None else None
    kid = key_id(key.public_key()) if key is not None else None
    line = canonical({"hash": digest, "key": kid, "prev": prev, "record": record, "seq": seq, "sig": signature})
    return line, digest


def tail_state(fh: Any) -> tuple[int, str]:
    """(next seq, hash of the last line) of an open binary file."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return 0, GENESIS
    position, chunk, data = end, 4096, b""
    while position > 0:
        step = min(chunk, position)
        position -= step
        fh.seek(position)
        data = fh.read(step) + data
        if data.rstrip(b"\n").count(b"\n") >= 1:
            break
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        return int(entry["seq"]) + 1, str(entry["hash"])
    except Exception:
        raise ConfigurationError(f"{getattr(fh, 'name', 'record file')}: the last line is not a record; run `sandbox verify`") from None
