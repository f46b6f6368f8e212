"""Scale-out on a real local Ray cluster: pools of warm sandboxes, secrets, rates, records, data.

One cluster (2 CPUs) serves the whole module; pools have 2 actors. The secret the workers
read is put in the environment before the cluster starts, as a node's environment would be.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import secrets as random_secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pydantic import BaseModel  # noqa: E402
from ray import cloudpickle  # noqa: E402

from sandbox import ConfigurationError, Limits, Sandbox, Secret, SecretValue, capability  # noqa: E402
from sandbox.audit import MemorySink, generate_signing_key, private_key_pem, public_key_pem, read_records  # noqa: E402
from sandbox.ray import (  # noqa: E402
    CapabilityHost,
    ClusterRateStore,
    RaySandboxPool,
    RecordActor,
    SandboxSpec,
    SecretInTransit,
    TransformFailed,
    transform_batches,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

SECRET_ENV = "SANDBOX_RAY_TEST_TOKEN"
SECRET_VALUE = "tok-" + random_secrets.token_hex(16)
REQUIRED = ("seccomp", "netns", "rlimits")
CODE = """
total = sum(x * x for x in data)
print("total", total)
{"total": total, "first": data[0], "words": sorted(set(text.split()))}
"""
INPUTS = {"data": [3, 1, 4, 1, 5, 9, 2, 6], "text": "the quick brown the lazy"}


@capability
def whoami() -> int:
    """The worker's process id."""
    return os.getpid()


@capability
def token_check(token: SecretValue, expected_length: int) -> dict:
    """Uses the secret on the worker; echoes it back (the worker must redact it)."""
    value = token.reveal()
    return {"length_ok": len(value) == expected_length, "echo": value}


@capability
def ping() -> str:
    return "pong"


