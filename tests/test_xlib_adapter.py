"""
The python-xlib internals that ``_x11/xlib.py`` patches, pinned: a python-xlib that moved them
fails here, loudly and by name, instead of silently connecting somewhere else.
"""

from __future__ import annotations

import inspect

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


def test_the_socket_and_cookie_lookups_are_module_functions_called_at_setup() -> None:
    """open_display replaces these two; Display.__init__ must look them up at call time."""
    connect = Xlib.support.connect
    assert list(inspect.signature(connect.get_socket).parameters) == [
        "dname",
        "protocol",
        "host",
        "dno",
    ]
    assert list(inspect.signature(connect.get_auth).parameters) == [
        "sock",
        "dname",
        "protocol",
        "host",
        "dno",
    ]
    source = inspect.getsource(Xlib.protocol.display.Display.__init__)
    assert "connect.get_socket(" in source
    assert "connect.get_auth(" in source


def test_the_extension_tables_are_class_dicts_the_adapter_can_shadow() -> None:
    """Displays opened by the adapter get their own copies of these class-level tables."""
    display = Xlib.protocol.display.Display
    for table in ("extension_major_opcodes", "error_classes", "event_classes"):
        assert isinstance(vars(display).get(table), dict), table
    assert isinstance(Xlib.error.xerror_class, dict)
    assert isinstance(Xlib.protocol.event.event_class, dict)
    assert issubclass(Xlib.display._BaseDisplay, display)
