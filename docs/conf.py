"""Sphinx configuration: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

Pages are MyST Markdown (docs/*.md), the API reference comes from the numpy-style
docstrings (autodoc + numpydoc) of the *installed* ngdfast (or the one on
PYTHONPATH), and math is converted to MathML at build time (docs/_ext/mathml.py):
nothing is fetched from the network when the site is built or read.
"""

import os
import sys

import ngdfast

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "ngdfast"
author = "the ngdfast developers"
copyright = "the ngdfast developers, BSD-3-Clause"
release = version = ngdfast.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "numpydoc",
    "mathml",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
html_math_renderer = "mathml"

# MyST: $...$ and $$...$$ math, ::: fences for admonitions, anchors for ## headings.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ngdfast.torch is documented from its docstrings; where torch is not installed (the docs extra
# does not pull it in), autodoc imports that module against a stand-in.
try:
    import torch  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["torch"]

# API reference: signatures as written, members in source order, no autosummary tables.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"ngdfast {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 5,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# Only the contract has sub-pages; elsewhere an empty "Section Navigation" column would show.
_single_pages = ["index", "quickstart", "mathematics", "trainer", "distributed", "api", "performance", "threads",
                 "cuda", "contributing", "genindex", "search"]
html_sidebars = {page: [] for page in _single_pages}
html_show_sourcelink = False
pygments_style = "sphinx"
