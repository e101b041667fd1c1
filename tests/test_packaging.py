"""The installed package as its users meet it: a type checker finds it, and the test extra's pins hold.

The mypy test runs from a temporary directory outside the source tree, so
mypy can only find hybrid_queue where it is installed (for ``make test``,
an editable install that a type checker can follow).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_ROOT = Path(__file__).resolve().parent.parent

# A user's program: right calls written plainly, types pinned with
# assert_type, a wrong call with an ignore that --strict reports as unused
# if hybrid_queue's types were not seen (everything Any).
USER_PROGRAM = """\
from typing import assert_type

from hybrid_queue import HybridQueue, TaskFuture


def double(x: int) -> int:
    return 2 * x


def main() -> int:
    queue = HybridQueue(workers=2)
    queue.start_background()
    try:
        future = queue.submit_blocking(double, 21, priority=5)
        assert_type(future, TaskFuture[int])
        queue.submit_blocking(double, "21")  # type: ignore[arg-type]
        return future.result()
    finally:
        queue.shutdown_blocking()
"""

# What mypy says when it cannot see the package, or sees it without its types.
NOT_FOUND = (
    "Cannot find implementation or library stub",
    "module is installed, but missing library stubs or py.typed marker",
)


@pytest.mark.timeout(180)
def test_mypy_strict_follows_the_installed_package(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(_ROOT), "the program must lie outside the source tree"
    (tmp_path / "user_program.py").write_text(USER_PROGRAM)
    # No search path but the interpreter's: what an installed package gets.
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), "user_program.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    report = done.stdout + done.stderr
    # An editable install in setuptools' strict mode links the modules that
    # existed when it ran; `make` reinstalls when hybrid_queue/ gains one.
    hint = "\n(a module added since the install? rerun `make .venv/.stamp-test`)"
    assert not [line for line in report.splitlines() if any(s in line for s in NOT_FOUND)], report + hint
    assert done.returncode == 0, report


# ------------------------------------------------------------- the test extra

# pytest-asyncio added the hook tests/conftest.py implements (to run every
# async test on asyncio and on uvloop) in 1.4.0; 1.3.0 is the last release without it.
LOOP_FACTORIES_HOOK = "pytest_asyncio_loop_factories"
HOOK_RELEASE = "1.4.0"
LAST_RELEASE_WITHOUT_HOOK = "1.3.0"


def _test_extra() -> dict[str, Requirement]:
    """The `test` extra of the installed hybrid_queue, by canonical project name."""
    requirements = [Requirement(line) for line in importlib.metadata.requires("hybrid_queue") or []]
    return {
        canonicalize_name(r.name): r
        for r in requirements
        if r.marker is not None and r.marker.evaluate({"extra": "test"})
    }


@pytest.mark.parametrize("name", sorted(_test_extra()))
def test_installed_version_satisfies_the_test_extra(name: str) -> None:
    requirement = _test_extra()[name]
    installed = importlib.metadata.version(name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} installed; {requirement}"


def test_pytest_asyncio_pin_admits_only_releases_with_the_loop_factories_hook(pytestconfig: pytest.Config) -> None:
    # The hook is why the pin is what it is: conftest implements it, and the
    # installed pytest-asyncio declares it.
    assert hasattr(conftest, LOOP_FACTORIES_HOOK)
    assert hasattr(pytestconfig.hook, LOOP_FACTORIES_HOOK)
    specifier = _test_extra()["pytest-asyncio"].specifier
    assert specifier.contains(HOOK_RELEASE), specifier
    assert not specifier.contains(LAST_RELEASE_WITHOUT_HOOK), f"{specifier} admits a pytest-asyncio without the hook"
