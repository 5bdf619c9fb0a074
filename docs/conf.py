"""Sphinx configuration for the x11passthrough documentation."""

from __future__ import annotations

import sys
import zlib

from pathlib import Path


DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS.parent / "src"))

project = "x11passthrough"
author = "x11passthrough developers"
copyright = "2026, x11passthrough developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "x11passthrough"
html_static_path = ["_static"]
# The wide architecture figure (explanation.md) may use the room beside the text column.
html_css_files = ["custom.css"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
# Definition lists (a term line, then ": text"): the options on the command-line reference page.
myst_enable_extensions = ["deflist"]
nitpicky = True
# DockerRunArgs.add_to returns the mapping it was given; its private TypeVar is shown as the
# bound it stands for.
autodoc_type_aliases = {
    "_Kwargs": "collections.abc.MutableMapping",
    # DockerRunArgs.apply_to returns the testcontainers container it was given.
    "_Container": "testcontainers.core.container.DockerContainer",
}
# testcontainers is not a dependency, and its inventory is not at hand: named, not linked.
nitpick_ignore = [("py:class", "testcontainers.core.container.DockerContainer")]

# The standard library names the API mentions, linked to the real pages of docs.python.org.
# The build machine has no network, so the inventory intersphinx reads is written here from
# this list instead of being downloaded; a new name in a signature fails the build (nitpicky)
# until it is added.
PYTHON_DOCS = "https://docs.python.org/3/"
PYTHON_NAMES = {
    "py:class": {
        "collections.abc.Callable": "library/collections.abc.html",
        "collections.abc.Iterable": "library/collections.abc.html",
        "collections.abc.Iterator": "library/collections.abc.html",
        "collections.abc.Mapping": "library/collections.abc.html",
        "collections.abc.MutableMapping": "library/collections.abc.html",
        "collections.abc.Sequence": "library/collections.abc.html",
        "ipaddress.IPv4Address": "library/ipaddress.html",
        "ipaddress.IPv4Network": "library/ipaddress.html",
        "ipaddress.IPv6Address": "library/ipaddress.html",
        "ipaddress.IPv6Network": "library/ipaddress.html",
        "os.PathLike": "library/os.html",
        "pathlib.Path": "library/pathlib.html",
        "pathlib.PurePosixPath": "library/pathlib.html",
        "socket.socket": "library/socket.html",
        "LookupError": "library/exceptions.html",
        "OSError": "library/exceptions.html",
        "RuntimeError": "library/exceptions.html",
        "TimeoutError": "library/exceptions.html",
        "ValueError": "library/exceptions.html",
        "Exception": "library/exceptions.html",
        "enum.IntEnum": "library/enum.html",
    },
    "py:method": {"socket.socket.connect": "library/socket.html"},
    "py:data": {"os.environ": "library/os.html", "typing.Literal": "library/typing.html"},
    "py:module": {"ipaddress": "library/ipaddress.html", "asyncio": "library/asyncio.html"},
}


def _write_python_inventory(path: Path) -> Path:
    lines = [
        f"{name} {role} 1 {page}#{name if role != 'py:module' else 'module-' + name} -"
        for role, names in PYTHON_NAMES.items()
        for name, page in names.items()
    ]
    header = (
        b"# Sphinx inventory version 2\n# Project: Python\n# Version: 3\n"
        b"# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + zlib.compress("\n".join(lines).encode() + b"\n"))
    return path


intersphinx_mapping = {
    "python": (PYTHON_DOCS, str(_write_python_inventory(DOCS / "_build" / "python.inv")))
}
