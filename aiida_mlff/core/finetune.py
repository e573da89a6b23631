"""Fine-tuning a trained potential: committee resizing and energy offsets that follow new labels.

A potential that was trained already carries feature normalisation, an energy scale and per-element reference
energies fitted to its own data. Fine-tuning keeps the first two (the weights were learnt for them) and only shifts
the reference energies by a least-squares fit of the new labels' residuals on composition, so that a change of
the DFT reference (another code, pseudopotential or cutoff) does not have to be learnt by the networks.

A campaign that asks for a committee of M members from a parent file of M' members gets member ``k % M'`` for
member k; the copies beyond the parent's are perturbed (Gaussian noise of ``noise`` x the spread of each weight
tensor, seeded), so the members leave the parent in different directions and their disagreement can select frames.
The spread of such a committee starts small: it measures distance from the parent's data, not the parent's errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ['is_trained', 'resize_committee', 'shift_reference_energies']

#: the per-member module list of an architecture whose members are separate modules (e.g. MACE)
_MEMBER_KEY = re.compile(r'^(.*?members\.)(\d+)(\..*)$')


def is_trained(pot) -> bool:
    """Whether ``pot`` holds learnt weights and statistics, which fine-tuning keeps.

    True when it went through :func:`aiida_mlff.core.training.train` (its metadata holds metrics) or was imported
    from a model another program trained (metadata ``imported_from``, see :mod:`aiida_mlff.core.foreign`).
    """
    metadata = getattr(pot, 'metadata', {})
    return bool(metadata.get('metrics') or metadata.get('imported_from'))


def _member_source(key: str, new_shape: tuple, old: dict[str, Tensor], size: int, old_size: int):
    """(old key, member index function) giving the parent's tensor for a new-committee tensor ``key``."""
    match = _MEMBER_KEY.match(key)
    if match:
        member = int(match.group(2))
        return f'{match.group(1)}{member % old_size}{match.group(3)}', member
    tensor = old[key]
    if tensor.dim() and tensor.shape[0] == old_size and new_shape[0] == size and tensor.shape[1:] == new_shape[1:]:
        return key, None
    return key, -1  # shared by all members


def resize_committee(pot, size: int, seed: int = 0, noise: float = 0.05):
    """A copy of ``pot`` with ``size`` members built from its members (``pot`` itself when the size already fits).

    Works for any architecture whose per-member tensors either have the committee as their first dimension (our
    BP networks) or live under ``members.<k>.`` (one module per member, e.g. MACE). Member k copies parent member
    ``k % M'``; every copy with k >= M' gets seeded Gaussian noise of ``noise`` x the standard deviation of each
    trainable tensor it holds (reference energies and constant tensors excluded).
    """
    from .architectures import build

    old_size = pot.committee_size
    if size == old_size:
        return pot
    if size < 1:
        raise ValueError(f'a committee needs at least one member, got {size}')
    hyper = dict(pot.hyperparameters())
    name = hyper.pop('architecture')
    hyper['committee'] = size
    new = build(name, **hyper, dtype=pot.dtype, device=pot.device)
    old_state = pot.state_dict()
    trainable = {name for name, _ in new.named_parameters()}
    generator = torch.Generator().manual_seed(int(seed))
    state = {}
    for key, target in new.state_dict().items():
        source, member = _member_source(key, tuple(target.shape), old_state, size, old_size)
        value = old_state[source]
        if member is None:  # committee along the first dimension
            index = torch.arange(size) % old_size
            value = value[index.to(value.device)].clone()
            if key in trainable and 'reference_energies' not in key and value.is_floating_point():
                value[old_size:] += _noise(value[old_size:], value[:old_size], noise, generator)
        else:
            value = value.clone()
            if member >= old_size and key in trainable and value.is_floating_point():
                value += _noise(value, value, noise, generator)
        state[key] = value
    new.load_state_dict(state)
    new.metadata = dict(getattr(pot, 'metadata', {}))
    return new


def _noise(shape_like: Tensor, scale_of: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    # a constant tensor (e.g. untrained zero biases) has no scale to perturb by: it stays as it is
    spread = float(scale_of.detach().double().std()) if scale_of.numel() > 1 else 0.0
    sample = torch.randn(shape_like.shape, generator=generator, dtype=torch.float64)
    return (noise * spread * sample).to(shape_like.dtype).to(shape_like.device)


@torch.no_grad()
def shift_reference_energies(pot, batches: Sequence[tuple], elements: Sequence[str]) -> np.ndarray:
    """Add to the reference energies the least-squares per-element offsets [eV] of ``E_label - E_predicted``.

    ``batches``: ``(batch, neighbors, reference energies (B,) [eV])`` tuples; ``elements``: the potential's
    element order. Each member is shifted by its own residuals. Returns the (M, n_elements) shifts [eV].
    """
    from .training import composition_matrix

    rows, residuals = [], []
    for batch, nbrs, energies in batches:
        out = pot.evaluate(batch, nbrs, forces=False)
        residuals.append((energies.unsqueeze(0) - out['energies']).double().cpu().numpy())
        rows.append(composition_matrix(elements, batch.numbers.cpu(), batch.batch.cpu(), batch.n_systems))
    composition = np.concatenate(rows)
    residual = np.concatenate(residuals, axis=1)  # (M, S)
    shifts, *_ = np.linalg.lstsq(composition, residual.T, rcond=None)  # (n_elements, M)
    shifts = shifts.T
    pot.reference_energies.add_(torch.as_tensor(shifts, dtype=pot.dtype, device=pot.device))
    return shifts
