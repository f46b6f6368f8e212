"""Smoke test of the benchmark harness at minimal scale: it runs, writes JSON and PNGs, and
reports skipped subjects with their reason instead of numbers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("rich")

from benchmarks import readme, stats, subjects, workloads  # noqa: E402
from benchmarks.runner import Config  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402


def test_capture_last_assigns_trailing_expression() -> None:
    assert subjects.capture_last("x = 1\nx + 1").endswith(f"{subjects.RESULT_NAME} = x + 1")
    assert subjects.capture_last("x = 1") == "x = 1"


def test_json_payload_is_about_one_megabyte() -> None:
    size = len(json.dumps(workloads.WORKLOADS[3].make_inputs()["data"]))
    assert 0.9e6 < size < 1.2e6


def test_native_answers_every_workload_it_can() -> None:
    native = subjects.NativeSubject()
    native.setup()
    for w in workloads.WORKLOADS:
        if w.mode == "fresh":
            assert w.check(native.run(w.code, w.make_inputs())), w.name
    session = native.open_session()
    value = None
    for step in workloads.AGENT_TURN:
        value = session.run(step)
    assert workloads.WORKLOADS[-1].check(value)


def test_summary_hides_tails_of_small_cells_and_brackets_the_median() -> None:
    small = stats.summarise([float(i) for i in range(1, 11)])
    assert small["p90"] is None and small["p99"] is None
    low, high = small["median_ci95"]
    assert low <= small["median"] <= high and low > 1.0 and high < 10.0
    big = stats.summarise([float(i) for i in range(1, 1001)])
    assert big["p90"] == 900.0 and big["p99"] == 990.0
    low, high = big["median_ci95"]
    assert 460 <= low < 500.5 < high <= 540
    assert stats.summarise([1.0, 2.0, 3.0])["median_ci95"] is None


def test_out_defaults_to_a_temporary_directory() -> None:
    config = Config.for_mode(True)
    assert config.out is not None and config.out.is_dir()
    assert Path(tempfile.gettempdir()) in config.out.parents
    config.out.rmdir()


def test_quick_run_writes_json_pngs_and_skip_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(self: subjects.Subject) -> None:
        raise subjects.Unavailable("made unavailable by the smoke test")

    monkeypatch.setattr(subjects.MontySubject, "setup", unavailable)
    out = tmp_path / "bench"
    code = main([
        "--quick", "--out", str(out), "--budget", "0.02", "--humaneval-limit", "2",
        "--subjects", "native,restricted,monty,restrictedpython,python-c",
        "--workloads", "trivial_fresh,trivial_session,cpu_loop,humaneval",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["python"] and results["machine"]["versions"]["RestrictedPython"]
    for name in ("startup", "overhead", "scaling", "humaneval"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    subjects_info = results["subjects"]
    assert subjects_info["monty"]["status"] == "skipped"
    assert subjects_info["monty"]["reason"] == "made unavailable by the smoke test"
    for info in subjects_info.values():
        assert info["status"] == "ok" or info["reason"], info
    for workload in results["workloads"].values():
        for entry in workload["results"].values():
            assert entry["status"] == "ok" or entry.get("reason"), entry

    native = results["workloads"]["trivial_fresh"]["results"]["native"]
    assert native["status"] == "ok" and native["n"] >= 3 and native["median"] > 0
    assert native["ratio_native"] == pytest.approx(1.0)
    assert results["workloads"]["trivial_session"]["results"]["python-c"]["status"] == "n/a"
    he = results["workloads"]["humaneval"]["results"]["native"]
    assert he["passed"] == 2 and he["problems"] == 2
    assert results["scaling"]["results"]["native"]["runs_per_second"]["1"]["runs_per_second"] > 0
    assert results["rss"]["native"]["first_result_seconds"] > 0
    assert {t["area"] for t in results["targets"]} == {"restricted", "wasi", "process"}
    assert all("issue" not in t for t in results["targets"])
    assert results["load_before"]["cpus"] >= 1 and isinstance(results["load_before"]["busy"], bool)
    assert ("load_warning" in results) and (results["load_warning"] is None) == (
        not results["load_before"]["busy"] and not results["load_after"]["busy"])
    for workload in ("trivial_fresh", "trivial_session", "cpu_loop"):
        for entry in results["workloads"][workload]["results"].values():
            if entry["status"] == "ok" and entry["n"] < 20:
                assert entry["p90"] is None and entry["p99"] is None, entry

    assert results["config"]["settle"] is True and results["settle"]["enabled"] is True
    assert "not settled here" in results["scaling"]["how"]

    markdown = readme.render(results, "benchmarks/results")
    assert "| native exec |" in markdown and "made unavailable by the smoke test" in markdown
    assert "settled between bursts" in markdown and "sustained load" in markdown
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n{readme.START}\nold\n{readme.END}\n\nafter\n")
    assert readme.main(["--results", str(out / "results.json"), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and "| native exec |" in text and text.endswith("after\n")


def test_ablated_compile_leaves_out_exactly_the_switched_off_checks() -> None:
    from benchmarks.ablation import _compile_without

    loop = workloads.CPU_LOOP + "\nwhile total < 0:\n    total += 1\n"
    names = lambda off: set(_compile_without(frozenset(off), loop).code.co_names)  # noqa: E731
    assert {"_tick_", "_getiter_", "_mod_"} <= names(())
    assert not {"_tick_", "_getiter_"} & names({"ticks"}) and "_mod_" in names({"ticks"})
    assert "_mod_" not in names({"size-guards"}) and "_tick_" in names({"size-guards"})


def test_ablation_section_table_and_plot(tmp_path: Path) -> None:
    from rich.console import Console

    from benchmarks import ablation, machine, plots, report

    section = ablation.run(ablation.AblationConfig(runtimes=("restricted",), workloads=("trivial_fresh", "cpu_loop"),
                                                   budget_seconds=0.01, min_samples=6, max_samples=20))
    entry = section["runtimes"]["restricted"]
    assert entry["status"] == "ok" and entry["layers"] == ["ticks", "size-guards", "alloc-cap"]
    assert set(entry["variants"]) == {"none", "ticks", "size-guards", "alloc-cap", "all"}
    for layer in ("ticks", "size-guards", "alloc-cap", "all"):
        for workload in ("trivial_fresh", "cpu_loop"):
            cost = entry["costs"][layer][workload]
            low, high = cost["ci95"]
            assert low <= cost["median"] <= high
    assert section["runtimes"]["wasi"]["status"] == "skipped"
    assert set(section["runtimes"]["wasi"]["not_switchable"]) == {"fuel", "memory-limit"}
    results = {"ablation": section, "machine": machine.describe(), "config": {"quick": True}}
    console = Console(record=True, width=200)
    report.print_ablation(section, console)
    text = console.export_text()
    assert "size-guards" in text and "not switchable" in text
    png = plots.ablation(results, tmp_path / "ablation.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_bursts_are_sized_past_a_cold_first_call() -> None:
    from benchmarks.runner import SIZING_CALLS, _burst_size

    calls = []
    assert _burst_size(lambda: calls.append(1), [1.0]) == 50  # a 1 s first call, then no-op calls
    assert len(calls) == SIZING_CALLS - 1


@pytest.mark.parametrize("settle", [True, False])
def test_every_subject_settles_before_each_burst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 settle: bool) -> None:
    """Before each burst the runner lets every subject settle (untimed); a subject that does not
    settle in time is counted in the results. Without settling (``--no-settle``) nothing is waited on."""
    from benchmarks.runner import Runner

    settles: list[str] = []

    def late(self: subjects.Subject, timeout: float) -> bool:
        settles.append(self.name)
        return self.name != "restrictedpython"

    monkeypatch.setattr(subjects.Subject, "settle", late)
    config = Config.for_mode(True, out=tmp_path, subjects=["native", "restrictedpython"], workloads=["trivial_fresh"],
                             budget_seconds=0.01, concurrency=(1,), scaling_seconds=0.01)
    config.rss = config.plots = False
    config.settle = settle
    results = Runner(config).run()
    if settle:
        rounds = len(settles) // 2
        cells = results["workloads"]["trivial_fresh"]["results"].values()
        bursts = sum(-(-cell["n"] // cell["burst"]) for cell in cells)
        assert rounds == bursts + 2  # one settle of both per burst, and one before each subject's scaling level
        assert settles[:2] == ["native", "restrictedpython"]  # every subject, not only the next one
        assert results["settle"] == {"enabled": True, "how": results["settle"]["how"],
                                     "timeouts": {"restrictedpython": rounds}}
    else:
        assert settles == [] and results["settle"]["timeouts"] == {}
