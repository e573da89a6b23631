"""``python -m aiida_mlff.core.kernels``: build the compiled kernels now (set-up scripts) and say where they are."""

from . import bp_pairs

module = bp_pairs()
print(f'compiled kernels: {module.__file__}' if module is not None else 'compiled kernels: not available (see warning)')
