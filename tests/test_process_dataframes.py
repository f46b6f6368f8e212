"""numpy and pandas as optional modules under ``isolation="process"`` (``Sandbox(modules=...)``).

They are offered only there: the OS layers (rlimits, seccomp, netns, Landlock) contain what
the language layer cannot see (raw memory, file I/O, long C calls). See docs/data.md.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("process isolation is Linux-only", allow_module_level=True)
if importlib.util.find_spec("numpy") is None or importlib.util.find_spec("pandas") is None:
    pytest.skip("numpy/pandas not installed: pip install 'sandbox[dataframes]'", allow_module_level=True)

from sandbox import Sandbox  # noqa: E402
from sandbox.errors import ConfigurationError  # noqa: E402
from sandbox.limits import Limits  # noqa: E402

LIMITS = Limits(cpu_seconds=5, wall_seconds=10, memory_bytes=256 << 20)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(isolation="process", modules=("numpy", "pandas"), limits=LIMITS) as box:
        yield box


@pytest.fixture(scope="module")
def plain():
    with Sandbox(isolation="process", limits=LIMITS) as box:
        yield box


def test_pandas_transform(sb):
    code = """
import pandas as pd

def transform(rows):
    df = pd.DataFrame(rows)
    df["amount"] = df["amount"].astype(float) * 2
    out = df.groupby("region", as_index=False)["amount"].sum().sort_values("region")
    return out.to_dict("records")
"""
    rows = [{"region": "north", "amount": "10"}, {"region": "south", "amount": "5"},
            {"region": "north", "amount": "2.5"}]
    result = sb.transform(code, rows)
    assert result.ok, result.run.error
    assert result.rows == [{"region": "north", "amount": 25.0}, {"region": "south", "amount": 10.0}]


def test_numpy(sb):
    result = sb.run("import numpy as np\nint(np.arange(10).sum())")
    assert result.ok, result.error
    assert result.value == 45


def test_without_modules_the_import_is_refused(plain):
    for name in ("numpy", "pandas"):
        result = plain.run(f"import {name}")
        assert not result.ok
        assert result.error.type == "ImportError" and name in result.error.message


def test_pandas_alone_implies_numpy():
    with Sandbox(isolation="process", modules=["pandas"], limits=LIMITS) as box:
        result = box.run("import pandas as pd\nimport numpy as np\nint(pd.Series(np.arange(4)).sum())")
    assert result.ok, result.error
    assert result.value == 6


@pytest.mark.parametrize("kwargs", [{}, {"isolation": None}, {"runtime": "wasi"}])
def test_only_under_process_isolation(kwargs):
    with pytest.raises(ConfigurationError, match="only with isolation='process'"):
        Sandbox(modules=("numpy",), **kwargs)


def test_unknown_or_missing_module(monkeypatch):
    with pytest.raises(ConfigurationError, match="unknown optional module"):
        Sandbox(isolation="process", modules=("scipy",))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pandas" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'sandbox\[dataframes\]'"):
        Sandbox(isolation="process", modules=("pandas",))


def test_file_escapes_fail_and_the_host_is_intact(sb, tmp_path):
    canary = secrets.token_hex(16)
    secret = tmp_path / "canary.csv"
    secret.write_text(f"x\n{canary}\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(secret, 0o644)  # world-readable: only the process layers stand in the way
    target = tmp_path / "written.bin"
    attempts = {
        "np.load": f"import numpy as np\nnp.load({str(secret)!r}, allow_pickle=True)",
        "np.loadtxt": f"import numpy as np\nnp.loadtxt({str(secret)!r}, dtype=str)",
        "pd.read_csv": f"import pandas as pd\npd.read_csv({str(secret)!r}).to_dict('records')",
        "tofile": f"import numpy as np\nnp.arange(3).tofile({str(target)!r})",
        "np.save": f"import numpy as np\nnp.save({str(target)!r}, np.arange(3))",
        "to_csv": f"import pandas as pd\npd.DataFrame({{'a': [1]}}).to_csv({str(target)!r})",
    }
    for label, code in attempts.items():
        result = sb.run(code)
        assert not result.ok, label
        assert canary not in repr(result.value) + result.stdout + result.error.message, label
    assert not target.exists()
    assert secret.read_text() == f"x\n{canary}\n"


def test_memory_limit_holds(sb):
    result = sb.run("import numpy as np\nnp.zeros(10**10)")
    assert not result.ok
    assert result.error.kind == "limit_exceeded" and result.error.limit == "memory"
    assert sb.run("import numpy as np\nint(np.ones(3).sum())").value == 3  # the pool recovered


def test_in_process_runtime_never_allows_them():
    # The process driver extends the allowlist in its zygote only, never in this process.
    from runtimes.restricted.guards import WRITABLE_PACKAGES
    from runtimes.restricted.modules import MODULES

    assert "numpy" not in MODULES.allowed and not WRITABLE_PACKAGES
