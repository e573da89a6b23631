"""Sphinx configuration of the aiida-mlff documentation (MyST Markdown, aiida.sphinxext, sphinx-click, autodoc).

The option tables of ``reference/options.md`` are generated at build time by the local extension
``_ext/mlff_options.py`` from ``aiida_mlff.core.options``, so no default is written down twice.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath('..'))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '_ext'))  # the mlff-options directive

project = 'aiida-mlff'
author = 'aiida-mlff developers'
copyright = '2026, aiida-mlff developers'

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'sphinx_click',
    'aiida.sphinxext',
    'mlff_options',
]
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
exclude_patterns = ['_build', '_ext', 'Thumbs.db', '.DS_Store']
myst_enable_extensions = ['colon_fence', 'dollarmath', 'deflist']
myst_heading_anchors = 3

autodoc_default_options = {'members': True, 'show-inheritance': False}
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
napoleon_numpy_docstring = True
napoleon_google_docstring = False
suppress_warnings = ['myst.header']

html_theme = 'furo'
html_title = 'aiida-mlff'
