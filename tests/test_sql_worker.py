"""The SQL capability's worker processes (`sandbox.sql_pool`, `sandbox.sql_worker`): a query
that asks for unbounded memory or disk fails in the worker, the host's peak RSS barely moves,
no worker outlives its Sandbox or its host, and a later query works.

Each memory scenario runs in a fresh Python process (the "host"), which reports its own
``VmHWM`` (peak RSS) before and after the bomb, so the measure is the host's and nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from sandbox import Limits, Sandbox
from sandbox.sql import sql_capability
from sandbox.sql._database import Database as _Database

duckdb = pytest.importorskip("duckdb")

_REPO = Path(__file__).resolve().parent.parent
_HOST_GROWTH_LIMIT = 64 << 20  # the bombs ask for 2-4 GiB; the host may grow by row buffers at most


def _workers(pid: int | None = None) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if any(part.endswith("sql_worker.py") for part in child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


def _make_sqlite(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE orders(id INTEGER, amount REAL); INSERT INTO orders VALUES (1, 2.5), (2, 4);")
    conn.commit()
    conn.close()
    return path


def _make_duckdb(path: Path) -> Path:
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE orders(id INTEGER, amount DOUBLE)")
    conn.execute("INSERT INTO orders VALUES (1, 2.5), (2, 4)")
    conn.close()
    return path


_HOST_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import psutil
    from sandbox import Limits, Sandbox
    from sandbox.sql import sql_capability

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    database, memory_bytes, bomb = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = {}
    with Sandbox(capabilities=sql_capability(database, memory_bytes=memory_bytes, timeout_seconds=60),
                 limits=Limits(wall_seconds=120)) as sb:
        warm = sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows']")
        out["warm"] = warm.value
        out["hwm_before"] = hwm()
        started = time.monotonic()
        result = sb.run(f"sql.query({bomb!r})")
        out["seconds"] = time.monotonic() - started
        out["hwm_after"] = hwm()
        out["error"] = result.error and result.error.model_dump()
        out["later"] = sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows']").value
    out["children_after_close"] = [" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True)]
    print(json.dumps(out))
""")


def _bomb_in_a_fresh_host(database: Path, bomb: str, memory_bytes: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _HOST_SCRIPT, str(database), str(memory_bytes), bomb],
                          cwd=_REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bomb", [
    "SELECT length(repeat('x', 2000000000)) AS n",   # one 2 GB string; ignores interrupts
    "SELECT list_sum(range(300000000)) AS n",        # a 4 GiB list outside DuckDB's buffer manager
])
def test_duckdb_memory_bombs_fail_in_the_worker(tmp_path, bomb):
    out = _bomb_in_a_fresh_host(_make_duckdb(tmp_path / "shop.duckdb"), bomb, 256 << 20)
    assert out["warm"] == [{"n": 2}]
    assert out["error"]["type"] == "CapabilityError", out
    assert "longer than" not in out["error"]["message"]  # it failed on memory, not at the deadline
    assert out["seconds"] < 60, out
    assert out["hwm_after"] - out["hwm_before"] < _HOST_GROWTH_LIMIT, out
    assert out["later"] == [{"n": 2}]
    assert out["children_after_close"] == []


def test_sqlite_sort_bomb_stays_in_memory_and_fails_in_the_worker(tmp_path):
    """A sort far larger than the worker's memory: no temp file can hold it (RLIMIT_FSIZE 0,
    temp_store=MEMORY), so the worker runs out of memory; the host does not grow."""
    bomb = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 1500000) "
            "SELECT i FROM r ORDER BY randomblob(500)")
    out = _bomb_in_a_fresh_host(_make_sqlite(tmp_path / "shop.db"), bomb, 32 << 20)
    assert out["error"]["type"] == "CapabilityError", out
    assert "memory" in out["error"]["message"], out
    assert out["hwm_after"] - out["hwm_before"] < _HOST_GROWTH_LIMIT, out
    assert out["later"] == [{"n": 2}]
    assert out["children_after_close"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.db"]


def test_a_query_past_its_deadline_kills_its_worker(tmp_path):
    db = _make_duckdb(tmp_path / "shop.duckdb")
    with Sandbox(capabilities=sql_capability(db, timeout_seconds=2), limits=Limits(wall_seconds=60)) as sb:
        assert sb.run("sql.query('SELECT 1 AS x')").ok
        (before,) = _workers()
        slow = sb.run("sql.query('SELECT count(*) FROM range(100000000000) a(i)')")
        assert slow.error.type == "CapabilityError" and "longer than 2 s" in slow.error.message
        assert not psutil.pid_exists(before.pid) or before.status() == psutil.STATUS_ZOMBIE
        later = sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows']")
        assert later.value == [{"n": 2}]
        assert len(_workers()) == 1  # the one that answered, kept warm
    assert _workers() == []


def test_workers_die_with_their_host(tmp_path):
    """A host killed mid-query (no close, no atexit) takes its worker with it."""
    db = _make_sqlite(tmp_path / "shop.db")
    script = textwrap.dedent(f"""
        import threading, time
        from sandbox.sql._database import Database as _Database
        db = _Database({str(db)!r}, engine=None, tables=None, max_rows=10, max_result_bytes=1 << 20,
                       timeout_seconds=600, immutable=True)
        slow = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
        threading.Thread(target=db.query, args=(slow, None), daemon=True).start()
        print("started", flush=True)
        time.sleep(600)
    """)
    host = subprocess.Popen([sys.executable, "-c", script], cwd=_REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while not (workers := _workers(host.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers
        time.sleep(0.5)  # the query is running
        os.kill(host.pid, signal.SIGKILL)
        host.wait(30)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == []
    finally:
        host.kill()
        host.wait(30)


def test_close_stops_the_workers_and_a_later_query_starts_one(tmp_path):
    db = _make_sqlite(tmp_path / "shop.db")
    caps = sql_capability(db)
    with Sandbox(capabilities=caps) as sb:
        assert sb.run("sql.query('SELECT 1 AS x')").ok
        assert len(_workers()) == 1
    assert _workers() == []
    with Sandbox(capabilities=caps) as sb:  # the same capabilities, granted again
        assert sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows']").value == [{"n": 2}]
    assert _workers() == []


def test_the_database_pickles_without_its_workers(tmp_path):
    database = _Database(_make_sqlite(tmp_path / "shop.db"), engine=None, tables=["orders"], max_rows=10,
                         max_result_bytes=1 << 20, timeout_seconds=5, immutable=True)
    try:
        copy = pickle.loads(pickle.dumps(database))
        try:
            assert copy.query("SELECT count(*) AS n FROM orders", None)["rows"] == [{"n": 2}]
        finally:
            copy.close()
    finally:
        database.close()
    assert _workers() == []
