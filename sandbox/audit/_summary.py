"""Reading record files and summarising runs for people (`sandbox audit`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timezone

from sandbox.audit._records import RunRecord


def read_records(path: str | os.PathLike[str]) -> Iterator[RunRecord]:
    """The records in a JSONL file (chained lines or bare records), without verifying them."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                data = json.loads(line)
                yield RunRecord.model_validate(data["record"] if "record" in data and "seq" in data else data)


def summarize(record: RunRecord) -> str:
    """A readable summary of one run: who, what was allowed, what was called, what was denied."""
    r = record
    who = r.principal.describe() if r.principal else "anonymous"
    layers = ", ".join(r.layers) or "none"
    lines = [
        f"run {r.run_id}  {r.started_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        + (f"  session {r.session_id}" if r.session_id else ""),
        f"  who:      {who}",
        f"  where:    {r.runtime} (isolation {r.isolation}; layers {layers})",
        f"  code:     sha256 {r.code_sha256[:16]}... ({r.code_bytes} bytes)",
        f"  allowed:  {', '.join(r.capabilities) or 'no capabilities'}" + (f"  under {r.policy}" if r.policy else ""),
    ]
    if r.secrets:
        parts = []
        for s in r.secrets:
            scope = []
            if s.capabilities:
                scope.append("for " + ",".join(s.capabilities))
            if s.hosts:
                scope.append("to " + ",".join(s.hosts))
            if s.ttl_seconds is not None:
                scope.append(f"ttl {s.ttl_seconds:g}s")
            if s.max_uses is not None:
                scope.append(f"{s.max_uses} uses")
            parts.append(s.name + (f" ({'; '.join(scope)})" if scope else ""))
        lines.append(f"  secrets:  {', '.join(parts)}")
    denied = len(r.denied_calls)
    lines.append(f"  called:   {len(r.calls)} call(s), {denied} denied")
    marks = {"ok": "+", "denied": "x", "failed": "!", "invalid": "?", "abandoned": "~"}
    for c in r.calls:
        args = ", ".join(f"{k}={v}" for k, v in c.arguments.items())
        line = f"    {marks[c.status]} {c.capability}({args})  {c.status}"
        if c.approval:
            line += f" [approval: {c.approval}]"
        if c.status in ("denied", "failed", "invalid", "abandoned") and (c.reason or c.error):
            line += f": {c.reason or c.error}"
        line += f"  {c.duration_seconds * 1000:.1f} ms"
        lines.append(line)
    o = r.outcome
    if o.ok:
        outcome = "ok"
    else:
        outcome = f"{o.kind}" + (f" [{o.limit}]" if o.limit else "") + f": {o.type}: {o.message}"
    lines.append(f"  outcome:  {outcome}" + ("  (output truncated)" if o.output_truncated else ""))
    u = r.usage
    memory = f", peak {u.peak_memory_bytes / (1 << 20):.1f} MiB" if u.peak_memory_bytes else ""
    lines.append(f"  usage:    wall {u.wall_seconds:.3f}s, cpu {u.cpu_seconds:.3f}s{memory}")
    return "\n".join(map(printable, lines))


def printable(text: str) -> str:
    """``text`` safe to show on one terminal line: every character that is not printable
    (newlines, ESC and so ANSI sequences, other controls, bidi overrides and other format
    characters, line separators, lone surrogates) becomes its backslash escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def summarize_file(path: str | os.PathLike[str], *, run_id: str | None = None) -> str:
    """`summarize` for every record in a file (or only ``run_id``, a prefix is enough)."""
    parts = [summarize(r) for r in read_records(path) if run_id is None or r.run_id.startswith(run_id)]
    return "\n\n".join(parts)
