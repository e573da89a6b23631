"""House rule 1: ``aiida_mlff.core`` never imports aiida."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import aiida_mlff.core


def test_no_core_module_imports_aiida():
    modules = [m.name for m in pkgutil.walk_packages(aiida_mlff.core.__path__, 'aiida_mlff.core.')]
    assert {'aiida_mlff.core.sampling', 'aiida_mlff.core.windows'} <= set(modules)
    code = (
        'import importlib, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module(name)\n'
        "bad = sorted(m for m in sys.modules if m == 'aiida' or m.startswith('aiida.'))\n"
        'assert not bad, bad\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
