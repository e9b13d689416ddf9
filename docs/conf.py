"""Sphinx configuration for the sparsekit documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W -b html docs docs/_build/html

The gallery scripts in ``examples/gallery`` run during the build (sphinx-gallery); set
``SPARSEKIT_DOCS_NO_GALLERY=1`` to skip running them while editing prose.
"""

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARSEKIT_QUIET", "1")  # no numba compile note in the rendered output

import sparsekit

project = "sparsekit"
author = "sparsekit developers"
copyright = "2026, sparsekit developers"
release = sparsekit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.md5"]
templates_path = ["_templates"]

autosummary_generate = True
autodoc_default_options = {"members": True}  # inherited members: docs/_templates/class.rst
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_validation_checks = set()  # validation is a test: tests/test_docstrings.py

# No network while building: intersphinx would fetch inventories. Cross-references to numpy,
# scikit-learn and torch are written as plain literals instead.
intersphinx_mapping = {}

myst_heading_anchors = 3
# The benchmark result files are generated markdown included verbatim; their heading levels are
# the scripts' business, so MyST's heading-level check is silenced for them.
suppress_warnings = ["myst.header"]

html_theme = "pydata_sphinx_theme"
html_title = "sparsekit"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "auto_examples",
    "doc_module": ("sparsekit",),
    "backreferences_dir": "gen_modules/backreferences",
    "filename_pattern": r"/plot_",
    "plot_gallery": "False" if os.environ.get("SPARSEKIT_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 5,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
}


_SHAPE_NAME = re.compile(r"\(([A-Za-z][A-Za-z0-9_]*_),\)")


def _escape_shape_names(app, what, name, obj, options, lines):
    # Docstrings say ``shape (n_features_in_,)`` in type lines, where reST reads ``word_`` as a
    # hyperlink reference; render the underscore literally instead.
    for i, line in enumerate(lines):
        lines[i] = _SHAPE_NAME.sub(lambda m: f"({m.group(1)[:-1]}\\_,)", line)


def setup(app):
    app.connect("autodoc-process-docstring", _escape_shape_names)
