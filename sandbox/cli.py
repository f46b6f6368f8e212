"""The `sandbox` command line.

Exit codes of `sandbox run`: 0 when the run is ok, 1 when the guest failed, hit a limit or
was denied, 2 for bad usage (click's own usage errors and invalid options).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sandbox.limits import Limits, parse_size
from sandbox.results import RunResult


class _Size(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
@click.version_option(package_name="sandbox")
def main() -> None:
    """Run agent-generated Python inside a boundary the host controls."""


@main.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--runtime", type=click.Choice(["restricted", "wasi"]), default="restricted", show_default=True)
@click.option("--isolation", type=click.Choice(["process"]), default=None, help="Confine each run in a child process.")
@click.option("--cpu", "cpu_seconds", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="CPU seconds.")
@click.option("--wall", "wall_seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Wall-clock seconds.")
@click.option("--memory", "memory_bytes", type=_Size(), default="256M", show_default=True, help="Memory, e.g. 256M.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A TOML policy deciding each capability call (see docs/governance.md).")
def run(file: Any, runtime: str, isolation: str | None, cpu_seconds: float, wall_seconds: float,
        memory_bytes: int, as_json: bool, policy_path: str | None) -> None:
    """Run FILE (or - for standard input) and print its output and value."""
    from sandbox.sandbox import Sandbox

    code = file.read()
    limits = Limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_bytes=memory_bytes)
    try:
        sandbox = Sandbox(runtime, limits=limits, isolation=isolation, policy=policy_path)  # type: ignore[arg-type]
    except (ValueError, TypeError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None
    with sandbox:
        result = sandbox.run(code)
    _report(result, as_json)
    sys.exit(0 if result.ok else 1)


@main.command()
@click.argument("records", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", "public_key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key file (PEM, OpenSSH, or raw/hex/base64).")
@click.option("--head", "expected_head", default=None, help="Expected hash of the last record (detects cut-off tails).")
def verify(records: str, public_key: str, expected_head: str | None) -> None:
    """Check the signatures and hash chain of a RECORDS.jsonl file; exit 1 naming the first bad record."""
    from sandbox.audit import load_public_key, verify as verify_records

    try:
        key = load_public_key(public_key)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(f"--public-key: {exc}") from None
    report = verify_records(records, key, expected_head=expected_head)
    click.echo(str(report), err=not report.ok)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("records", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_id", default=None, help="Only this run (an id prefix is enough).")
def audit(records: str, run_id: str | None) -> None:
    """Summarise each run in RECORDS.jsonl: who, what was allowed, what was called, what was denied."""
    from sandbox.audit import summarize_file

    try:
        text = summarize_file(records, run_id=run_id)
    except (ValueError, TypeError, KeyError) as exc:
        raise click.ClickException(f"{records}: not a run-record file: {exc}") from None
    click.echo(text or "no matching runs")


def _report(result: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    if result.stdout:
        click.echo(result.stdout, nl=not result.stdout.endswith("\n"))
    if result.stderr:
        click.echo(result.stderr, err=True, nl=not result.stderr.endswith("\n"))
    if result.output_truncated:
        click.echo("[output truncated at the limit]", err=True)
    if result.error is not None:
        err = result.error
        where = f" (line {err.lineno})" if err.lineno else ""
        limit = f" [{err.limit}]" if err.limit else ""
        click.echo(f"{err.kind}{limit}: {err.type}: {err.message}{where}", err=True)
    elif result.value is not None:
        click.echo(repr(result.value))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmark the runtimes against the peers (`sandbox bench --help`; needs a source checkout)."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        raise click.UsageError("sandbox bench runs from a source checkout: the benchmarks/ package is not installed")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks import main as bench_main

    sys.exit(bench_main(list(ctx.args)))


def _register_adapters() -> None:
    from sandbox.adapters.mcp import mcp_command

    main.add_command(mcp_command)


_register_adapters()

if __name__ == "__main__":
    main()
