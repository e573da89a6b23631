"""Sphinx configuration of the aiida-mlff documentation (MyST Markdown, aiida.sphinxext, sphinx-click, autodoc)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

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
]
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']
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
