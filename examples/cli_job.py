# Guest code for the README's command-line example: what the policy allows, and what it refuses.
notes = fs.read("/data/notes.txt")
rows = sql.query("SELECT customer_id, sum(total) AS total FROM orders GROUP BY customer_id")["rows"]
for attempt in ("fs.read('/etc/passwd')", "sql.query('SELECT email FROM customers')"):
    try:
        fs.read("/etc/passwd") if attempt.startswith("fs") else sql.query("SELECT email FROM customers")
    except PermissionError as exc:
        print("denied:", attempt, "-", exc)
{"notes": notes.strip(), "totals": {f"customer {row['customer_id']}": row["total"] for row in rows}}
