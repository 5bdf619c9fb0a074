"""Sphinx configuration for the x11passthrough documentation."""

from __future__ import annotations

import sys

from pathlib import Path


sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

project = "x11passthrough"
author = "x11passthrough developers"
copyright = "2026, x11passthrough developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "x11passthrough"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]
