"""
Served displays: a display lent under a stable name for as long as containers live (issue 21).

Strictly private: import :class:`~x11passthrough.served.ServedDisplay` from
:mod:`x11passthrough.served`.
"""
