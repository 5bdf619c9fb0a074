"""The command line, run as a user would run it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from pathlib import Path

import pytest

from infra.ci import require_executables
from infra.cli import cli, display_options
from infra.xvfb import XServer


# Runs xdpyinfo against the relay on loopback, using what the CLI spliced into its argv.
CLIENT = textwrap.dedent(
    """
    import os, subprocess, sys
    argv = sys.argv[1:]
    env = dict(os.environ)
    for i, word in enumerate(argv):
        if word == "--env":
            name, value = argv[i + 1].split("=", 1)
            env[name] = value
        if word == "--volume":
            env["XAUTHORITY"] = argv[i + 1].split(":")[0]
    env["DISPLAY"] = "localhost:" + env["DISPLAY"].rsplit(":", 1)[1]
    sys.exit(subprocess.call(["xdpyinfo"], env=env, stdout=subprocess.DEVNULL))
    """
)


def test_cli_run_lends_the_display(xvfb: XServer) -> None:
    """`x11passthrough run -- CMD {x11}` gives CMD arguments that reach the display."""
    require_executables("xdpyinfo")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "x11passthrough",
            *display_options(xvfb),
            "--bind",
            "127.0.0.1",
            "run",
            "--",
            sys.executable,
            "-c",
            CLIENT,
            "{x11}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_cli_errors_are_short_and_actionable(tmp_path: Path) -> None:
    """Without a display: exit status 2 and one line naming the problem, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "x11passthrough", "run", "--", "docker", "run", "img"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 125
    assert result.stderr.startswith("x11passthrough: error: DISPLAY is not set")
    assert "Traceback" not in result.stderr


