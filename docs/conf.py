# SPDX-License-Identifier: GPL-2.0-or-later
"""Sphinx configuration for the nfbind documentation."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

project = "nfbind"
author = "nfbind developers"
copyright = "nfbind developers; GPL-2.0-or-later"
try:
    import nfbind
    release = nfbind.__version__
except Exception:  # pragma: no cover - the docs still build without the compiled modules
    release = "0.1.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Furo (the theme of pip's and attrs' documentation): a readable width, a light
# and a dark scheme, and code blocks that tests/test_docs.py keeps within 88
# columns so that none scrolls sideways.
html_theme = "furo"
html_title = "nfbind %s" % release
html_theme_options = {
    "navigation_with_keys": True,
}
exclude_patterns = ["_build"]
templates_path = []
html_static_path = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "members": True,
    "show-inheritance": False,
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The compiled cffi modules are needed to import nfbind; without them, mock them
# so that the pages still build (the API reference is then thinner).
autodoc_mock_imports = []
for _mod in ("_nfcore", "_nfqueue", "_nflog", "_conntrack"):
    try:
        __import__("nfbind." + _mod)
    except Exception:
        autodoc_mock_imports.append("nfbind." + _mod)
