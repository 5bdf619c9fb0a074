"""
The X11 wire protocol: the setup message, the relay's cookie gate, and X client helpers.

Strictly private.
"""