# The wrapped command: reports its session file, then waits; on a signal it says which.
WAITER = textwrap.dedent(
    """
    import signal, sys, time
    argv = sys.argv[1:]
    volume = argv[argv.index("--volume") + 1].split(":")[0]
    def on_signal(signum, frame):
        print("got", signum, flush=True)
        sys.exit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(volume, flush=True)
    while True:
        time.sleep(60)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cli_run_passes_signals_on_and_cleans_up(
    xvfb: XServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """A signal to `run` reaches the command; the session directory is gone; 128+N."""
    command = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "x11passthrough",
            *display_options(xvfb),
            "--bind",
            "127.0.0.1",
            "--host-dir",
            str(tmp_path),
            "run",
            "--",
            sys.executable,
            "-c",
            WAITER,
            "{x11}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert command.stdout is not None
    session = Path(command.stdout.readline().strip())
    assert session.exists()
    command.send_signal(sig)
    assert command.stdout.readline().strip() == f"got {int(sig)}"
    assert command.wait(30) == 128 + sig
    command.stdout.close()
    assert not session.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "args", "doctor"):
        assert command in result.stdout
    assert "--xvfb" in cli("run", "--help").stdout


def test_a_dead_display_is_one_line_of_cli_words(xvfb: XServer) -> None:
    result = cli("--display", ":4242", "run", "--", "docker", "run", "img")
    assert result.returncode == 125
    assert result.stderr.startswith("x11passthrough: error: no X server answers for display")
    assert "Traceback" not in result.stderr


def test_a_wrong_cookie_names_the_file(xvfb: XServer, tmp_path: Path) -> None:
    wrong = xvfb.authority_file(tmp_path / "wrong.xauth", b"\xab" * 16)
    result = cli(
        "--display", xvfb.display, "--xauthority", str(wrong), "run", "--", "docker", "run", "i"
    )
    assert result.returncode == 125
    assert "refused the cookie" in result.stderr
    assert str(wrong) in result.stderr
    assert "--xauthority" in result.stderr  # the library's xauthority=... in CLI words


def test_a_missing_engine_command_is_one_line(xvfb: XServer, tmp_path: Path) -> None:
    env = {**xvfb.env(), "PATH": str(tmp_path)}
    result = cli("run", "--", "docker", "run", "--rm", "img", env=env)
    assert result.returncode == 125
    assert result.stderr.startswith("x11passthrough: error: cannot run 'docker'")
    assert "on PATH" in result.stderr


def test_errors_name_flags_where_the_library_names_options(xvfb: XServer, tmp_path: Path) -> None:
    """The CLI spells the options an error carries as its flags; no keyword argument leaks."""
    mixed = cli(*display_options(xvfb), "--transport", "unix", "--bind", "127.0.0.1", "args")
    assert mixed.returncode == 125
    assert mixed.stderr.startswith("x11passthrough: error: --bind 127.0.0.1 is for the TCP")
    assert "pass --transport tcp" in mixed.stderr
    allow = cli(*display_options(xvfb), "--transport", "unix", "--allow", "10.0.0.0/8", "args")
    assert "--allow 10.0.0.0/8 filters the relay's TCP clients" in allow.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    not_a_dir = cli(*display_options(xvfb), "--host-dir", str(blocker / "sub"), "args")
    assert not_a_dir.returncode == 125
    assert "pass --host-dir ... pointing to a writable directory" in not_a_dir.stderr
    for result in (mixed, allow, not_a_dir):
        assert "=" not in result.stderr.replace("DISPLAY=", ""), result.stderr


def test_conflicting_options_are_refused_before_anything_starts(xvfb: XServer) -> None:
    base = ("--display", xvfb.display, "--xauthority", str(xvfb.xauthority))
    none_tcp = cli(
        *base, "--transport", "tcp", "run", "--", "docker", "run", "--network", "none", "i"
    )
    assert none_tcp.returncode == 125
    assert "--network none" in none_tcp.stderr
    forward = cli(*base, "--auth", "forward", "run", "--", "docker", "run", "-u", "1000", "i")
    assert forward.returncode == 125
    assert "--auth substitute" in forward.stderr
    both = cli("--xvfb", *base, "run", "--", "docker", "run", "i")
    assert both.returncode == 125
    assert "leave out --display" in both.stderr
    screen = cli("--xvfb", "--xvfb-screen", "big", "run", "--", "docker", "run", "i")
    assert screen.returncode == 125
    assert "--xvfb-screen 'big'" in screen.stderr


def hold(
    *args: str, lines: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `args` (which holds the display), read its first `lines` lines of output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "x11passthrough", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    return process, [process.stdout.readline() for _ in range(lines)]


def finish(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    code = process.wait(30)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return code


def test_args_as_a_compose_override_file(xvfb: XServer) -> None:
    import yaml

    process, lines = hold(
        *display_options(xvfb),
        "args",
        "--format",
        "compose",
        "--service",
        "gui",
        lines=14,
    )
    try:
        override = yaml.safe_load("".join(lines))
        service = override["services"]["gui"]
        assert service["environment"]["DISPLAY"].startswith(":")
        sources = [v["source"] for v in service["volumes"]]
        assert all(Path(s).exists() for s in sources)
        assert {v["target"] for v in service["volumes"]} >= {"/tmp/.x11passthrough.xauth"}
    finally:
        assert finish(process) == 128 + signal.SIGTERM
    assert not any(Path(s).exists() for s in sources)


def test_args_as_shell_variables(xvfb: XServer) -> None:
    process, lines = hold(
        *display_options(xvfb),
        "args",
        "--format",
        "env",
        lines=6,
    )
    try:
        shown = subprocess.run(
            ["bash", "-c", "".join(lines) + 'echo "$X11PASSTHROUGH_DISPLAY|$X11PASSTHROUGH_ARGS"'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        display, argv = shown.split("|")
        assert display.startswith(":")
        assert f"DISPLAY={display}" in argv
        assert "--volume" in argv
    finally:
        assert finish(process) == 128 + signal.SIGTERM


def test_doctor_passes_on_a_working_display(xvfb: XServer) -> None:
    result = cli(*display_options(xvfb), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line.split()[:2] for line in result.stdout.splitlines() if line[:1] != " "]
    assert ["ok", "display"] in steps
    assert ["ok", "cookie"] in steps
    assert ["ok", "relay"] in steps
    assert ["ok", "server"] in steps
    assert "1024x768x24" in result.stdout
    assert result.stdout.rstrip().endswith("a container would get a working display")


@pytest.mark.parametrize("problem", ["no display", "dead display", "wrong cookie"])
def test_doctor_says_what_is_wrong(xvfb: XServer, tmp_path: Path, problem: str) -> None:
    env = {k: v for k, v in xvfb.env().items() if k != "DISPLAY"}
    args: list[str] = []
    if problem == "dead display":
        args = ["--display", ":4242"]
    elif problem == "wrong cookie":
        wrong = xvfb.authority_file(tmp_path / "wrong.xauth", b"\xcd" * 16)
        args = ["--display", xvfb.display, "--xauthority", str(wrong)]
    result = cli(*args, "doctor", env=env)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    step = {"no display": "display", "dead display": "display", "wrong cookie": "cookie"}[problem]
    assert failed[0].split()[1] == step
    assert "would not get a working display" in result.stdout or problem != "wrong cookie"
    assert "Traceback" not in result.stdout + result.stderr


def test_xvfb_lends_a_private_display_without_display_set(tmp_path: Path) -> None:
    require_executables("xdpyinfo")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = cli(
        "--xvfb",
        "--xvfb-screen",
        "800x600",
        "--bind",
        "127.0.0.1",
        "run",
        "--",
        sys.executable,
        "-c",
        CLIENT.replace("stdout=subprocess.DEVNULL", "stdout=None"),
        "{x11}",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "800x600 pixels" in result.stdout


def test_every_option_is_in_the_reference() -> None:
    """docs/reference/cli.md documents every flag the parser has, in every command."""
    import argparse

    from x11passthrough._cli import _parser

    reference = (Path(__file__).parents[1] / "docs" / "reference" / "cli.md").read_text()
    parsers = [_parser()]
    flags: set[str] = set()
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            flags.update(o for o in action.option_strings if o.startswith("--"))
    flags.discard("--help")
    assert len(flags) > 15
    missing = sorted(f for f in flags if f"`{f}" not in reference)
    assert missing == []


def documented_block(page: str, after: str) -> str:
    """The first ```text block after the line `after` of a docs page."""
    text = (Path(__file__).parents[1] / "docs" / page).read_text()
    rest = text[text.index(after) :]
    start = rest.index("```text\n") + len("```text\n")
    return rest[start : rest.index("```", start)]


def words(text: str) -> str:
    """`text` with its whitespace normalized (argparse wraps to the terminal's width)."""
    return " ".join(text.split())


def test_the_documented_help_is_the_programs() -> None:
    """docs/install.md shows `x11passthrough --help` as it is: its usage and its commands."""
    shown = documented_block("install.md", "x11passthrough --help\n").removesuffix("...\n")
    actual = cli("--help", env={**_env(), "COLUMNS": "80"}).stdout
    assert words(shown) in words(actual)
    usage = actual[: actual.index("COMMAND ...") + len("COMMAND ...")]
    assert words(usage) in words(shown), "the documented usage misses options"
    assert "--version" in shown


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


def test_version_is_printed_on_stdout() -> None:
    """`v=$(x11passthrough --version)` captures it."""
    import importlib.metadata

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"x11passthrough {importlib.metadata.version('x11passthrough')}\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ("--no-such-option", "run", "--", "docker", "run", "i"),
        ("frobnicate",),
        (),
        ("--auth", "bogus", "doctor"),
        ("run", "--stop-timeout", "soon", "--", "docker", "run", "i"),
        ("run", "--stop-timeout", "-1", "--", "docker", "run", "i"),
        ("run",),
    ],
    ids=repr,
)
def test_our_errors_and_bad_usage_exit_125_not_a_containers_2(args: tuple[str, ...]) -> None:
    """125, as `docker run` uses for its own errors; 2 is a container's common status."""
    result = cli(*args, env={**_env(), "DISPLAY": ":4242"})
    assert result.returncode == 125, result.stderr
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_stop_timeout_is_named_in_its_error() -> None:
    result = cli("run", "--stop-timeout", "soon", "--", "docker", "run", "i")
    assert "--stop-timeout: 'soon' is not a number of seconds" in result.stderr


