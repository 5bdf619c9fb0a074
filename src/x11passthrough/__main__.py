"""``python -m x11passthrough``: see :mod:`x11passthrough._cli`."""

from __future__ import annotations

import sys

from ._cli import main


sys.exit(main())
