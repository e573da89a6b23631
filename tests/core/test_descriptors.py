"""Tests for symmetry functions and chirality terms against brute-force sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms

from aiida_mlff.core.descriptors import Descriptor, DescriptorSpec, describe

pytestmark = pytest.mark.usefixtures('one_thread')


def _cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 3.2, size=(7, 3))
    atoms = Atoms('OH2OH2H', positions=positions)
    return atoms


def _fc(r, rc):
    return 0.5 * (np.cos(np.pi * r / rc) + 1.0) if r < rc else 0.0


def _brute_force(atoms: Atoms, spec: DescriptorSpec) -> np.ndarray:
    desc = Descriptor(spec)
    rs = desc.radial_centres.numpy()
    ra = desc.angular_centres.numpy()
    els = spec.elements
    pos = atoms.positions
    sym = atoms.get_chemical_symbols()
    rows = []
    for i in range(len(atoms)):
        others = [j for j in range(len(atoms)) if j != i]
        g2 = np.zeros((len(els), len(rs)))
        for j in others:
            r = np.linalg.norm(pos[j] - pos[i])
            g2[els.index(sym[j])] += np.exp(-desc.radial_eta * (r - rs) ** 2) * _fc(r, spec.cutoff)
        feats = list(g2.ravel())
        gfun = {}
        for j in others:
            r = np.linalg.norm(pos[j] - pos[i])
            gfun[j] = np.exp(-desc.angular_eta * (r - ra) ** 2) * _fc(r, spec.angular_cutoff)
        for a in range(len(els)):
            for b in range(a, len(els)):
                block = np.zeros((len(ra), 2 * len(spec.zetas)))
                for j in others:
                    for k in others:
                        if j == k or {sym[j], sym[k]} != {els[a], els[b]}:
                            continue
                        if a != b and not (sym[j] == els[a] or sym[k] == els[a]):
                            continue
                        u, v = pos[j] - pos[i], pos[k] - pos[i]
                        cos = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
                        col = 0
                        for zeta in spec.zetas:
                            for lam in (1, -1):
                                block[:, col] += 2 ** (1 - zeta) * (1 + lam * cos) ** zeta * gfun[j] * gfun[k]
                                col += 1
                feats += list(block.ravel())
        vec = np.zeros((len(els) * len(ra), 3))
        for j in others:
            u = (pos[j] - pos[i]) / np.linalg.norm(pos[j] - pos[i])
            e = els.index(sym[j])
            vec[e * len(ra) : (e + 1) * len(ra)] += gfun[j][:, None] * u
        for p, q, s in desc.triples.tolist():
            feats.append(vec[p] @ np.cross(vec[q], vec[s]))
        rows.append(feats)
    return np.array(rows)


def test_matches_brute_force():
    atoms = _cluster()
    spec = DescriptorSpec(elements=['H', 'O'], cutoff=4.0, angular_cutoff=3.0, n_radial=5, n_angular=2, zetas=[1, 2, 4])
    features, names = describe(atoms, cutoff=4.0, angular_cutoff=3.0, n_radial=5, n_angular=2, zetas=[1, 2, 4])
    assert len(names) == features.shape[1] == len(set(names))
    assert np.allclose(features, _brute_force(atoms, spec), atol=1e-10)
    assert np.abs(features).max() > 0.1


def test_mirror_flips_only_chirality():
    atoms = _cluster(3)
    mirror = atoms.copy()
    mirror.positions[:, 0] *= -1.0
    features, names = describe(atoms)
    mirrored, _ = describe(mirror)
    chiral = np.array(['chiral' in n for n in names])
    assert chiral.sum() > 0
    assert np.allclose(features[:, ~chiral], mirrored[:, ~chiral], atol=1e-12)
    assert np.allclose(features[:, chiral], -mirrored[:, chiral], atol=1e-12)
    # the terms do tell the two mirror images apart
    assert np.abs(features[:, chiral]).max() > 1e-3


def test_rotation_invariance_and_no_chiral_option():
    atoms = _cluster(5)
    rotated = atoms.copy()
    rotated.rotate(37.0, (1, 2, 3), center=(0.3, -1.0, 2.0))
    rotated.translate((4.0, -2.0, 1.0))
    f1, _ = describe(atoms)
    f2, _ = describe(rotated)
    assert np.allclose(f1, f2, atol=1e-10)
    plain, names = describe(atoms, chiral=False)
    assert not any('chiral' in n for n in names)
    assert plain.shape[1] < f1.shape[1]


def test_periodic_and_cutoff_smoothness():
    atoms = Atoms('OH2', positions=[[0, 0, 0], [0.97, 0, 0], [-0.25, 0.94, 0]], cell=[3.0] * 3, pbc=True)
    features, _ = describe(atoms)
    assert np.isfinite(features).all()
    # features decay to zero at the cutoff
    pair = Atoms('H2', positions=[[0, 0, 0], [0, 0, 4.999999]])
    far, _ = describe(pair, cutoff=5.0)
    assert np.abs(far).max() < 1e-9


def test_rejects_bad_zeta():
    with pytest.raises(ValueError, match='zetas'):
        DescriptorSpec(elements=['H'], zetas=[5])
    assert math.isfinite(Descriptor(DescriptorSpec(elements=['H', 'O'])).radial_eta)
