"""The pytest plugin, tested with pytester as its users run it."""

from __future__ import annotations

import pytest

from infra.xvfb import XServer


LENDING_TESTS = """
def test_lent(x11passthrough):
    assert x11passthrough.display.startswith("tcp/host.docker.internal:")
    assert x11passthrough.xauthority.exists()

def test_factory(x11passthrough_factory):
    a = x11passthrough_factory()
    b = x11passthrough_factory(auth="forward")
    assert a.display != b.display
"""


@pytest.fixture(name="suite")
def _suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A test suite using the fixtures, with the relay on loopback (no docker0 needed)."""
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_lend=LENDING_TESTS)
    pytester.makeini("[pytest]\nx11passthrough_bind = 127.0.0.1\n")
    return pytester


def test_fixtures_lend_the_display(
    suite: pytest.Pytester, xvfb: XServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DISPLAY set, both fixtures lend it and their passthroughs differ."""
    monkeypatch.setenv("DISPLAY", xvfb.display)
    monkeypatch.setenv("XAUTHORITY", str(xvfb.xauthority))
    suite.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_without_a_display_the_tests_skip(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DISPLAY: the tests that need one are skipped, not failed."""
    monkeypatch.delenv("DISPLAY", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no DISPLAY is set*"])


def test_required_display_fails_instead(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--x11passthrough-required turns the skips into failures naming the reason.

    The fixture's failure is a setup error of the test using it; the factory called in a test
    body fails that test.
    """
    monkeypatch.delenv("DISPLAY", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--x11passthrough-required")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*no DISPLAY is set*"])
