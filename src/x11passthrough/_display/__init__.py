"""
Display names, endpoints, locating a live display and reserving a free display number.

Strictly private: the public names are re-exported by :mod:`x11passthrough.display`.
"""
