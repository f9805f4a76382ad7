"""Sphinx configuration for the bocpy documentation (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package in src/ (built in place by ``make build``), so that
# the API reference always shows the docstrings of the code next to it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

project = "bocpy"
author = "the bocpy authors"
copyright = "the bocpy authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "benchmarks/*.json"]

# The API reference: signatures from the code, descriptions from docstrings.
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
# pyglet is optional: the driver's module imports it only when installed.
autodoc_mock_imports = ["pyglet"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No intersphinx: the docs build must not need the network (a missing
# inventory would be a warning, and warnings are errors in CI).

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "alabaster"
html_title = "bocpy"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Behavior-Oriented Concurrency for Python",
    "fixed_sidebar": True,
    "page_width": "1100px",
}
