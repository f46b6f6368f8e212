"""A data-team run: the guest answers a question with read-only SQL, transforms the rows and
writes a CSV report into a file overlay; the host reviews the diff, then applies it.

Run with ``.venv/bin/python examples/data_report.py [restricted|process|wasi]`` (needs the
``data`` extra: sqlglot, plus duckdb for DuckDB files). The "agent" is a fixed program
standing in for model output. Everything lives in a temporary directory: a real SQLite file
with sales and a staff table the guest may not read, and a ``reports/`` directory mounted
through the overlay. The database's SHA-256 is compared before and after.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from sandbox import Limits, Sandbox
from sandbox.audit import MemorySink
from sandbox.overlay import Overlay
from sandbox.sql import sql_capability

QUESTION = "Which regions sold the most in 2024, and what share of revenue is each?"

AGENT_CODE = '''
result = sql.query(
    "SELECT region, sum(quantity * unit_price) AS revenue, count(*) AS orders "
    "FROM sales WHERE sold_on BETWEEN ? AND ? GROUP BY region ORDER BY revenue DESC",
    ["2024-01-01", "2024-12-31"],
)

def transform(rows):
    total = sum(r["revenue"] for r in rows)
    return [
        {"rank": i + 1, "region": r["region"], "revenue": round(r["revenue"], 2),
         "orders": r["orders"], "share_pct": round(100 * r["revenue"] / total, 1)}
        for i, r in enumerate(rows)
    ]

report = transform(result["rows"])
lines = ["rank,region,revenue,orders,share_pct"]
lines += [f"{r['rank']},{r['region']},{r['revenue']},{r['orders']},{r['share_pct']}" for r in report]
files.write("reports/regions_2024.csv", "\\n".join(lines) + "\\n")

# the agent also tries to peek at salaries and to clean up the table: both are refused
for attempt in ["SELECT name, salary FROM staff", "DELETE FROM sales WHERE sold_on < '2024-01-01'"]:
    try:
        sql.query(attempt)
    except PolicyDenied as e:
        print("refused:", e)

print(f"top region: {report[0]['region']} ({report[0]['share_pct']}% of revenue)")
report
'''


class ReportRow(BaseModel):
    rank: int
    region: str
    revenue: float
    orders: int
    share_pct: float


def make_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE sales(id INTEGER PRIMARY KEY, region TEXT, sold_on TEXT, quantity INTEGER, unit_price REAL);
        CREATE TABLE staff(name TEXT, salary REAL);
        INSERT INTO staff VALUES ('ann', 98000), ('bob', 87000);
        """
    )
    regions = ["north", "south", "east", "west"]
    conn.executemany(
        "INSERT INTO sales(region, sold_on, quantity, unit_price) VALUES (?, ?, ?, ?)",
        [(regions[i % 4 if i % 7 else 0], f"{2023 + (i % 5 > 0)}-{1 + i % 12:02d}-{1 + i % 28:02d}",
          1 + i % 9, 4.5 + (i % 13)) for i in range(2000)],
    )
    conn.commit()
    conn.close()


def main(argv: list[str]) -> int:
    choice = argv[1] if len(argv) > 1 else "restricted"
    runtime, isolation = {"restricted": ("restricted", None), "process": ("restricted", "process"),
                          "wasi": ("wasi", None)}[choice]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "warehouse.db"
        make_database(db)
        reports = root / "reports"
        reports.mkdir()
        (reports / "regions_2024.csv").write_text("rank,region,revenue,orders,share_pct\n1,north,0,0,100.0\n")
        db_hash = hashlib.sha256(db.read_bytes()).hexdigest()

        sink = MemorySink()
        with Sandbox(
            runtime, isolation=isolation,  # type: ignore[arg-type]
            limits=Limits(cpu_seconds=2, wall_seconds=10),
            capabilities=sql_capability(db, tables=["sales"], max_rows=500),
            files=Overlay({"reports": reports}, max_files=10, max_write_bytes=1 << 20),
            records=sink,
        ) as sb:
            print(f"question: {QUESTION}\nruntime: {choice}\n")
            result = sb.run(AGENT_CODE)
            if not result.ok:
                print(f"run failed: {result.error}")
                return 1
            print(result.stdout)
            rows = [ReportRow.model_validate(r) for r in result.value]  # validated output
            print(f"{len(rows)} report rows validated\n")

            print("calls in the run record:")
            for call in sink.records[0].calls:
                d = call.detail or {}
                print(f"  {call.capability:12} {call.status:6} "
                      + (f"sql {d['statement_sha256'][:12]} tables={d['tables']} rows={d['rows']} {d['decision']}"
                         if "statement_sha256" in d else ", ".join(call.arguments)))
            print("\nproposed changes (nothing written yet):")
            for change in result.changes or ():
                print(f"  {change.action}: {change.path}")
                print("    " + change.diff.replace("\n", "\n    ").rstrip())
            applied = sb.apply(result.changes)  # a real host would ask a reviewer first
        print(f"applied: {applied}")
        print(f"report on disk:\n{(reports / 'regions_2024.csv').read_text()}")
        same = hashlib.sha256(db.read_bytes()).hexdigest() == db_hash
        print(f"database byte-identical after the run: {same}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
