"""Capabilities for the command-line example in the README:

    sandbox run --capabilities examples.cli_tools --policy examples/policy.toml \\
        --records runs.jsonl --signing-key audit.pem --principal agent:etl examples/cli_job.py

- ``fs.read(path)``: a text file under ``/data/``, which is ``examples/data/`` on the host;
- ``sql.query(text, params=None)`` and ``sql.tables()``: the read-only SQL capability of
  `sandbox.sql` over a small SQLite shop database (tables ``orders`` and ``customers``), made
  in a temporary directory when this module is imported.

The policy (examples/policy.toml) lets the guest read ``/data/`` and query ``orders`` only.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from pathlib import Path

from sandbox import capability
from sandbox.sql import sql_capability

DATA = Path(__file__).resolve().with_name("data")


@capability(name="fs.read")
def read(path: str) -> str:
    """The text of a file under /data/ (e.g. '/data/notes.txt')."""
    if not path.startswith("/data/"):
        raise FileNotFoundError(f"{path}: only /data/ is mounted")
    target = (DATA / path.removeprefix("/data/")).resolve()
    if not target.is_relative_to(DATA) or not target.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return target.read_text(encoding="utf-8")


def _shop_database() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="sandbox-example-shop-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "shop.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT);"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed TEXT);"
            "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Linus', 'linus@example.com');"
            "INSERT INTO orders VALUES (1, 1, 120.5, '2026-01-03'), (2, 2, 80.0, '2026-01-04'),"
            " (3, 1, 42.25, '2026-02-11');"
        )
    db.close()
    return path


sql = sql_capability(_shop_database())