def sqlite_capabilities() -> list:
    """A factory: the connection is opened on the worker, never pickled."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("create table t (x integer)")
    conn.executemany("insert into t values (?)", [(1,), (2,), (39,)])

    @capability
    def total() -> int:
        return conn.execute("select sum(x) from t").fetchone()[0]

    return [total]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    os.environ[SECRET_ENV] = SECRET_VALUE  # inherited by the raylet and its workers
    ray.init(num_cpus=2, include_dashboard=False, namespace="sandbox-tests")
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    try:
        yield session_dir
    finally:
        ray.shutdown()
        os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    key = generate_signing_key()
    private, public = directory / "signing.pem", directory / "signing.pub"
    private.write_bytes(private_key_pem(key))
    public.write_bytes(public_key_pem(key))
    return private, public


@pytest.fixture(scope="module")
def runtimes_pool(cluster: str) -> Iterator[RaySandboxPool]:
    """One pool serving the three runtimes, actors warm before the tests start."""
    specs = {
        "restricted": SandboxSpec("restricted"),
        "process": SandboxSpec("restricted", isolation="process", require=REQUIRED),
        "wasi": SandboxSpec("wasi"),
    }
    with RaySandboxPool(specs, size=2, num_cpus=0.25) as pool:
        pool.wait_ready(timeout=120)
        yield pool


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records") / "runs.jsonl"


@pytest.fixture(scope="module")
def tools_pool(cluster: str, keys: tuple[Path, Path], records_file: Path) -> Iterator[RaySandboxPool]:
    """Restricted sandboxes with capabilities, an env secret, a rate rule, records to a RecordActor."""
    spec = SandboxSpec(
        capabilities=[whoami, token_check, ping],
        factories=[sqlite_capabilities],
        secrets={"token": Secret(env=SECRET_ENV, capabilities=["token_check"])},
        policy={"capabilities": {"ping": {"rate": "5/minute"}}},
    )
    recorder = RecordActor.start(records_file, signing_key_file=keys[0])
    with RaySandboxPool(spec, size=2, num_cpus=0.25, records=recorder,
                        rate_store=ClusterRateStore("sandbox-test-rates")) as pool:
        pool.wait_ready(timeout=120)
        yield pool


# -------------------------------------------------------------------- what cannot travel


def test_capability_that_cannot_travel_is_named_at_construction() -> None:
    conn = sqlite3.connect(":memory:")

    @capability
    def lookup(key: str) -> str:
        return str(conn.execute("select ?", (key,)).fetchone()[0])

    with pytest.raises(TypeError, match=r"capability 'lookup' cannot travel to a Ray worker.*factories="):
        SandboxSpec(capabilities=[lookup])
    conn.close()


def test_literal_secret_is_refused_everywhere_it_could_travel() -> None:
    literal = Secret(value=SECRET_VALUE, capabilities=["token_check"])
    with pytest.raises(SecretInTransit, match="secret 'token' has a literal value"):
        SandboxSpec(capabilities=[token_check], secrets={"token": literal})
    with pytest.raises(SecretInTransit):
        pickle.dumps(literal)
    with pytest.raises(SecretInTransit):
        cloudpickle.dumps({"nested": [literal]})
    by_reference = Secret(env=SECRET_ENV, capabilities=["token_check"])
    assert pickle.loads(pickle.dumps(by_reference)) == by_reference
    spec = SandboxSpec(capabilities=[token_check], secrets={"token": by_reference})
    with pytest.raises(SecretInTransit, match=SECRET_ENV):
        RaySandboxPool(spec, runtime_env={"env_vars": {SECRET_ENV: "x"}})


# -------------------------------------------------------------------- runtimes


@pytest.mark.parametrize("name, runtime, isolation", [
    ("restricted", "restricted", None), ("process", "restricted", "process"), ("wasi", "wasi", None),
])
def test_same_result_as_local(runtimes_pool: RaySandboxPool, name: str, runtime: str, isolation: str | None) -> None:
    failing = "values = [1, 2]\nvalues[5]"
    with Sandbox(runtime, isolation=isolation) as local:  # type: ignore[arg-type]
        expected = [local.run(CODE, inputs=INPUTS), local.run(failing)]
    got = [runtimes_pool.run(CODE, inputs=INPUTS, spec=name), runtimes_pool.run(failing, spec=name)]
    for mine, theirs in zip(got, expected):
        assert (mine.ok, mine.value, mine.stdout, mine.runtime, mine.isolation, mine.layers) == (
            theirs.ok, theirs.value, theirs.stdout, theirs.runtime, theirs.isolation, theirs.layers)
        assert (mine.error and (mine.error.kind, mine.error.type)) == (theirs.error and (theirs.error.kind, theirs.error.type))
    assert got[0].value == {"total": 173, "first": 3, "words": ["brown", "lazy", "quick", "the"]}
    assert got[1].error is not None and got[1].error.type == "IndexError"


def test_required_layers_are_applied_inside_each_actor(runtimes_pool: RaySandboxPool) -> None:
    infos = runtimes_pool.wait_ready(timeout=60)
    assert len({info.pid for info in infos}) == 2 and os.getpid() not in {info.pid for info in infos}
    for info in infos:
        assert set(REQUIRED) <= set(info.layers["process"])
        assert "wasm" in info.layers["wasi"]
    results = runtimes_pool.map(["1 + 1"] * 4, batch_size=1, spec="process")
    assert all(r.ok and r.value == 2 and set(REQUIRED) <= set(r.layers) for r in results)
    escape = runtimes_pool.run("open('/etc/hostname').read()", spec="process")
    assert not escape.ok


def test_map_batches_runs_in_order(runtimes_pool: RaySandboxPool) -> None:
    items = [{"code": "n * 2", "inputs": {"n": n}} for n in range(30)]
    results = runtimes_pool.map(items, batch_size=7, spec="restricted")
    assert [r.value for r in results] == [n * 2 for n in range(30)]
    assert asyncio.run(runtimes_pool.arun("6 * 7", spec="wasi")).value == 42
    assert runtimes_pool.stats().in_flight == (0, 0)


# -------------------------------------------------------------------- capabilities and secrets


def test_factory_capability_opens_its_connection_on_the_worker(tools_pool: RaySandboxPool) -> None:
    result = tools_pool.run("total() + 0")
    assert result.ok and result.value == 42, result.error


def test_capability_host_serves_a_pinned_resource(tools_pool: RaySandboxPool) -> None:
    host = CapabilityHost(sqlite_capabilities)
    try:
        with RaySandboxPool(SandboxSpec(capabilities=host.capabilities), size=1, num_cpus=0.25) as pool:
            pool.wait_ready(timeout=120)
            assert pool.run("total()").value == 42
            refused = pool.run("total(1)")
            assert not refused.ok and "total()" in refused.error.message
    finally:
        host.close()


def test_env_secret_resolved_on_worker_and_never_in_ray_files(cluster: str, tools_pool: RaySandboxPool) -> None:
    code = 'r = token_check(secrets.token, n)\nprint(r["echo"])\nr'
    result = tools_pool.run(code, inputs={"n": len(SECRET_VALUE)})
    assert result.ok, result.error
    assert result.value["length_ok"] is True
    assert SECRET_VALUE not in result.model_dump_json()
    assert "[REDACTED:token]" in result.stdout
    leaked = []
    for path in Path(cluster).rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if SECRET_VALUE.encode() in path.read_bytes():
                    leaked.append(str(path))
            except OSError:
                continue
    assert leaked == []


# -------------------------------------------------------------------- cluster-wide policy and records


def test_shared_rate_limit_admits_exactly_n_across_actors(tools_pool: RaySandboxPool) -> None:
    rated = SandboxSpec(capabilities=[ping], policy={"capabilities": {"ping": {"rate": "5/minute"}}})
    with pytest.raises(ConfigurationError, match="rate_store=ClusterRateStore"):
        RaySandboxPool(rated, size=2)  # each actor would count on its own
    code = 'try:\n    r = ping()\nexcept PolicyDenied:\n    r = "denied"\n[r, whoami()]'
    results = tools_pool.map([code] * 12, batch_size=1)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert len({r.value[1] for r in results}) == 2  # both actors served runs
    assert sum(r.value[0] == "pong" for r in results) == 5


def test_per_run_principal_and_limits(tools_pool: RaySandboxPool, records_file: Path) -> None:
    code = 'try:\n    r = ping()\nexcept PolicyDenied:\n    r = "denied"\n[r, whoami()]'
    results = tools_pool.map([{"code": code, "principal": "agent-b"}] * 8, batch_size=1)
    assert len({r.value[1] for r in results}) == 2
    assert sum(r.value[0] == "pong" for r in results) == 5  # agent-b's own 5 per minute, across both actors
    assert any(r.principal is not None and r.principal.id == "agent-b" for r in read_records(records_file))
    stopped = tools_pool.run("while True:\n    pass", limits=Limits(cpu_seconds=0.3, wall_seconds=2))
    assert not stopped.ok and stopped.error.kind == "limit_exceeded"
    assert tools_pool.run("1 + 1").ok  # the spec's own sandbox is untouched


def test_forty_runs_over_two_actors_form_one_verified_chain(
    tools_pool: RaySandboxPool, records_file: Path, keys: tuple[Path, Path]
) -> None:
    before = len(list(read_records(records_file))) if records_file.exists() else 0
    results = [f.result() for f in [tools_pool.submit("whoami()") for _ in range(40)]]
    assert len({r.value for r in results}) == 2
    records = list(read_records(records_file))
    assert len(records) - before == 40
    assert {r.run_id for r in results} <= {r.run_id for r in records}
    verify = [sys.executable, "-m", "sandbox.cli", "verify", str(records_file), "--public-key", str(keys[1])]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{len(records)} record(s), chain intact" in done.stdout
    assert SECRET_VALUE not in records_file.read_text()


# -------------------------------------------------------------------- sessions and data


def test_session_is_pinned_to_one_actor(tools_pool: RaySandboxPool) -> None:
    with tools_pool.session() as session:
        first = session.run("count = 0\nhome = whoami()\nhome")
        assert first.ok
        for expected in range(1, 6):
            busy = tools_pool.submit("whoami()")  # other runs keep going to any actor
            result = session.run("count += 1\n[count, whoami() == home]")
            assert result.value == [expected, True]
            busy.result()


class Scaled(BaseModel):
    key: str
    scaled: int


def test_transform_batches_over_a_dataset(tools_pool: RaySandboxPool) -> None:
    data = ray.data.from_items([{"key": f"k{i}", "n": i} for i in range(20)])
    code = "def transform(rows):\n    return [{'key': r['key'], 'scaled': r['n'] * 10} for r in rows]"
    out = transform_batches(data, code, pool=tools_pool, output_model=Scaled, batch_size=5).take_all()
    assert sorted((row["key"], row["scaled"]) for row in out) == sorted((f"k{i}", i * 10) for i in range(20))
    broken = "def transform(rows):\n    return [1 / 0]"
    with pytest.raises(Exception, match="ZeroDivisionError") as failure:
        transform_batches(data, broken, pool=tools_pool, batch_size=10).take_all()
    assert isinstance(failure.value, TransformFailed) or "TransformFailed" in str(failure.value)


# -------------------------------------------------------------------- a worker lost mid-run


def test_actor_killed_mid_run_is_worker_lost_and_not_retried(cluster: str, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"

    @capability
    def side_effect() -> int:
        with open(calls, "a") as fh:
            fh.write("called\n")
        return 1

    spec = SandboxSpec(capabilities=[side_effect], limits=Limits(cpu_seconds=60, wall_seconds=60))
    sink = MemorySink()
    with RaySandboxPool(spec, size=2, num_cpus=0.25, max_restarts=1, records=sink) as pool:
        pool.wait_ready(timeout=120)
        pending = pool.submit("side_effect()\nwhile True:\n    pass")
        deadline = time.monotonic() + 30
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = pool.stats().in_flight.index(1)
        ray.kill(pool.actors[busy], no_restart=False)
        result = pending.result(timeout=60)
        assert not result.ok
        assert (result.error.kind, result.error.type) == ("internal", "WorkerLost")
        assert pool.stats().lost == 1
        lost = [r for r in sink.records if r.run_id == result.run_id]
        assert len(lost) == 1 and (lost[0].outcome.kind, lost[0].outcome.type) == ("internal", "WorkerLost")
        again = pool.map(["1 + 1"] * 4, batch_size=1)  # the pool keeps serving, around the lost actor
        assert [r.value for r in again] == [2] * 4
        deadline = time.monotonic() + 60
        while pool.stats().down and time.monotonic() < deadline:  # Ray restarts it
            time.sleep(0.2)
        assert pool.stats().down == ()
        assert calls.read_text().count("called") == 1  # the lost run was not replayed
