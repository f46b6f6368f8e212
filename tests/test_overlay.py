"""The file overlay (`sandbox.overlay`): escapes refused, host files unchanged until apply."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from sandbox import Sandbox
from sandbox.errors import ConfigurationError
from sandbox.overlay import Overlay, OverlayConflict


def _tree(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file (and the target of every symlink) under ``roots``."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    out[str(path)] = "link:" + os.readlink(path)
                elif path.is_file():
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[str(path)] = "dir"
    return out


@pytest.fixture
def tree(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("one\ntwo\n")
    (data / "sub" / "b.txt").write_text("bee\n")
    (data / "bin.dat").write_bytes(b"\xff\xfe\x00")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    os.symlink(outside / "secret.txt", data / "link_out")
    os.symlink(outside, data / "dir_out")
    os.symlink(data / "a.txt", data / "link_in")
    return tmp_path


ESCAPES = [
    "../outside/secret.txt",
    "data/../outside/secret.txt",
    "data/../../etc/passwd",
    "/etc/passwd",
    str(Path("/tmp")),
    "~/x",
    "data/./a.txt",
    "data/a.txt\x00.png",
    "data\\..\\outside",
    "data/link_out",
    "data/dir_out/secret.txt",
    "data/dir_out/new.txt",
    "nomount/x",
]


@pytest.mark.parametrize("op", ["read", "write", "delete", "list"])
def test_escapes_are_refused_and_host_files_unchanged(tree, op):
    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        for path in ESCAPES:
            call = {"read": f"files.read({path!r})", "write": f"files.write({path!r}, 'pwned')",
                    "delete": f"files.delete({path!r})", "list": f"files.list({path!r})"}[op]
            result = sb.run(call)
            assert not result.ok, (op, path, result.value)
            assert result.error.kind == "policy_denied", (op, path, result.error)
            assert result.changes == ()
    assert _tree(tree) == before


def test_symlink_inside_the_mount_is_followed_and_escape_is_hidden_from_list(tree):
    with Sandbox(files=Overlay(tree / "data")) as sb:
        result = sb.run("[files.read('link_in'), files.list('')]")
    assert result.ok, result.error
    text, names = result.value
    assert text == "one\ntwo\n"
    assert "link_out" not in names and "dir_out/" not in names
    assert names == ["a.txt", "bin.dat", "link_in", "sub/"]


def test_writes_stay_in_the_layer_until_applied(tree):
    before = _tree(tree)
    overlay = Overlay({"data": tree / "data"})
    with Sandbox(files=overlay) as sb:
        result = sb.run(
            "files.write('data/a.txt', 'one\\nTWO\\n')\n"
            "files.write('data/new/c.txt', 'sea\\n')\n"
            "files.delete('data/sub/b.txt')\n"
            "[files.read('data/a.txt'), files.list('data'), files.list('data/sub'), files.delete('data/missing')]"
        )
        assert result.ok, result.error
        assert result.value == ["one\nTWO\n", ["a.txt", "bin.dat", "link_in", "new/", "sub/"], [], False]
        assert _tree(tree) == before  # nothing on the host yet
        by_path = {c.path: c for c in result.changes}
        assert {p: c.action for p, c in by_path.items()} == {
            "data/a.txt": "modified", "data/new/c.txt": "created", "data/sub/b.txt": "deleted"}
        assert "-two\n+TWO\n" in by_path["data/a.txt"].diff
        assert by_path["data/new/c.txt"].diff.startswith("--- /dev/null\n+++ b/data/new/c.txt\n")
        assert "-bee" in by_path["data/sub/b.txt"].diff
        # a fresh run does not see the previous run's layer
        assert sb.run("files.read('data/a.txt')").value == "one\ntwo\n"
        applied = sb.apply(result.changes)
    assert sorted(applied) == ["data/a.txt", "data/new/c.txt", "data/sub/b.txt"]
    assert (tree / "data" / "a.txt").read_text() == "one\nTWO\n"
    assert (tree / "data" / "new" / "c.txt").read_text() == "sea\n"
    assert not (tree / "data" / "sub" / "b.txt").exists()
    assert (tree / "outside" / "secret.txt").read_text() == "top secret\n"


def test_apply_refuses_when_the_host_changed(tree):
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        result = sb.run("files.write('data/a.txt', 'mine\\n')\nfiles.write('data/z.txt', 'z\\n')")
        (tree / "data" / "a.txt").write_text("someone else\n")
        before = _tree(tree)
        with pytest.raises(OverlayConflict):
            sb.apply(result.changes)
    assert _tree(tree) == before  # all or nothing: z.txt was not written either


def test_apply_refuses_a_forged_change(tree):
    from sandbox.results import FileChange

    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        for path in ["data/../outside/secret.txt", "data/link_out", "data/dir_out/x.txt", "/etc/passwd"]:
            with pytest.raises(OverlayConflict):
                sb.apply([FileChange(path=path, action="created", diff="", content="pwned")])
    assert _tree(tree) == before


def test_quotas(tree):
    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"}, max_files=2, max_write_bytes=10)) as sb:
        too_many = sb.run("files.write('data/1', 'a')\nfiles.write('data/2', 'b')\nfiles.write('data/3', 'c')")
        too_big = sb.run("files.write('data/1', 'x' * 11)")
        caught = sb.run("files.write('data/1', '12345')\ntry:\n    files.write('data/2', '123456')\n"
                        "except PolicyDenied as e:\n    err = str(e)\nerr")
    assert too_many.error.kind == "policy_denied" and "2 files" in too_many.error.message
    assert too_big.error.kind == "policy_denied" and "10 bytes" in too_big.error.message
    assert caught.ok and "quota" in caught.value
    assert [c.path for c in caught.changes] == ["data/1"]  # the refused write left the layer as it was
    assert _tree(tree) == before


def test_binary_and_large_reads(tree):
    with Sandbox(files=Overlay({"data": tree / "data"}, max_read_bytes=5)) as sb:
        binary = sb.run("files.read('data/bin.dat')")
        large = sb.run("files.read('data/a.txt')")
    assert binary.error.type == "CapabilityError" and "UTF-8" in binary.error.message
    assert large.error.kind == "policy_denied" and "read limit" in large.error.message


def test_configuration(tree):
    with pytest.raises(ConfigurationError):
        Overlay(tree / "missing")
    with pytest.raises(ConfigurationError):
        Overlay({"../x": tree / "data"})
    with pytest.raises(ConfigurationError):
        Overlay({})
    with pytest.raises(TypeError):
        Sandbox(files="not an overlay")  # type: ignore[arg-type]
    with Sandbox() as sb, pytest.raises(ConfigurationError):
        sb.apply([])
    with Sandbox() as sb:
        assert sb.run("1").changes is None
    with Sandbox(files=Overlay(tree / "data")) as sb:
        assert "files.write" in sb.describe().stub or "def write" in sb.describe().stub


def test_data_report_example_runs(capsys):
    import importlib.util

    pytest.importorskip("sqlglot")
    path = Path(__file__).resolve().parent.parent / "examples" / "data_report.py"
    spec = importlib.util.spec_from_file_location("data_report_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["data_report.py", "restricted"]) == 0
    out = capsys.readouterr().out
    assert "+1,north," in out and "database byte-identical after the run: True" in out


def test_file_and_directory_conflicts(tree):
    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        under_host_file = sb.run("files.write('data/a.txt/x', 'no')")
        over_host_dir = sb.run("files.write('data/sub', 'no')")
        layered = sb.run("files.write('data/n', '1')\nfiles.write('data/n/m', '2')")
        ok = sb.run("files.write('data/n/m', '2')\nfiles.list('data/n')")
    for result in (under_host_file, over_host_dir, layered):
        assert not result.ok and result.error.type == "CapabilityError", result.error
    assert ok.ok and ok.value == ["m"]
    assert _tree(tree) == before


# ----------------------------------------------------------------------------- hostile host files, all-or-nothing apply, bounded diffs


def _ran_within(seconds: float, func):
    """Run ``func`` on a daemon thread; return its result, or fail if it has not finished in time."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("op", [
    "files.read('data/pipe')",
    "files.write('data/pipe', 'x')",
    "files.delete('data/pipe')",
    "files.list('data')",
])
def test_a_named_pipe_in_a_mount_never_hangs(tree, op):
    os.mkfifo(tree / "data" / "pipe")
    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        result = _ran_within(10, lambda: sb.run(op))
    if op.startswith("files.list"):
        assert result.ok and "pipe" in result.value
    else:
        assert result.error.kind == "policy_denied" and "not a regular file" in result.error.message
    assert _tree(tree) == before


