"""The root conftest.py's CI rule: with HXP_CI=1 a skip fails, unless nothing could help it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"
Run = Callable[..., pytest.RunResult]

TESTS = """
import pytest

def test_passes():
    pass

def test_skips_at_run_time():
    pytest.skip("the vLLM CPU venv is missing")

@pytest.mark.skipif(True, reason="promtool is not installed")
def test_skipped_by_a_marker():
    pass

@pytest.fixture
def server():
    pytest.skip("not obtainable here: the Qdrant binary")

def test_needs_what_no_machine_has(server):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""

MODULE_SKIP = """
import pytest

pytest.skip("needs root", allow_module_level=True)

def test_never_collected():
    pass
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Run:
    """run(HXP_CI value or None, name=source, ...): pytest on those files with the root hooks."""
    pytester.makeconftest(ROOT_CONFTEST.read_text(encoding="utf-8"))
    # The installed plugins (asyncio, hypothesis, testinfra) play no part and take a second.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run_with(ci: str | None, **files: str) -> pytest.RunResult:
        if ci is None:
            monkeypatch.delenv("HXP_CI", raising=False)
        else:
            monkeypatch.setenv("HXP_CI", ci)
        pytester.makepyfile(**files)
        return pytester.runpytest("-rA")

    return run_with


def test_outside_ci_a_skip_is_a_skip(run: Run) -> None:
    result = run(None, test_sample=TESTS)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_hxp_ci_other_than_1_changes_nothing(run: Run) -> None:
    run("0", test_sample=TESTS).assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_in_ci_a_skip_fails_with_its_reason(run: Run) -> None:
    result = run("1", test_sample=TESTS)
    # A skip in the call fails the test; one in setup (a marker, a fixture) is an error.
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*/test_sample.py:*: skipped in CI (HXP_CI=1)*: the vLLM CPU venv is missing",
            "*/test_sample.py:*: skipped in CI (HXP_CI=1)*: promtool is not installed",
            "FAILED test_sample.py::test_skips_at_run_time*",
            "ERROR test_sample.py::test_skipped_by_a_marker*",
            "SKIPPED [[]1[]] test_sample.py:*: not obtainable here: the Qdrant binary",
            "XFAIL test_sample.py::test_known_bug*",
        ]
    )


def test_in_ci_a_module_level_skip_fails(run: Run) -> None:
    result = run("1", test_module=MODULE_SKIP)
    result.assert_outcomes(errors=1)
    assert "needs root" in result.stdout.str()
    assert run(None, test_module=MODULE_SKIP).ret == pytest.ExitCode.NO_TESTS_COLLECTED
