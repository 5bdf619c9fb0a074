"""
The python-xlib internals that ``_x11/xlib.py`` patches, pinned: a python-xlib that moved them
fails here, loudly and by name, instead of silently connecting somewhere else.
"""

from __future__ import annotations

import ast
import inspect

from pathlib import Path

import pytest
import Xlib
import Xlib.display
import Xlib.error
import Xlib.protocol.display
import Xlib.protocol.event
import Xlib.support.connect


#: The python-xlib releases whose internals were read against the adapter.
KNOWN = {(0, 33)}


def test_python_xlib_is_a_release_the_adapter_knows() -> None:
    version = tuple(Xlib.__version__)
    if version not in KNOWN:
        pytest.fail(
            f"python-xlib {'.'.join(map(str, version))} is not a release the adapter in "
            "src/x11passthrough/_x11/xlib.py was checked against: read its patches (get_socket, "
            "get_auth, Display.__init__ and the extension tables) against this release, then "
            "add it to KNOWN"
        )


def _functions(module: object) -> dict[str, ast.FunctionDef]:
    """The functions of `module`'s source file (as python-xlib ships it, before any patch)."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text())  # type: ignore[arg-type]
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_the_socket_and_cookie_lookups_are_module_functions_called_at_setup() -> None:
    """open_display replaces these two; Display.__init__ must look them up at call time."""
    connect = _functions(Xlib.support.connect)
    assert [a.arg for a in connect["get_socket"].args.args] == ["dname", "protocol", "host", "dno"]
    assert [a.arg for a in connect["get_auth"].args.args] == [
        "sock",
        "dname",
        "protocol",
        "host",
        "dno",
    ]
    tree = ast.parse(Path(inspect.getfile(Xlib.protocol.display)).read_text())
    display = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Display")
    init = ast.unparse(
        next(n for n in display.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    )
    assert "connect.get_socket(" in init
    assert "connect.get_auth(" in init


def test_the_extension_tables_are_class_dicts_the_adapter_can_shadow() -> None:
    """Displays opened by the adapter get their own copies of these class-level tables."""
    display = Xlib.protocol.display.Display
    for table in ("extension_major_opcodes", "error_classes", "event_classes"):
        assert isinstance(vars(display).get(table), dict), table
    assert isinstance(Xlib.error.xerror_class, dict)
    assert isinstance(Xlib.protocol.event.event_class, dict)
    assert issubclass(Xlib.display._BaseDisplay, display)
