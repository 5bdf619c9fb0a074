"""The package as users get it: version, the public names, typing marker, and its layering."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.resources
import inspect
import subprocess
import sys
import warnings

from pathlib import Path

import pytest

import x11passthrough


SRC = Path(x11passthrough.__file__).parent
PUBLIC_MODULES = (
    "x11passthrough",
    "x11passthrough.display",
    "x11passthrough.served",
    "x11passthrough.xauth",
)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def internal_imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("x11passthrough"))
    return found & set(modules())


def test_version_matches_the_metadata_without_warnings() -> None:
    """__version__ is the installed distribution's version, read without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        version = x11passthrough.__version__
    assert version == importlib.metadata.version("x11passthrough")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        x11passthrough.nope  # noqa: B018 - the attribute access is the test


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_exist_sorted_and_documented(name: str) -> None:
    """Each public module's __all__ is sorted, and every name exists and has a docstring."""
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))
    for public in module.__all__:
        value = getattr(module, public)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name}.{public} has no docstring"


def test_the_front_door_is_small() -> None:
    """The top level exports what users touch: the class, its three option types, its values."""
    assert x11passthrough.__all__ == [
        "AuthMode",
        "DockerRunArgs",
        "EngineChoice",
        "RelayStats",
        "Transport",
        "X11Passthrough",
        "X11PassthroughError",
        "Xvfb",
        "exceptions",
    ]


def test_the_command_line_parser_imports_nothing_heavy() -> None:
    """``x11passthrough --help`` reads no more than argparse: the library loads after parsing."""
    probe = (
        "import sys, x11passthrough._cli; heavy = ('x11passthrough.', 'attr', 'Xlib'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    # _serve_cli's parser half is argparse only, like _cli.
    assert done.stdout.strip() == "['x11passthrough._cli', 'x11passthrough._serve_cli']"


def test_the_doctor_probe_is_shipped_as_a_module() -> None:
    """The program doctor runs in an image is the package's own module, not a string."""
    from x11passthrough import _probe
    from x11passthrough._doctor import probe_source

    assert probe_source() == Path(_probe.__file__).read_text()
    # The image's python3 has the standard library only: the probe imports nothing else.
    tree = ast.parse(probe_source())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    imported |= {
        str(n.module).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_py_typed_is_shipped() -> None:
    """The typing marker is installed with the package."""
    assert importlib.resources.files("x11passthrough").joinpath("py.typed").is_file()


def test_no_import_cycle_and_nothing_below_imports_the_passthrough() -> None:
    """Data flows one way: no module imports the passthrough but the edges that use it."""
    graph = {name: internal_imports(name, path) for name, path in modules().items()}
    edges = {
        "x11passthrough",
        "x11passthrough._commands",
        "x11passthrough._doctor",
        "x11passthrough.pytest_plugin",
    }
    for name, imported in graph.items():
        if "x11passthrough._passthrough" in imported:
            assert name in edges, f"{name} imports the passthrough"
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if target == name or target in ("x11passthrough",):
                continue
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_is_longer_than_600_lines() -> None:
    """One concept per module keeps each of them short."""
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert long == {}


ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from this checkout by its build backend."""
    out = tmp_path_factory.mktemp("dist")
    build = (
        "import sys; from hatchling.build import build_sdist, build_wheel; "
        "print(build_sdist(sys.argv[1])); print(build_wheel(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    sdist, wheel = done.stdout.split()
    return {"sdist": out / sdist, "wheel": out / wheel}


def test_the_license_travels_with_the_sdist_and_the_wheel(dists: dict[str, Path]) -> None:
    """The MIT text is in both, and the metadata names it (License-File)."""
    import tarfile
    import zipfile

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    with tarfile.open(dists["sdist"]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        member = sdist.extractfile(f"{top}/LICENSE")
        assert member is not None
        assert member.read().decode() == text
        info = sdist.extractfile(f"{top}/PKG-INFO")
        assert info is not None
        assert "License-File: LICENSE" in info.read().decode().splitlines()
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        info_dir = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        info_dir = info_dir.rpartition("/")[0]
        assert wheel.read(f"{info_dir}/licenses/LICENSE").decode() == text
        metadata = wheel.read(f"{info_dir}/METADATA").decode().splitlines()
        assert "License-File: LICENSE" in metadata
        assert "License-Expression: MIT" in metadata


def test_the_wheel_alone_installs_and_runs(dists: dict[str, Path], tmp_path: Path) -> None:
    """A fresh venv with the wheel only (no checkout): the command, its version, the license."""
    from infra.ci import require

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", str(dists["wheel"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    offline = any(s in install.stderr for s in ("No matching distribution", "NewConnectionError"))
    require("attrs and python-xlib from a package index", not offline, install.stderr[-300:])
    assert install.returncode == 0, install.stderr
    version = importlib.metadata.version("x11passthrough")
    done = subprocess.run(
        [venv / "bin" / "x11passthrough", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == f"x11passthrough {version}\n"  # on stdout: v=$(... --version)
    probe = (
        "import importlib.metadata as m, x11passthrough; "
        "d = m.distribution('x11passthrough'); "
        "print(x11passthrough.__file__); "
        "print([str(f) for f in d.files if f.name == 'LICENSE'])"
    )
    shown = subprocess.run(
        [venv / "bin" / "python", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert shown[0].startswith(str(venv)), "imported from the checkout, not the wheel"
    assert "licenses/LICENSE" in shown[1]


def test_the_readme_shows_the_users_path_before_two_set_up_commands() -> None:
    """Install, doctor, run first; then exactly the two set-up commands (demo, tests)."""
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", readme, re.DOTALL)
    assert [body.strip() for kind, body in blocks if kind == "sh"] == [
        "bash scripts/demo",
        "bash scripts/test",
    ]
    use = readme.index("## Use")
    assert use < readme.index("## Set up")
    path = readme[use : readme.index("## Set up")]
    for step in ("pip install", "x11passthrough doctor", "x11passthrough run -- docker run"):
        assert step in path
    assert "git+https://" in path
    assert "LICENSE" in readme


def test_the_demo_uses_a_working_engine_instead_of_installing_one() -> None:
    """scripts/demo installs docker.io only when no engine answers (not for a missing package)."""
    import shutil

    from infra.ci import require

    answers = shutil.which("docker") is not None and (
        subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=60).returncode
        == 0
    )
    require("a Docker engine that answers `docker info`", answers)
    listed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--packages"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert "xvfb" in listed
    assert "docker.io" not in listed
