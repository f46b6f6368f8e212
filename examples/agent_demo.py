"""An agent's program on every runtime: a capability call, a secret handle, a denied call, a limit.

Run with `make demo` (or `.venv/bin/python examples/agent_demo.py`; it prints with rich, in the
`dev` and `bench` extras). The "agent" is a fixed program standing in for model output; the
host grants it three capabilities, one secret that
only `book_flight` may use, and a policy that refuses `delete_account`. Each run leaves a
signed, hash-chained record, verified at the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console

from sandbox import Limits, Sandbox, Secret, SecretValue, capability
from sandbox.audit import JsonlSink, generate_signing_key, verify
from sandbox.policy import Policy, Rule

console = Console(highlight=False)
API_KEY = "sk-demo-4f1c2a9e7b"


@capability
def search_flights(origin: str, dest: str) -> list[dict]:
    """Flights from origin to dest, with prices in EUR."""
    return [
        {"id": "AF011", "price": 612, "depart": "09:40"},
        {"id": "DL405", "price": 548, "depart": "11:05"},
        {"id": "UA57", "price": 701, "depart": "16:20"},
    ]


@capability
def book_flight(flight_id: str, api_key: SecretValue) -> dict:
    """Book a flight; the airline API key is resolved on the host, never shown to the guest."""
    key = api_key.reveal()
    return {"flight": flight_id, "status": "confirmed", "key_used": key[:3] + "…"}


@capability
def delete_account(user: str) -> str:
    """Delete a user account (the policy refuses it)."""
    return f"deleted {user}"


AGENT_PROGRAM = """
flights = search_flights("CDG", "JFK")
cheapest = min(flights, key=lambda f: f["price"])
print("cheapest:", cheapest["id"], cheapest["price"], "EUR")
print("the guest sees only a handle:", secrets.airline)
booking = book_flight(cheapest["id"], secrets.airline)
try:
    delete_account("alice")
except PermissionError as denied:
    print("denied:", denied)
booking
"""

RUNAWAY_PROGRAM = """
n = 0
while True:
    n += 1
"""


def runtimes() -> list[tuple[str, str | None]]:
    chosen = [("restricted", None), ("wasi", None)]
    if sys.platform == "linux":
        chosen.insert(1, ("restricted", "process"))
    return chosen


def main() -> int:
    records = Path(tempfile.mkdtemp(prefix="sandbox-demo-")) / "runs.jsonl"
    key = generate_signing_key()
    sink = JsonlSink(records, signing_key=key)
    policy = Policy(rules={"delete_account": Rule(decision="deny", reason="account deletion needs a human")})
    failures = 0
    for runtime, isolation in runtimes():
        label = runtime + (f" + isolation={isolation}" if isolation else "")
        console.rule(f"[bold]{label}")
        with Sandbox(
            runtime,  # type: ignore[arg-type]
            isolation=isolation,  # type: ignore[arg-type]
            limits=Limits(cpu_seconds=0.5, wall_seconds=3, memory_bytes="128M"),
            capabilities=[search_flights, book_flight, delete_account],
            secrets={"airline": Secret(value=API_KEY, capabilities=["book_flight"], description="airline API key")},
            policy=policy,
            principal={"id": "demo-agent", "on_behalf_of": "alice", "task": "book the cheapest flight"},
            records=sink,
        ) as sb:
            result = sb.run(AGENT_PROGRAM)
            console.print(result.stdout.rstrip())
            console.print(f"value: {result.value}")
            console.print(f"capability calls: {result.usage.capability_calls}, layers: {', '.join(result.layers)}")
            runaway = sb.run(RUNAWAY_PROGRAM)
            err = runaway.error
            console.print(f"runaway loop: {err.kind if err else 'ok?!'} ({err.limit if err else '-'}) "
                          f"after {runaway.usage.wall_seconds:.2f} s wall")
            leaked = API_KEY in result.model_dump_json() + runaway.model_dump_json()
            if not result.ok or err is None or err.limit != "cpu" or leaked:
                failures += 1
                console.print("[red]unexpected result[/red]", result.error, runaway.error, f"leaked={leaked}")
    console.rule("[bold]run records")
    report = verify(records, key.public_key())
    console.print(f"{records}: {report}")
    if API_KEY in records.read_text():
        failures += 1
        console.print("[red]the secret reached the records[/red]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