def test_apply_never_opens_a_named_pipe(tree):
    from sandbox.results import FileChange

    os.mkfifo(tree / "data" / "pipe")
    before = _tree(tree)
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        for action in ("created", "modified", "deleted"):
            change = FileChange(path="data/pipe", action=action, diff="", content=None if action == "deleted" else "x")
            with pytest.raises(OverlayConflict, match="not a regular file"):
                _ran_within(10, lambda: sb.apply([change]))
    assert _tree(tree) == before


def test_apply_is_all_or_nothing(tree, monkeypatch):
    from sandbox.results import FileChange

    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        result = sb.run("files.write('data/a.txt', 'new a\\n')\nfiles.write('data/new/z.txt', 'z\\n')\n"
                        "files.delete('data/sub/b.txt')")
        assert result.ok, result.error
        bad = FileChange(path="data/zz.txt", action="created", diff="", content="lone \ud800 surrogate")
        before = _tree(tree)
        with pytest.raises(OverlayConflict, match="not valid Unicode"):
            sb.apply([*result.changes, bad])
        assert _tree(tree) == before
        # a failure while swapping files in (here: renaming the last target, the disk says no)
        # undoes the swaps already made
        real_rename = os.rename

        def failing_rename(src, dst, *args, **kwargs):
            if str(src).endswith("b.txt"):
                raise OSError(30, "Read-only file system")
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "rename", failing_rename)
        with pytest.raises(OSError, match="Read-only"):
            sb.apply(result.changes)
        monkeypatch.setattr(os, "rename", real_rename)
        assert _tree(tree) == before and not (tree / "data" / "new").exists()
        assert sorted(sb.apply(result.changes)) == ["data/a.txt", "data/new/z.txt", "data/sub/b.txt"]
    assert (tree / "data" / "a.txt").read_text() == "new a\n" and not (tree / "data" / "sub" / "b.txt").exists()
    assert not [p for p in (tree / "data").rglob(".overlay-*")]


