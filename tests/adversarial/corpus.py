"""The escape corpus: loading `corpus.jsonl` and what each expected outcome means.

One case per line::

    {"id": "format-globals", "category": "format-string", "source": "https://...",
     "code": "...", "expect": "refused", "runtimes": {"wasi": "blocked"},
     "xfail": {"restricted": "why"}}

``code`` may use the placeholders ``@@CANARY_PATH@@``, ``@@CANARY_DIR@@``, ``@@WATCH_DIR@@``
and ``@@PORT@@`` (the loopback listener), filled in per run by `detectors.Environment`.

Expected outcomes (``expect``, overridden per runtime id in ``runtimes``). Whatever the
expectation, every case must also leave every detector clean (no canary anywhere, no file, no
connection, no new process, host state and resources intact, the host still answering), finish
within the wall limit plus `WALL_SLACK`, and never raise on the host:

* ``refused``   -- the run is not ok: success would mean the attack worked;
* ``blocked``   -- any outcome; the detectors alone decide (the code may legitimately run,
  e.g. ``import os`` inside wasi, which has no files, sockets or processes to reach);
* ``limit``     -- the run is stopped by a limit: ``limit_exceeded``, or the interpreter's own
  ``MemoryError``/``RecursionError``/``OverflowError`` inside a hard boundary;
* ``truncated`` -- output is cut at the cap and flagged (or a limit stops the run first);
* ``any``       -- the operation is bounded work the runtime may complete;
* ``unbounded`` -- a documented non-guarantee of that runtime (a single C-level operation the
  in-process runtime's cooperative limits cannot interrupt, see README/SECURITY.md): skipped,
  counted, and listed in SECURITY.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus.jsonl")
EXPECTATIONS = ("refused", "blocked", "limit", "truncated", "any", "unbounded")
RESOURCE_ERRORS = ("MemoryError", "RecursionError", "OverflowError")
WALL_SLACK = 3.0
"""Seconds a run may exceed its wall limit (kill, reap and result transfer included)."""


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    source: str
    code: str
    expect: str
    runtimes: dict[str, str] = field(default_factory=dict)
    xfail: dict[str, str] = field(default_factory=dict)

    def expectation(self, runtime_id: str) -> str:
        return self.runtimes.get(runtime_id, self.expect)


def load(path: Path = CORPUS) -> list[Case]:
    cases = []
    seen = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        data: dict[str, Any] = json.loads(line)
        case = Case(**data)
        if case.id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {case.id!r}")
        for value in (case.expect, *case.runtimes.values()):
            if value not in EXPECTATIONS:
                raise ValueError(f"{path}:{number}: unknown expectation {value!r}")
        seen.add(case.id)
        cases.append(case)
    return cases


def outcome_problem(expectation: str, result: Any) -> str | None:
    """Why ``result`` does not meet ``expectation`` (None when it does)."""
    error = result.error
    if expectation == "refused" and result.ok:
        return "the run succeeded: the attack was not refused"
    if expectation == "limit":
        if result.ok:
            return "the run succeeded: no limit stopped it"
        if error.kind != "limit_exceeded" and error.type not in RESOURCE_ERRORS:
            return f"expected a limit, got {error.kind} {error.type}: {error.message[:200]}"
    if expectation == "truncated":
        limited = error is not None and (error.kind == "limit_exceeded" or error.type in RESOURCE_ERRORS)
        if not (result.output_truncated or limited):
            return "output was neither truncated nor stopped by a limit"
    if error is not None and error.kind == "internal" and expectation != "blocked":
        return f"internal error: {error.type}: {error.message[:200]}"
    return None
