"""
Developer tasks. ``nox`` runs lint, typing and the tests on every supported Python it finds;
``nox -s e2e``, ``docs`` and ``bench`` on demand; ``scripts/test`` runs what CI runs.

The supported Pythons come from the classifiers in pyproject.toml; dependencies from its
dependency groups (``pip install --group``).
"""

from __future__ import annotations

import os

from pathlib import Path

import nox
import tomllib


ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYTHONS = [
    classifier.rsplit(" ", 1)[-1]
    for classifier in PYPROJECT["project"]["classifiers"]
    if classifier.startswith("Programming Language :: Python :: 3.")
]
#: The Python of the single-interpreter sessions (lint, typing, docs).
DEFAULT_PYTHON = (ROOT / ".python-version-default").read_text().strip()

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True


def _install(session: nox.Session, *groups: str, package: bool = True) -> None:
    """Install the package (unless told not to) and the named dependency groups."""
    session.install("pip>=25.1")
    arguments = [f"--group={group}" for group in groups]
    session.install(*([ROOT.as_posix()] if package else []), *arguments)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Unit and integration tests against real Xvfb servers (no Docker, no sshd)."""
    _install(session, "tests")
    session.env["COVERAGE_FILE"] = str(ROOT / ".coverage")
    # coverage runs pytest, so the pytest11 entry point (our plugin and __init__) is measured.
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", "-m", "not e2e", *session.posargs)
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python=PYTHONS)
def e2e(session: nox.Session) -> None:
    """End-to-end tests: Docker and Podman engines, containers, network namespaces, sshd."""
    _install(session, "tests")
    session.run("pytest", "-m", "e2e", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    _install(session, "lint", package=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def typing(session: nox.Session) -> None:
    """Mypy --strict over the package, the tests, tests/typing/api.py and the examples."""
    _install(session, "typing")
    session.run("mypy", "src", "tests", "examples", "benchmarks")


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx documentation; every warning is an error, nothing is suppressed."""
    _install(session, "docs")
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", "docs/_build")


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks; pass a script's name and its options, e.g. ``nox -s bench -- apps --quick``."""
    _install(session, "bench")
    names = session.posargs[:1] or [p.stem.removeprefix("bench_") for p in _benchmarks()]
    for name in names:
        session.run("python", str(ROOT / "benchmarks" / f"bench_{name}.py"), *session.posargs[1:])


def _benchmarks() -> list[Path]:
    return sorted((ROOT / "benchmarks").glob("bench_*.py"))


if os.environ.get("CI"):
    # CI runs the interpreter it has; the others are for developers' machines.
    nox.options.error_on_missing_interpreters = True