def test_the_exit_status_is_documented() -> None:
    """The CLI reference's table and both --help texts say 125."""
    reference = (Path(__file__).parents[1] / "docs" / "reference" / "cli.md").read_text()
    assert "| any | 125 |" in reference
    assert "125" in words(cli("--help", env={**_env(), "COLUMNS": "80"}).stdout)
    assert "125" in words(cli("run", "--help", env={**_env(), "COLUMNS": "80"}).stdout)


def test_help_has_examples_and_points_compose_to_args() -> None:
    top = cli("--help").stdout
    run = cli("run", "--help").stdout
    for text in (top, run):
        assert "examples:" in text
        assert "x11passthrough run -- docker run --rm IMAGE xeyes" in text
        assert "args --format compose" in text


@pytest.mark.parametrize(
    "command",
    [
        ("docker-compose", "-f", "compose.yml", "run", "app"),
        ("docker", "compose", "run", "--rm", "app"),
        ("podman", "compose", "run", "app"),
        ("podman-compose", "run", "app"),
    ],
    ids=" ".join,
)
def test_compose_is_refused_with_the_way_that_works(xvfb: XServer, command: tuple[str]) -> None:
    result = cli(*display_options(xvfb), "run", "--", *command)
    assert result.returncode == 125
    assert "x11passthrough args --format compose" in result.stderr


