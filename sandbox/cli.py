"""The `sandbox` command line.

Exit codes: 0 when the run (or check) is ok; 1 when the guest failed, hit a limit or was
denied (or a record file did not verify); 2 for bad usage. Every usage error is one line on
stderr, ``sandbox <command>: error: ...``, without a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sandbox.errors import ConfigurationError
from sandbox.limits import parse_size
from sandbox.results import RunResult


class _Cli(click.Group):
    """A group whose usage errors are one line (click prints a usage block by default)."""

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
        standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx is not None else "sandbox"
            click.echo(f"{where}: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


class _Size(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Seconds(click.ParamType):
    """A finite number of seconds > 0 (``nan``, ``inf`` and negatives are refused)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} must be a finite number of seconds greater than 0", param, ctx)
        return seconds


class _Input(click.ParamType):
    """``name=JSON``: one guest input."""

    name = "name=JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        name, sep, text = str(value).partition("=")
        if not sep or not name.isidentifier():
            self.fail(f"{value!r} must be name=JSON, e.g. rows='[1, 2]' or limit=10", param, ctx)

        def refuse(constant: str) -> Any:
            raise ValueError(f"{constant} is not JSON")

        try:
            return name, json.loads(text, parse_constant=refuse)
        except ValueError as exc:
            self.fail(f"{name}: not valid JSON ({exc})", param, ctx)


@click.group(cls=_Cli)
@click.version_option(package_name="sandbox")
def main() -> None:
    """Run agent-generated Python inside a boundary the host controls."""


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--runtime", type=click.Choice(["restricted", "wasi"]), default="restricted", show_default=True)
@click.option("--isolation", type=click.Choice(["process"]), default=None, help="Confine each run in a child process.")
@click.option("--cpu", "cpu_seconds", type=_Seconds(), default=5.0, show_default=True, help="CPU seconds.")
@click.option("--wall", "wall_seconds", type=_Seconds(), default=10.0, show_default=True, help="Wall-clock seconds.")
@click.option("--memory", "memory_bytes", type=_Size(), default="256M", show_default=True, help="Memory, e.g. 256M.")
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON.")
@click.option("--capabilities", "capability_specs", multiple=True, metavar="MODULE[:NAME]",
              help="Grant capabilities: every @capability of a module (imported from the current directory "
                   "or sys.path), or one capability or list of them by name. Repeatable.")
@click.option("--input", "inputs", type=_Input(), multiple=True, help="A guest global, name=JSON. Repeatable.")
@click.option("--files", "files", multiple=True, metavar="[NAME=]DIR",
              help="Mount a host directory read-only for files.read/write/list (NAME=DIR mounts at /NAME). "
                   "Writes stay in a scratch layer unless --apply is given. Repeatable.")
@click.option("--apply", "apply_changes", is_flag=True, help="Write the run's file changes to the host when it is ok.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A TOML policy deciding each capability call (see docs/governance.md).")
@click.option("--principal", default=None, help="Who the run is for (e.g. agent:etl): seen by the policy and records.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False), default=None,
              help="Append a hash-chained run record to this JSONL file (check it with `sandbox verify`).")
