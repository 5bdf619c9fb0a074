"""Developer tasks: `nox` runs lint, typing, tests; `nox -s e2e` and `nox -s bench` on demand."""

from __future__ import annotations

import os

from pathlib import Path

import nox
import tomllib


nox.options.sessions = ["lint", "typing", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = False

ROOT = Path(__file__).parent
GROUPS = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
PYTHON = os.environ.get("NOX_PYTHON") or None


def _install(session: nox.Session, *groups: str) -> None:
    deps = [dep for group in groups for dep in GROUPS[group]]
    session.install(".", *deps)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests against real Xvfb servers (no Docker, no sshd)."""
    _install(session, "tests")
    session.run(
        "pytest",
        "-m",
        "not e2e",
        "--cov=x11passthrough",
        "--cov-report=term",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """End-to-end tests that need a Docker engine, network namespaces or sshd."""
    _install(session, "tests")
    session.run("pytest", "-m", "e2e", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(*GROUPS["lint"])
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """Mypy --strict over the package and the tests that use its public API."""
    _install(session, "typing")
    session.run("mypy", "src", "tests", "examples", "benchmarks")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx documentation with warnings as errors."""
    _install(session, "docs")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: relay vs direct vs socat, Xauthority load/find, passthrough enter/exit."""
    session.install(".")
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