def test_doctor_lines_fit_a_terminal(xvfb: XServer, tmp_path: Path) -> None:
    """No line of doctor's report is wider than 79 columns (paths aside), passing or failing."""
    wrong = xvfb.authority_file(tmp_path / "wrong.xauth", b"\xcd" * 16)
    passing = cli(*display_options(xvfb), "doctor")
    failing = cli("--display", xvfb.display, "--xauthority", str(wrong), "doctor")
    dead = cli("--display", ":4242", "doctor")
    for result in (passing, failing, dead):
        assert "Traceback" not in result.stderr
        for line in result.stdout.splitlines():
            assert len(line) <= 79 or " " not in line.strip(), line
    assert passing.returncode == 0, passing.stdout
    assert failing.returncode == 1


@pytest.mark.parametrize(
    "host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"], ids=["none", "tcp"]
)
def test_doctor_fails_when_no_engine_answers(xvfb: XServer, host: str) -> None:
    """No engine (or a dead tcp:// one): the engine step fails, and so does the verdict."""
    result = cli(*display_options(xvfb), "doctor", env={**xvfb.env(), "DOCKER_HOST": host})
    assert result.returncode == 1, result.stdout
    assert "FAIL  engine" in result.stdout
    assert result.stdout.rstrip().endswith("a container would not get a working display")


def test_doctor_probes_with_the_engine_it_finds() -> None:
    """A Podman that answers (rootless, say) is probed with podman, not docker."""
    import shutil

    from x11passthrough._doctor import _engine_command
    from x11passthrough._engine import Engine

    podman = Engine("podman", True, "/run/user/1000/podman/podman.sock", "Podman 4.3.1")
    docker = Engine("docker", False, "/var/run/docker.sock", "Docker Engine 28")
    expected = ("podman",) if shutil.which("podman") else ("docker",)
    assert _engine_command("auto", podman) == expected
    assert _engine_command("auto", docker) == ("docker",)
    assert _engine_command("podman", None) == expected


def test_doctor_survives_a_server_that_resets(tmp_path: Path) -> None:
    """Xvfb without -noreset (as xvfb-run starts it) resets between doctor's connections."""
    from infra.xvfb import start_xvfb

    server = start_xvfb(tmp_path / "xvfb", noreset=False)
    try:
        failed = []
        for _ in range(20):
            result = cli(*display_options(server), "--engine", "docker", "doctor")
            if result.returncode != 0:
                failed.append(result.stdout)
        assert failed == []
    finally:
        server.stop()


DOCS = Path(__file__).parents[1] / "docs"


def test_the_docs_show_doctor_lines_as_wide_as_it_prints_them() -> None:
    """Doctor's output in the docs fits 79 columns (a reader's terminal, the page's code block)."""
    import re

    step = re.compile(r"^(ok|warn|FAIL)  +\w+ +\S")
    shown = 0
    for page in sorted(DOCS.rglob("*.md")):
        in_report = False
        for line in page.read_text().splitlines():
            if step.match(line):
                in_report, shown = True, shown + 1
            elif not line.startswith(" " * 17):
                in_report = False
            if in_report:
                assert len(line) <= 79 or " " not in line.strip(), f"{page.name}: {line}"
    assert shown > 40


def test_the_docs_index_lists_its_pages_once() -> None:
    """The index's "Where to start" links the pages; its toctree only feeds the sidebar."""
    index = (DOCS / "index.md").read_text()
    toctree = index[index.index("```{toctree}") :]
    assert ":hidden:" in toctree.split("\n\n")[0]
    assert "## Where to start" in index


def test_the_diagrams_text_is_legible_in_the_text_column() -> None:
    """Every figure's smallest text is at least 10 px where the page shows it (46em, 736 px)."""
    import re

    for svg in sorted((DOCS / "_static").glob("*.svg")):
        text = svg.read_text()
        width = float(re.search(r'viewBox="0 0 ([\d.]+) ', text)[1])  # type: ignore[index]
        smallest = min(float(size) for size in re.findall(r'font-size="([\d.]+)"', text))
        shown = min(width, 736.0)
        assert smallest * shown / width >= 10, f"{svg.name}: {smallest * shown / width:.1f} px"