@click.option("--signing-key", "signing_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ed25519 private key (PEM, e.g. from `sandbox keygen`) that signs each record.")
def run(file: Any, runtime: str, isolation: str | None, cpu_seconds: float, wall_seconds: float,
        memory_bytes: int, as_json: bool, capability_specs: tuple[str, ...], inputs: tuple[tuple[str, Any], ...],
        files: tuple[str, ...], apply_changes: bool, policy_path: str | None, principal: str | None,
        records_path: str | None, signing_key: str | None) -> None:
    """Run FILE (or - for standard input) and print its output and value."""
    from sandbox.errors import SandboxError
    from sandbox.sandbox import Sandbox

    code = _source(file)
    try:
        options = _sandbox_options(capability_specs, files, policy_path, principal, records_path, signing_key)
        limits = _limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_bytes=memory_bytes)
        sandbox = Sandbox(runtime, limits=limits, isolation=isolation, **options)  # type: ignore[arg-type]
    except (ValueError, TypeError, RuntimeError, SandboxError) as exc:
        raise _usage(str(exc)) from None
    for pattern in _unmatched_rules(sandbox):
        click.echo(f"sandbox run: warning: the policy's rule for {pattern!r} matches no granted capability", err=True)
    with sandbox:
        try:
            result = sandbox.run(code, inputs=dict(inputs))
        except (ValueError, TypeError) as exc:  # inputs the runtime cannot take
            raise _usage(f"--input: {exc}") from None
        _report(result, as_json)
        if result.changes:
            for change in result.changes:
                click.echo(f"[file {change.action}: {change.path}]", err=True)
            if apply_changes and result.ok:
                sandbox.apply(result.changes)
                click.echo(f"[applied {len(result.changes)} change(s)]", err=True)
    sys.exit(0 if result.ok else 1)


def _unmatched_rules(sandbox: Any) -> list[str]:
    """Policy rules that can govern no granted capability: neither its name nor (for actions
    such as ``http.get`` of ``http.request``) its namespace matches them."""
    import fnmatch

    names = list(sandbox.capabilities)
    namespaces = {name.rsplit(".", 1)[0] + "." for name in names if "." in name}
    return [
        pattern for pattern in getattr(sandbox.policy, "rules", {})
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names)
        and not any(pattern.startswith(prefix) for prefix in namespaces)
    ]


def _source(file: Any) -> str:
    data = file.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"{file.name} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})", param_hint="'FILE'"
        ) from None


def _limits(**values: Any) -> Any:
    from pydantic import ValidationError

    from sandbox.limits import Limits

    try:
        return Limits(**values)
    except ValidationError as exc:
        raise _usage("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def _sandbox_options(capability_specs: tuple[str, ...], files: tuple[str, ...], policy_path: str | None,
                     principal: str | None, records_path: str | None, signing_key: str | None) -> dict[str, Any]:
    """`Sandbox` keyword arguments for the governance options; `ConfigurationError` naming the option."""
    options: dict[str, Any] = {}
    if capability_specs:
        from sandbox.adapters.config import import_capabilities

        if os.getcwd() not in sys.path:  # `sandbox` is a console script: make ./ importable as with python -m
            sys.path.insert(0, os.getcwd())
        options["capabilities"] = [cap for spec in capability_specs for cap in import_capabilities(spec)]
    if files:
        from sandbox.overlay import Overlay

        named = [entry.partition("=") for entry in files]
        if len(files) == 1 and not named[0][1]:
            options["files"] = Overlay(files[0])
        elif all(sep for _, sep, _ in named):
            options["files"] = Overlay({name: directory for name, _, directory in named})
        else:
            raise ConfigurationError("--files: give one DIR, or NAME=DIR for every mount")
    if policy_path is not None:
        from sandbox.policy import Policy

        if not capability_specs and not files:
            raise ConfigurationError("--policy decides capability calls, and this run grants none: add --capabilities or --files")
        options["policy"] = Policy.from_toml(policy_path)
    if principal is not None:
        options["principal"] = principal
    if signing_key is not None and records_path is None:
        raise ConfigurationError("--signing-key signs records: add --records FILE")
    if records_path is not None:
        from sandbox.audit import JsonlSink

        key = Path(signing_key).read_bytes() if signing_key is not None else None
        options["records"] = JsonlSink(records_path, signing_key=key)
    return options


