"""Combine separately trained potentials into one committee (members trained as separate jobs, e.g. on a cluster)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ['combine']

_MEMBER_KEYS = ('reference_energies',)
_IGNORED = {'seed', 'committee'}


def combine(potentials: Sequence) -> object:
    """Return one committee ``Potential`` whose members are all members of ``potentials``, in order.

    Each member keeps exactly the function it had: its feature normalisation and energy scale are folded into its
    first and last layer, so that all members can share the committee's normalisation (that of the first potential).
    Raises ``ValueError`` when the architectures differ in anything but the seed and committee size.
    """
    from .models import Potential

    potentials = list(potentials)
    if not potentials:
        raise ValueError('combine needs at least one potential')
    first = potentials[0]
    spec = {k: v for k, v in first.hyperparameters().items() if k not in _IGNORED}
    for k, pot in enumerate(potentials[1:], start=1):
        other = {key: v for key, v in pot.hyperparameters().items() if key not in _IGNORED}
        if other != spec:
            diff = sorted(key for key in set(spec) | set(other) if spec.get(key) != other.get(key))
            raise ValueError(f'potential {k} differs from potential 0 in {diff}: only seeds may differ')
    size = sum(p.committee_size for p in potentials)
    dtype = first.dtype
    combined = Potential.build(**spec, committee=size, seed=first.hyperparameters().get('seed', 0), dtype=dtype)
    state = combined.state_dict()
    mu_c = first.feature_mean.detach().to(dtype)
    sd_c = first.feature_std.detach().to(dtype)
    scale_c = first.energy_scale.detach().to(dtype)
    state['feature_mean'] = mu_c.clone()
    state['feature_std'] = sd_c.clone()
    state['energy_scale'] = scale_c.clone()
    n_layers = len(first.weights)
    member = 0
    with torch.no_grad():
        for pot in potentials:
            mu_m, sd_m = pot.feature_mean.detach().to(dtype), pot.feature_std.detach().to(dtype)
            scale_m_over_c = pot.energy_scale.detach().to(dtype) / scale_c
            for m in range(pot.committee_size):
                target = member + m
                for layer in range(n_layers):
                    w = pot.weights[layer][m].detach().to(dtype).clone()  # (E, in, out)
                    b = pot.biases[layer][m].detach().to(dtype).clone()  # (E, out)
                    if layer == 0:
                        # x_m = x_c * sd_c / sd_m + (mu_c - mu_m) / sd_m, per element
                        shift = (mu_c - mu_m) / sd_m  # (E, F)
                        b = b + torch.einsum('ef,efo->eo', shift, w)
                        w = w * (sd_c / sd_m).unsqueeze(-1)
                    if layer == n_layers - 1:
                        w = w * scale_m_over_c
                        b = b * scale_m_over_c
                    state[f'weights.{layer}'][target] = w
                    state[f'biases.{layer}'][target] = b
                for key in _MEMBER_KEYS:
                    state[key][target] = getattr(pot, key)[m].detach().to(dtype)
            member += pot.committee_size
    combined.load_state_dict(state)
    combined.metadata = {'combined_from': [dict(p.metadata) for p in potentials]}
    return combined
