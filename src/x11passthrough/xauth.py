"""
Read, match, merge and safely write Xauthority files, without the ``xauth`` program.

A deliberate, documented second tier of the API: the same code
:class:`~x11passthrough.X11Passthrough` uses to find the host's cookie and write the
container's session file, for embedders that edit authority files themselves::

    from x11passthrough.xauth import Family, XauthEntry, Xauthority

    entry = XauthEntry(Family.WILD, b"", "5", "MIT-MAGIC-COOKIE-1", cookie)
    Xauthority.update(path, lambda auth: auth.merge([entry]))

It follows libXau byte for byte: the record format (``AuRead.c``, ``AuWrite.c``), the matching
rules (``AuGetBest.c``), the lock protocol (``AuLock.c``), the default path
(``AuFileName.c``); the merge rule follows xauth(1), the choice of entry for a connected
socket follows libxcb (``xcb_auth.c``). Every field of an entry is the raw bytes of the file.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ._x11.wire import MIT_MAGIC_COOKIE_1
from ._xauth.authority import Xauthority, default_path
from ._xauth.files import xauthority_lock
from ._xauth.format import Family, XauthEntry
from ._xauth.match import peer_family_address


__all__ = [
    "MIT_MAGIC_COOKIE_1",
    "Family",
    "XauthEntry",
    "Xauthority",
    "default_path",
    "peer_family_address",
    "xauthority_lock",
]