@main.command()
@click.argument("records", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", "public_key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key file (PEM, OpenSSH, or raw/hex/base64). Required for signed records.")
@click.option("--head", "expected_head", default=None, help="Expected hash of the last record (detects cut-off tails).")
def verify(records: str, public_key: str | None, expected_head: str | None) -> None:
    """Check the hash chain (and, with --public-key, the signatures) of RECORDS.jsonl.

    Exits 1 naming the first bad record. An unsigned chain verifies without a key and is
    reported as "unsigned"; a signed one needs --public-key.
    """
    from sandbox.audit import load_public_key, verify as verify_records

    key = None
    if public_key is not None:
        try:
            key = load_public_key(public_key)
        except (ValueError, TypeError) as exc:
            raise _usage(f"--public-key: {exc}") from None
    report = verify_records(records, key, expected_head=expected_head)
    if report.ok and report.signatures == "unchecked":
        raise _usage(f"{records} holds signed records: pass --public-key to check their signatures")
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


@main.command()
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.option("--public", "public_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the public key (default: PRIVATE_KEY with the suffix .pub).")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(private_key: str, public_path: str | None, force: bool) -> None:
    """Make an Ed25519 signing key for run records: PRIVATE_KEY (PEM, mode 600) and its public key.

    Sign with `sandbox run --records runs.jsonl --signing-key PRIVATE_KEY` (or
    `JsonlSink(..., signing_key=...)`); check with `sandbox verify runs.jsonl --public-key PUBLIC`.
    """
    from sandbox.audit import generate_signing_key, key_id, private_key_pem, public_key_pem

    private = Path(private_key)
    public = Path(public_path) if public_path else private.with_suffix(".pub")
    if public.resolve() == private.resolve():
        raise _usage("the public key file must differ from the private key file")
    key = generate_signing_key()
    for path, data, mode in ((private, private_key_pem(key), 0o600), (public, public_key_pem(key), 0o644)):
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise _usage(f"{path} exists: pass --force to replace it") from None
        except OSError as exc:
            raise _usage(f"cannot write {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # an existing file (--force) keeps its old mode otherwise
            fh.write(data)
    click.echo(f"wrote {private} (private, mode 600) and {public}; key id {key_id(key.public_key())}", err=True)
    click.echo(public_key_pem(key).decode("ascii"), nl=False)


@main.command()
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Cache directory (default: $SANDBOX_WASI_CACHE, else the user cache). Workers that share it "
                   "must set SANDBOX_WASI_CACHE to the same directory.")
@click.option("--force", is_flag=True, help="Rebuild even when a valid cached guest exists.")
@click.option("--print-path", is_flag=True, help="Print where the guest is cached and exit.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def prepare(cache_dir: str | None, force: bool, print_path: bool, quiet: bool) -> None:
    """Build and cache the wasi guest ahead of time (for images and CI), so that no
    `Sandbox("wasi")` builds it on first use."""
    from sandbox.wasi import build as wasi_build

    directory = Path(cache_dir) if cache_dir else None
    if print_path:
        click.echo(wasi_build.cache_entry(directory).artifact)
        return
    try:
        entry, seconds = wasi_build.prepare(directory, force=force, quiet=quiet)
    except wasi_build.WasiBuildError as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(f"wasi guest ready: {entry.artifact} ({seconds:.1f} s)", err=True)


def _report(result: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    if result.stdout:
        click.echo(_encodable(result.stdout), nl=not result.stdout.endswith("\n"))
    if result.stderr:
        click.echo(_encodable(result.stderr), err=True, nl=not result.stderr.endswith("\n"))
    if result.output_truncated:
        click.echo("[output truncated at the limit]", err=True)
    if result.error is not None:
        err = result.error
        where = f" (line {err.lineno})" if err.lineno else ""
        limit = f" [{err.limit}]" if err.limit else ""
        click.echo(_encodable(f"{err.kind}{limit}: {err.type}: {err.message}{where}"), err=True)
    elif result.value is not None:
        click.echo(repr(result.value))


def _encodable(text: str) -> str:
    """Guest text as UTF-8 can carry it: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmark the runtimes against the peers (`sandbox bench --help`; needs a source checkout)."""
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
