"""Collective variables against ASE, their gradients, minimum image, and harmonic biases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlff.core.colvars import (
    Angle,
    Dihedral,
    Distance,
    DistanceDifference,
    HarmonicBias,
    minimum_image,
)


def random_frames(n_frames=5, n_atoms=5, cell=6.0, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Atoms('H' * n_atoms, positions=rng.uniform(-2, 10, (n_atoms, 3)), cell=np.eye(3) * cell, pbc=True)
        for _ in range(n_frames)
    ]


def as_tensors(frames):
    pos = torch.tensor(np.stack([f.positions for f in frames]))
    cell = torch.tensor(np.stack([f.cell[:] for f in frames]))
    pbc = torch.tensor(np.stack([f.pbc for f in frames]))
    return pos, cell, pbc


def test_against_ase_with_minimum_image():
    frames = random_frames()
    pos, cell, pbc = as_tensors(frames)
    d = Distance(0, 3)(pos, cell, pbc).numpy()
    a = Angle(0, 1, 2)(pos, cell, pbc).numpy()
    phi = Dihedral(0, 1, 2, 3)(pos, cell, pbc).numpy()
    dd = DistanceDifference(0, 1, 2, 4)(pos, cell, pbc).numpy()
    for b, f in enumerate(frames):
        assert d[b] == pytest.approx(f.get_distance(0, 3, mic=True))
        assert math.degrees(a[b]) == pytest.approx(f.get_angle(0, 1, 2, mic=True))
        # ASE: [0, 360); ours: (-180, 180]
        assert math.degrees(phi[b]) % 360 == pytest.approx(f.get_dihedral(0, 1, 2, 3, mic=True), abs=1e-8)
        assert dd[b] == pytest.approx(f.get_distance(0, 1, mic=True) - f.get_distance(2, 4, mic=True))
    # open boundaries: no wrapping
    open_d = Distance(0, 3)(pos).numpy()
    np.testing.assert_allclose(open_d, [f.get_distance(0, 3) for f in frames])


def test_flattened_ragged_batch_matches_batch_first():
    frames = random_frames(3, 5)
    pos, cell, pbc = as_tensors(frames)
    # a ragged batch: put a 2-atom system in between and index replicas through offsets
    flat = torch.cat([pos[0], torch.zeros(2, 3), pos[1], pos[2]])
    offsets = torch.tensor([0, 7, 12])
    for cv in (Distance(1, 4), Angle(0, 2, 4), Dihedral(4, 3, 2, 1)):
        np.testing.assert_allclose(cv(flat, cell, pbc, offsets).numpy(), cv(pos, cell, pbc).numpy())


def test_gradients():
    rng = np.random.default_rng(3)
    pos = torch.tensor(rng.normal(size=(2, 4, 3)), requires_grad=True)
    cell = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 3.0
    for cv in (Distance(0, 1), Angle(0, 1, 2), Dihedral(0, 1, 2, 3), DistanceDifference(0, 1, 2, 3)):
        assert torch.autograd.gradcheck(lambda p, cv=cv: cv(p, cell), (pos,))


def test_dihedral_known_values():
    # H2O2-like chain: rotate atom 3 about the O-O axis by known angles
    for deg in (-170.0, -90.0, -30.0, 0.0, 45.0, 120.0, 180.0):
        t = math.radians(deg)
        p = torch.tensor(
            [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [math.cos(t), math.sin(t), 1.5]]], dtype=torch.float64
        )
        phi = Dihedral(0, 1, 2, 3)(p).item()
        assert math.cos(phi) == pytest.approx(math.cos(t))
        assert math.sin(phi) == pytest.approx(math.sin(t), abs=1e-12)
    assert Dihedral(0, 1, 2, 3).period == pytest.approx(2 * math.pi)


def test_minimum_image_mixed_pbc():
    v = torch.tensor([[4.0, 4.0, 4.0]], dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 5.0
    out = minimum_image(v, cell, torch.tensor([[True, False, True]]))
    np.testing.assert_allclose(out.numpy(), [[-1.0, 4.0, -1.0]])
    # an open direction with a zero cell vector
    cell2 = cell.clone()
    cell2[0, 1] = 0.0
    np.testing.assert_allclose(
        minimum_image(v, cell2, torch.tensor([[True, False, True]])).numpy(), [[-1.0, 4.0, -1.0]]
    )


def test_harmonic_bias_periodic_and_per_replica():
    centers = [math.pi - 0.1, 0.0, -math.pi / 2]
    bias = HarmonicBias(Dihedral(0, 1, 2, 3), centers, kappa=2.0)
    s = torch.tensor([-math.pi + 0.1, 0.3, -math.pi / 2], dtype=torch.float64)
    e = bias.energy_from_cv(s)
    # the first replica is 0.2 rad from its centre across the +-pi seam, not 2 pi - 0.2
    np.testing.assert_allclose(e.numpy(), [0.5 * 2 * 0.2**2, 0.5 * 2 * 0.3**2, 0.0], atol=1e-12)
    # forces: -dE/dR equal kappa * d * (-ds/dR)
    rng = np.random.default_rng(0)
    pos = torch.tensor(rng.normal(size=(3, 4, 3)), requires_grad=True)
    energy, cv = bias(pos)
    (grad,) = torch.autograd.grad(energy.sum(), pos, retain_graph=True)
    (cv_grad,) = torch.autograd.grad(cv.sum(), pos)
    d = bias.displacement(cv.detach())
    np.testing.assert_allclose(grad.numpy(), (2.0 * d[:, None, None] * cv_grad).numpy(), atol=1e-12)
