"""
Xauthority files: the format, libXau's matching, xauth's merge rule, safe writing.

Strictly private: the public names are re-exported by :mod:`x11passthrough.xauth`.
"""
