"""Run records: evidence of what each run was allowed to do and what it did.

Every run can emit one `RunRecord` (pydantic) to a `RecordSink`. No secret value is ever put
in a record: secret handles appear by name and scope, arguments as a short redacted summary,
output and value only as SHA-256 hashes.

`JsonlSink` appends records to a JSONL file as a hash chain: each line carries its sequence
number, the hash of the previous line and its own hash, and, when the host supplies an
Ed25519 key, a signature. `verify` checks a file offline and names the first bad line: an
altered byte, a deleted line and two swapped lines are all caught. (Cutting lines off the
*end* leaves a valid shorter chain: keep the last ``head`` hash elsewhere and pass it as
``expected_head`` to detect that too.)

Line format (one JSON object per line, keys sorted, no spaces)::

    {"hash": sha256(body), "key": key_id | null, "prev": hash of the line before ("0"*64 first),
     "record": {...RunRecord...}, "seq": 0, 1, 2, ..., "sig": base64(Ed25519(body)) | null}

where ``body`` is the canonical JSON of ``{"prev", "record", "seq"}``.

Modules: `_records` (the record models, hashes, canonical JSON), `_recorder` (`RunRecorder`),
`_sinks` (`RecordSink` and the sinks), `_chain` (sealing lines, a file's chain end), `_keys`
(Ed25519 keys), `_verify` (`verify`), `_summary` (reading files, `sandbox audit` summaries).
"""

from __future__ import annotations

from sandbox.audit._chain import GENESIS, seal
from sandbox.audit._keys import (
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
)
from sandbox.audit._recorder import RunRecorder, secret_grants, summarize_arguments
from sandbox.audit._records import (
    SCHEMA,
    CallRecord,
    CallStatus,
    RecordOutcome,
    Redact,
    RunRecord,
    SecretGrant,
    canonical,
    sha256_json,
    sha256_text,
)
from sandbox.audit._sinks import JsonlSink, MemorySink, OtelSink, RecordSink, check_sink
from sandbox.audit._summary import printable, read_records, summarize, summarize_file
from sandbox.audit._verify import VerifyReport, verify

__all__ = [
    "CallRecord",
    "CallStatus",
    "canonical",
    "check_sink",
    "generate_signing_key",
    "GENESIS",
    "JsonlSink",
    "key_id",
    "load_private_key",
    "load_public_key",
    "MemorySink",
    "OtelSink",
    "printable",
    "private_key_pem",
    "public_key_pem",
    "read_records",
    "RecordOutcome",
    "RecordSink",
    "Redact",
    "RunRecord",
    "RunRecorder",
    "SCHEMA",
    "seal",
    "secret_grants",
    "SecretGrant",
    "sha256_json",
    "sha256_text",
    "summarize",
    "summarize_arguments",
    "summarize_file",
    "verify",
    "VerifyReport",
]
