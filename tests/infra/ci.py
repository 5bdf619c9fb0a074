"""
The CI skip policy, and running setup commands that must succeed.

A test that needs something a developer's machine may lack calls :func:`require`: it skips
there, but fails under ``CI=true``, where nothing may be skipped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from collections.abc import Mapping, Sequence

import pytest


IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class E2ESetupError(RuntimeError):
    """A piece of test infrastructure could not be set up."""


def require(what: str, ok: bool, hint: str = "") -> None:
    """Skip the test when `ok` is false, or fail it in CI, where nothing may be skipped."""
    if ok:
        return
    message = f"needs {what}" + (f" ({hint})" if hint else "")
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}", pytrace=False)
    pytest.skip(message)


def require_executables(*names: str) -> None:
    """Require every named program on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    require(", ".join(missing), not missing, "install them, e.g. with .ci/run's apt line")


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    stdin_text: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a setup command; raise :class:`E2ESetupError` with its output when it fails."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=stdin_text,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        msg = f"{what} failed: `{shlex.join(argv)}` exited {done.returncode}: {output}"
        raise E2ESetupError(msg)
    return done