def test_a_lone_surrogate_cannot_be_written(tree):
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        result = sb.run("files.write('data/s.txt', 'x' + chr(0xD800))")
    assert result.error.type == "ValueError" and "surrogate" in result.error.message
    assert result.changes == ()


def test_diffs_cost_time_linear_in_what_was_written(tree):
    lines = 20_000
    (tree / "data" / "big.txt").write_text("".join(f"{i}\n" for i in range(lines)))
    code = (f"files.write('data/big.txt', ''.join(str(i) + '\\n' if i % 2 else 'x' + str(i) + '\\n' "
            f"for i in range({lines})))\nfiles.write('data/small.txt', 'hello\\n')")
    with Sandbox(files=Overlay({"data": tree / "data"})) as sb:
        started = time.monotonic()
        result = sb.run(code)
        elapsed = time.monotonic() - started
    assert result.ok, result.error
    by_path = {c.path: c for c in result.changes}
    assert "omitted" in by_path["data/big.txt"].diff and by_path["data/big.txt"].content.startswith("x0\n1\n")
    assert by_path["data/small.txt"].diff.endswith("+hello\n")
    assert elapsed < 10, elapsed  # difflib on these two files takes minutes


def test_changes_are_redacted(tree):
    from sandbox.secrets import Secret

    canary = "CANARY-overlay-93f1c2"
    (tree / "data" / "conf.ini").write_text(f"token = {canary}\nmode = a\n")
    with Sandbox(files=Overlay({"data": tree / "data"}), secrets={"api": Secret(value=canary, capabilities=["files.read"])}) as sb:
        result = sb.run("files.write('data/conf.ini', 'token = " + canary[:7] + "' + '" + canary[7:] + "\\nmode = b\\n')")
        assert result.ok, result.error
        (change,) = result.changes
        assert canary not in result.model_dump_json()
        assert "-mode = a\n+mode = b\n" in change.diff and "[REDACTED" in change.diff
        before = _tree(tree)
        with pytest.raises(OverlayConflict, match="redacted"):
            sb.apply(result.changes)
    assert _tree(tree) == before
