"""`verify`: check a JSONL record file offline and name its first bad line."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandbox.audit._chain import GENESIS
from sandbox.audit._keys import key_id, load_public_key
from sandbox.audit._records import RunRecord, canonical
from sandbox.audit._summary import printable


@dataclass(frozen=True)
class VerifyReport:
    """The result of `verify`. ``bad_line`` is 1-based; ``head`` the hash of the last good line."""

    ok: bool
    records: int
    head: str
    bad_line: int | None = None
    run_id: str | None = None
    problem: str | None = None
    signed: int = 0
    """Good lines that carry a signature."""
    key_id: str | None = None
    """The key whose signatures were checked; None when none were (no key given)."""

    @property
    def signatures(self) -> Literal["verified", "unsigned", "unchecked"]:
        """``verified`` with a key (every line signed by it), ``unsigned`` when no line carries
        a signature, ``unchecked`` when lines are signed but no key was given."""
        if self.key_id is not None:
            return "verified"
        return "unsigned" if self.signed == 0 else "unchecked"

    def __str__(self) -> str:
        if self.ok:
            trust = {
                "verified": f"signatures verified (key {self.key_id})",
                "unsigned": "unsigned",
                "unchecked": f"{self.signed} signed record(s), signatures not checked (no public key given)",
            }[self.signatures]
            return f"ok: {self.records} record(s), chain intact, {trust}, head {self.head}"
        run = f" (run {self.run_id})" if self.run_id else ""
        return printable(f"bad record at line {self.bad_line}{run}: {self.problem}")


def verify(
    path: str | os.PathLike[str], public_key: Any | None, *, expected_head: str | None = None
) -> VerifyReport:
    """Check a JSONL record file: canonical form, hashes, the chain and (with a key) signatures.

    Returns a `VerifyReport` naming the first bad line: one whose bytes were altered, that
    follows a removed line, or that is out of order. ``public_key=None`` checks the chain
    only (and accepts unsigned lines). ``expected_head`` also detects lines cut off the end.
    """
    key = load_public_key(public_key) if public_key is not None else None
    kid = key_id(key) if key is not None else None
    prev, count, signed = GENESIS, 0, 0
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        def bad(problem: str, run_id: str | None = None) -> VerifyReport:
            return VerifyReport(False, count, prev, number, run_id, problem, signed, kid)

        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bad("not a valid JSON line (altered or truncated)")
        if not isinstance(entry, dict) or set(entry) != {"hash", "key", "prev", "record", "seq", "sig"}:
            return bad("not a run-record line (unexpected fields)")
        record = entry["record"]
        run_id = record.get("run_id") if isinstance(record, dict) else None
        run_id = run_id if isinstance(run_id, str) else None
        try:
            exact = canonical(entry) == raw
        except ValueError:
            exact = False
        if not exact:
            return bad("bytes differ from the canonical form (altered)", run_id)
        body = canonical({"prev": entry["prev"], "record": record, "seq": entry["seq"]})
        if hashlib.sha256(body).hexdigest() != entry["hash"]:
            return bad("content does not match its hash (altered)", run_id)
        if entry["seq"] != count:
            return bad(f"sequence number {entry['seq']!r} where {count} was expected: "
                       "a record before it was removed or records were reordered", run_id)
        if entry["prev"] != prev:
            return bad("does not chain to the line before it: a record was removed or reordered", run_id)
        if key is not None:
            if not isinstance(entry["sig"], str):
                return bad("unsigned", run_id)
            if entry["key"] != kid:
                return bad(f"signed by key {entry['key']!r}, not by the given key {kid}", run_id)
            try:
                key.verify(base64.b64decode(entry["sig"], validate=True), body)
            except Exception:
                return bad("signature does not verify", run_id)
        try:
            RunRecord.model_validate(record)
        except Exception:
            return bad("record does not have the run-record shape", run_id)
        prev, count = entry["hash"], count + 1
        signed += entry["sig"] is not None
    if expected_head is not None and prev != expected_head:
        return VerifyReport(False, count, prev, count + 1, None,
                            f"the chain ends at {prev[:16]}..., not at the expected head {expected_head[:16]}...: "
                            "records were removed from the end")
    return VerifyReport(True, count, prev, signed=signed, key_id=kid)
