"""Collective variables against ASE and numpy, their gradients, minimum image, specs, windows and harmonic biases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlff.core.colvars import (
    CV_TYPES,
    Angle,
    Combination,
    Coordination,
    CVSpecError,
    Dihedral,
    Distance,
    DistanceDifference,
    HarmonicBias,
    PointPlane,
    cv_from_spec,
    cv_spec_errors,
    minimum_image,
    switching_function,
)
from aiida_mlff.core.windows import WindowSpecError, midpoint, neighbour_pairs, place_windows


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


# ------------------------------------------------------------------------------------------ registry and specs
SPECS = {
    'distance': {'type': 'distance', 'atoms': [0, 3]},
    'angle': {'type': 'angle', 'atoms': [0, 1, 2]},
    'dihedral': {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
    'distance_difference': {'type': 'distance_difference', 'atoms': [0, 1, 2, 1]},
    'coordination': {'type': 'coordination', 'atoms': [0, 1], 'partners': [1, 2, 3, 4], 'r0': 2.5, 'n': 6, 'm': 12},
    'point_plane': {'type': 'point_plane', 'atoms': [4, 0, 1, 2]},
    'position': {'type': 'position', 'atoms': [3], 'axis': 'y'},
    'combination': {
        'type': 'combination',
        'terms': [
            {'cv': {'type': 'distance', 'atoms': [0, 1]}, 'coefficient': 1.0},
            {'cv': {'type': 'point_plane', 'atoms': [3, 0, 1, 2]}, 'coefficient': -0.5},
        ],
    },
}


def test_registry_covers_every_type():
    assert set(CV_TYPES) == set(SPECS)
    for name, cls in CV_TYPES.items():
        assert cls.type_name == name


@pytest.mark.parametrize('kind', sorted(SPECS))
def test_spec_round_trip(kind):
    cv = cv_from_spec(SPECS[kind])
    assert isinstance(cv, CV_TYPES[kind])
    assert cv.spec == SPECS[kind]
    assert cv_from_spec(cv.spec).spec == cv.spec
    assert cv.name.startswith(f'{kind}(')
    assert cv_spec_errors(cv.spec, n_atoms=5) == []


def test_spec_defaults_are_filled_in():
    cv = cv_from_spec({'type': 'coordination', 'atoms': [0, 1, 2], 'r0': 1.5})
    # partners omitted: pairs within the group, each unordered pair once
    assert cv.spec == {'type': 'coordination', 'atoms': [0, 1, 2], 'partners': [0, 1, 2], 'r0': 1.5, 'n': 6, 'm': 12}
    assert cv.pairs == [(0, 1), (0, 2), (1, 2)]
    combo = cv_from_spec({'type': 'combination', 'terms': [{'cv': {'type': 'distance', 'atoms': [0, 1]}}]})
    assert combo.spec['terms'][0]['coefficient'] == 1.0


def test_names_and_atoms():
    assert Dihedral(2, 0, 1, 3).name == 'dihedral(2,0,1,3)'
    assert Dihedral(2, 0, 1, 3).atoms == (2, 0, 1, 3)
    dd = DistanceDifference(0, 1, 2, 1)
    assert dd.name == 'distance_difference(0,1,2,1)'
    assert dd.atoms == (0, 1, 2)
    assert Coordination([0, 1], [1, 5], r0=1.0).atoms == (0, 1, 5)
    combo = cv_from_spec(SPECS['combination'])
    assert combo.atoms == (0, 1, 3, 2)
    assert combo.name == 'combination(distance(0,1)-0.5*point_plane(3,0,1,2))'


def test_units_and_periods():
    expected = {
        'distance': ('Å', 'Å', None),
        'angle': ('rad', 'deg', None),
        'dihedral': ('rad', 'deg', 360.0),
        'distance_difference': ('Å', 'Å', None),
        'coordination': ('', '', None),
        'point_plane': ('Å', 'Å', None),
        'combination': ('Å', 'Å', None),
    }
    for kind, (unit, file_unit, file_period) in expected.items():
        cv = cv_from_spec(SPECS[kind])
        assert (cv.unit, cv.file_unit, cv.file_period) == (unit, file_unit, file_period), kind
    assert Dihedral.file_unit == 'deg'
    assert Dihedral.period == pytest.approx(2 * math.pi)


def test_unit_conversion_written_once():
    phi, d = Dihedral(0, 1, 2, 3), Distance(0, 1)
    assert phi.to_file(math.pi) == pytest.approx(180.0)
    assert phi.to_internal(-90.0) == pytest.approx(-math.pi / 2)
    assert phi.to_internal([180.0, 90.0]) == pytest.approx([math.pi, math.pi / 2])
    assert isinstance(phi.to_internal([180.0]), list)
    np.testing.assert_allclose(phi.to_file(np.array([0.5, -1.0])), np.degrees([0.5, -1.0]))
    torch.testing.assert_close(phi.to_file(torch.tensor([math.pi])), torch.tensor([180.0]))
    assert phi.to_file(phi.to_internal(37.5)) == pytest.approx(37.5)
    assert phi.to_file(None) is None
    assert d.to_file(1.25) == 1.25
    assert d.to_internal([1.0, 2.0]) == [1.0, 2.0]
    assert Angle(0, 1, 2).to_file(math.pi / 2) == pytest.approx(90.0)
    assert Coordination([0], [1], r0=1.0).to_file(2.5) == 2.5


def test_spec_errors_list_every_problem_at_once():
    errors = cv_spec_errors({'type': 'dihedral', 'atoms': [0, 1, 1, 2], 'atom': 3}, 'system.cv', n_atoms=4)
    assert errors == [
        "system.cv.atom: unknown key; did you mean 'atoms'? (allowed: type, atoms)",
        'system.cv.atoms: a dihedral needs 4 distinct atom indices below 4, got [0, 1, 1, 2]',
    ]
    spec = {
        'type': 'combination',
        'terms': [
            {'cv': {'type': 'dihedal', 'atoms': [0, 1, 2, 3]}},
            {'cv': {'type': 'distance', 'atoms': [0, 0]}},
            {'cv': {'type': 'angle', 'atoms': [0, 1, 9]}, 'coef': 2.0},
            {'cv': {'type': 'distance', 'atoms': [0, 1], 'atomz': [1]}, 'coefficient': float('nan')},
        ],
    }
    errors = cv_spec_errors(spec, 'system.cv', n_atoms=4)
    assert len(errors) == 6, errors
    assert errors[0].startswith("system.cv.terms[0].cv.type: unknown CV type 'dihedal'; did you mean 'dihedral'?")
    assert errors[1] == 'system.cv.terms[1].cv.atoms: a distance needs 2 distinct atom indices below 4, got [0, 0]'
    assert errors[2] == "system.cv.terms[2].coef: unknown key; did you mean 'coefficient'? (allowed: cv, coefficient)"
    assert errors[3] == 'system.cv.terms[2].cv.atoms: an angle needs 3 distinct atom indices below 4, got [0, 1, 9]'
    assert errors[4].startswith('system.cv.terms[3].coefficient: must be a finite, non-zero number')
    assert errors[5].startswith("system.cv.terms[3].cv.atomz: unknown key; did you mean 'atoms'?")
    with pytest.raises(CVSpecError) as info:
        cv_from_spec(spec, n_atoms=4)
    assert len(info.value.errors) == 6
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ('spec', 'message'),
    [
        ({'type': 'distance', 'atoms': [0, True]}, 'cv.atoms: a distance needs 2 distinct atom indices'),
        ({'type': 'distance', 'atoms': [0, -1]}, 'cv.atoms: a distance needs 2 distinct'),
        ({'type': 'angle', 'atoms': [0, 1.0, 2]}, 'cv.atoms: an angle needs 3'),
        ({'type': 'distance_difference', 'atoms': [0, 1, 1, 0]}, 'cv.atoms: a distance_difference needs 4'),
        ({'type': 'distance_difference', 'atoms': [0, 0, 1, 2]}, 'cv.atoms: a distance_difference needs 4'),
        ({'type': 'point_plane', 'atoms': [0, 1, 2, 2]}, 'cv.atoms: a point_plane needs 4 distinct'),
        ({'type': 'coordination', 'atoms': [0, 0], 'r0': 1.0}, 'cv.atoms: a coordination needs a non-empty'),
        ({'type': 'coordination', 'atoms': [0], 'r0': 1.0}, 'cv.partners: no pair of different atoms'),
        ({'type': 'coordination', 'atoms': [0], 'partners': [1]}, 'cv.r0: missing'),
        ({'type': 'coordination', 'atoms': [0], 'partners': [1], 'r0': -1}, 'cv.r0: must be a positive'),
        ({'type': 'coordination', 'atoms': [0], 'partners': [1], 'r0': math.inf}, 'cv.r0: must be a positive'),
        ({'type': 'coordination', 'atoms': [0], 'partners': [1], 'r0': 1, 'n': 0}, 'cv.n: must be a positive'),
        ({'type': 'coordination', 'atoms': [0], 'partners': [1], 'r0': 1, 'm': 6}, 'cv.m: must be larger than n'),
        ({'type': 'combination', 'terms': []}, 'cv.terms: a combination needs a non-empty list'),
        ({'atoms': [0, 1]}, 'cv.type: missing'),
        ([0, 1], 'cv: must be a mapping'),
    ],
)
def test_spec_errors(spec, message):
    errors = cv_spec_errors(spec)
    assert len(errors) == 1, errors
    assert errors[0].startswith(message), errors


def test_combination_needs_one_unit():
    spec = {
        'type': 'combination',
        'terms': [
            {'cv': {'type': 'distance', 'atoms': [0, 1]}},
            {'cv': {'type': 'point_plane', 'atoms': [0, 1, 2, 3]}},
            {'cv': {'type': 'angle', 'atoms': [0, 1, 2]}},
        ],
    }
    with pytest.raises(CVSpecError) as info:
        cv_from_spec(spec)
    assert info.value.errors == [
        "cv.terms[2].cv: unit 'rad' differs from the 'Å' of terms[0]; the terms of a combination need one unit"
    ]
    angles = Combination([(Angle(0, 1, 2), 1.0), (Dihedral(0, 1, 2, 3), 2.0)])
    assert (angles.unit, angles.file_unit, angles.period) == ('rad', 'deg', None)  # combinations are never periodic
    with pytest.raises(CVSpecError):
        Distance(1, 1)


# ------------------------------------------------------------------------------------ values and gradients
def pbc_frames(n_frames=4, n_atoms=6, box=8.0, seed=1, unwrapped=False):
    """Compact clusters (diameter below half the box) around a corner of a periodic box, so they straddle its faces.

    With ``unwrapped`` also return the (n_frames, n_atoms, 3) positions of the clusters before wrapping.
    """
    rng = np.random.default_rng(seed)
    frames, whole = [], []
    while len(frames) < n_frames:
        cluster = rng.normal(scale=0.8, size=(n_atoms, 3))
        if np.linalg.norm(cluster[:, None] - cluster[None], axis=-1).max() > 0.45 * box:
            continue
        positions = cluster + rng.uniform(-1.0, 1.0, 3)
        atoms = Atoms('H' * n_atoms, positions=positions, cell=np.eye(3) * box, pbc=True)
        atoms.wrap()
        frames.append(atoms)
        whole.append(positions)
    return (frames, np.stack(whole)) if unwrapped else frames


def mic_vector(frame, a, b):
    return frame.get_distance(a, b, mic=True, vector=True)


def numpy_value(kind, frame):
    """Independent numpy/ASE value of each spec in ``SPECS``, internal units."""
    if kind == 'distance':
        return frame.get_distance(0, 3, mic=True)
    if kind == 'angle':
        return math.radians(frame.get_angle(0, 1, 2, mic=True))
    if kind == 'dihedral':
        return (math.radians(frame.get_dihedral(2, 0, 1, 3, mic=True)) + math.pi) % (2 * math.pi) - math.pi
    if kind == 'distance_difference':
        return frame.get_distance(0, 1, mic=True) - frame.get_distance(2, 1, mic=True)
    if kind == 'coordination':
        x = np.array(
            [frame.get_distance(a, b, mic=True) for a, b in [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]]
        )
        x = x / 2.5
        return float(np.sum((1 - x**6) / (1 - x**12)))
    if kind == 'point_plane':
        u, v, w = mic_vector(frame, 0, 1), mic_vector(frame, 0, 2), mic_vector(frame, 0, 4)
        normal = np.cross(u, v)
        return float(w @ normal / np.linalg.norm(normal))
    if kind == 'position':
        return float(frame.positions[3, 1])
    if kind == 'combination':
        u, v, w = mic_vector(frame, 0, 1), mic_vector(frame, 0, 2), mic_vector(frame, 0, 3)
        normal = np.cross(u, v)
        return frame.get_distance(0, 1, mic=True) - 0.5 * float(w @ normal / np.linalg.norm(normal))
    raise KeyError(kind)


@pytest.mark.parametrize('kind', sorted(SPECS))
def test_values_against_numpy_and_ase(kind):
    frames = pbc_frames()
    pos, cell, pbc = as_tensors(frames)
    cv = cv_from_spec(SPECS[kind])
    values = cv(pos, cell, pbc).numpy()
    expected = [numpy_value(kind, f) for f in frames]
    if kind == 'dihedral':  # compare on the circle: +-pi are the same angle
        values, expected = np.exp(1j * values), np.exp(1j * np.array(expected))
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kind', sorted(set(SPECS) - {'position'}))  # an absolute coordinate moves with the image
def test_unwrapped_clusters_in_open_space_agree(kind):
    """A cluster split across the faces of a periodic box gives the value of the unwrapped cluster."""
    frames, whole = pbc_frames(unwrapped=True)
    pos, cell, pbc = as_tensors(frames)
    assert not any(np.allclose(f.positions, w) for f, w in zip(frames, whole, strict=True))  # all split
    unwrapped = torch.tensor(whole)
    cv = cv_from_spec(SPECS[kind])
    np.testing.assert_allclose(cv(pos, cell, pbc).numpy(), cv(unwrapped).numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kind', sorted(SPECS))
def test_gradient_against_central_differences(kind):
    frames = pbc_frames(n_frames=2)
    pos, cell, pbc = as_tensors(frames)
    cv = cv_from_spec(SPECS[kind])
    pos = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cv(pos, cell, pbc).sum(), pos)
    h = 1e-6
    numeric = torch.zeros_like(pos)
    with torch.no_grad():
        for idx in np.ndindex(*pos.shape):
            plus, minus = pos.detach().clone(), pos.detach().clone()
            plus[idx] += h
            minus[idx] -= h
            numeric[idx] = (cv(plus, cell, pbc).sum() - cv(minus, cell, pbc).sum()) / (2 * h)
    np.testing.assert_allclose(grad.numpy(), numeric.numpy(), rtol=1e-6, atol=1e-7)
    # the atoms a CV does not use get no force
    unused = [a for a in range(pos.shape[1]) if a not in cv.atoms]
    assert torch.all(grad[:, unused] == 0)


@pytest.mark.parametrize('kind', ['coordination', 'point_plane', 'combination', 'distance_difference'])
def test_flattened_ragged_batch_new_types(kind):
    frames = pbc_frames(3)
    pos, cell, pbc = as_tensors(frames)
    flat = torch.cat([pos[0], torch.zeros(2, 3, dtype=pos.dtype), pos[1], pos[2]])
    offsets = torch.tensor([0, 8, 14])
    cv = cv_from_spec(SPECS[kind])
    np.testing.assert_allclose(cv(flat, cell, pbc, offsets).numpy(), cv(pos, cell, pbc).numpy())
    # a single replica without offsets, and a (3, 3) cell for all replicas
    np.testing.assert_allclose(cv(pos[1], cell[1]).numpy(), cv(pos, cell[1]).numpy()[1:2])


def test_point_plane_known_values():
    # ammonia-like pyramid: N above the H3 plane at height 0.4 Å
    p = torch.tensor([[[0.0, 0.0, 0.4], [1.0, 0.0, 0.0], [-0.5, 0.8, 0.0], [-0.5, -0.8, 0.0]]], dtype=torch.float64)
    assert PointPlane(0, 1, 2, 3)(p).item() == pytest.approx(0.4)
    assert PointPlane(0, 1, 3, 2)(p).item() == pytest.approx(-0.4)  # swapping b and c flips the normal


def test_switching_function_near_r0():
    r0, n, m = 1.3, 6, 12
    r = torch.tensor(
        [0.0, 0.5, r0 * (1 - 1e-3), r0 * (1 - 1e-9), r0, r0 * (1 + 1e-9), r0 * (1 + 1e-3), 3.0, 1e3],
        dtype=torch.float64,
        requires_grad=True,
    )
    s = switching_function(r, r0, n, m)
    (grad,) = torch.autograd.grad(s.sum(), r)
    assert torch.isfinite(s).all()
    assert torch.isfinite(grad).all()
    assert s[4].item() == pytest.approx(n / m, abs=1e-15)
    assert s[0].item() == 1.0
    x = r.detach().numpy() / r0
    far = np.abs(x - 1) > 1e-4
    direct = (1 - x[far] ** n) / (1 - x[far] ** m)
    np.testing.assert_allclose(s.detach().numpy()[far], direct, rtol=1e-9)
    # the derivative is continuous through r0: ds/dr there is -(n/m) * (m - n) / (2 r0)
    assert grad[4].item() == pytest.approx(-(n / m) * (m - n) / (2 * r0), rel=1e-12)
    assert grad[3].item() == pytest.approx(grad[4].item(), rel=1e-6)
    assert grad[5].item() == pytest.approx(grad[4].item(), rel=1e-6)
    # float32 and far away: no overflow
    far32 = switching_function(torch.tensor([1e4], dtype=torch.float32, requires_grad=True), r0, n, m)
    assert torch.isfinite(far32).all()
    assert torch.autograd.gradcheck(
        lambda t: switching_function(t, r0, n, m), (r[1:-1].detach().clone().requires_grad_(True),)
    )


def test_coordination_at_r0_has_finite_gradients():
    # two atoms exactly r0 apart (also across a periodic face), plus one far away
    r0 = 1.5
    pos = torch.tensor([[[0.2, 0.0, 0.0], [5.7, 0.0, 0.0], [2.5, 2.5, 2.5]]], dtype=torch.float64, requires_grad=True)
    cell = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 7.0
    cv = Coordination([0], [1, 2], r0=r0)
    value = cv(pos, cell)
    (grad,) = torch.autograd.grad(value.sum(), pos)
    assert torch.isfinite(grad).all()
    far = switching_function(torch.tensor(math.sqrt(2.3**2 + 2 * 2.5**2), dtype=torch.float64), r0).item()
    assert value.item() == pytest.approx(0.5 + far)
    # the CV grows as atom 0 moves towards the image of atom 1 at x = -1.3 Å (s falls with r)
    assert grad[0, 0, 0].item() < 0


def test_coordination_counts_each_pair_once():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    within = Coordination([0, 1, 2], r0=1.0)(pos).item()
    both_orders = Coordination([0, 1, 2], [0, 1, 2], r0=1.0)(pos).item()
    s = switching_function(torch.tensor([1.0, 1.0, math.sqrt(2)], dtype=torch.float64), 1.0).sum().item()
    assert within == pytest.approx(s)
    assert both_orders == pytest.approx(s)


# --------------------------------------------------------------------------------------------------- windows
def test_windows_open_range_on_a_dihedral():
    phi = Dihedral(2, 0, 1, 3)
    w = place_windows(phi, start=-70, stop=70, count=15)
    assert not w.closed
    assert len(w) == 15
    np.testing.assert_allclose(w.centers, np.radians(np.linspace(-70, 70, 15)))
    assert neighbour_pairs(w) == [(k, k + 1) for k in range(14)]


def test_windows_closed_full_period_on_a_dihedral():
    phi = Dihedral(2, 0, 1, 3)
    w = place_windows(phi, start=-180, stop=180, count=36)
    assert w.closed
    assert len(w) == 36
    np.testing.assert_allclose(phi.to_file(w.centers), np.arange(-180, 180, 10.0), atol=1e-12)  # 180 not repeated
    pairs = neighbour_pairs(w)
    assert len(pairs) == 36
    assert pairs[-1] == (35, 0)
    # a window between the last and the first one goes across the seam
    assert phi.to_file(midpoint(phi, w.centers[35], w.centers[0])) == pytest.approx(175.0)
    assert phi.to_file(midpoint(phi, w.centers[0], w.centers[1])) == pytest.approx(-175.0)
    # the same centres from an explicit list, in any order, are the same ring
    listed = place_windows(phi, centers=list(np.arange(-180, 180, 10.0))[::-1])
    assert listed.closed
    np.testing.assert_allclose(listed.centers, w.centers, atol=1e-12)


def test_windows_explicit_centres():
    phi = Dihedral(2, 0, 1, 3)
    # an open arc across the seam is ordered along the circle
    w = place_windows(phi, centers=[170, -170, 180, 160])
    assert not w.closed
    np.testing.assert_allclose(phi.to_file(w.centers), [160, 170, 180, -170])
    d = place_windows(Distance(0, 1), centers=[1.5, 1.0, 2.0])
    assert not d.closed
    np.testing.assert_allclose(d.centers, [1.0, 1.5, 2.0])
    assert midpoint(Distance(0, 1), 1.0, 1.5) == 1.25
    # a distance is never periodic: a range of any length is open
    assert not place_windows(Distance(0, 1), start=1.0, stop=361.0, count=5).closed


@pytest.mark.parametrize(
    ('kwargs', 'messages'),
    [
        ({'start': 0, 'stop': 0, 'count': 1}, ['umbrella.windows.count: at least 2', 'umbrella.windows.stop: equals']),
        ({'start': math.nan, 'stop': 1, 'count': 5}, ['umbrella.windows.start: must be a finite number (deg)']),
        ({'start': -180, 'stop': 270, 'count': 5}, ['umbrella.windows.stop: the range -180..270 deg is longer']),
        ({'start': 1}, ['umbrella.windows.stop: missing', 'umbrella.windows.count: missing']),
        ({'centers': [10.0]}, ['umbrella.windows.centers: at least 2 windows']),
        ({'centers': [10.0, 370.0, 20.0]}, ['umbrella.windows.centers: must be distinct modulo the period (360 deg)']),
        ({'centers': [10.0, math.inf]}, ['umbrella.windows.centers: must be finite numbers']),
        ({'centers': [1.0, 2.0], 'count': 3}, ['umbrella.windows: give `centers`, or `start`']),
    ],
)
def test_window_errors(kwargs, messages):
    with pytest.raises(WindowSpecError) as info:
        place_windows(Dihedral(0, 1, 2, 3), **kwargs)
    assert isinstance(info.value, ValueError)
    assert len(info.value.errors) == len(messages)
    for error, message in zip(info.value.errors, messages, strict=True):
        assert error.startswith(message), error


def test_harmonic_bias_on_windows():
    phi = Dihedral(0, 1, 2, 3)
    w = place_windows(phi, start=-180, stop=180, count=4)
    bias = HarmonicBias(phi, w.centers, kappa=1.0)
    s = torch.full((4,), math.pi - 0.1, dtype=torch.float64)
    # the window at -180 deg is 0.1 rad above s = 180 - 5.7 deg, across the seam
    assert bias.displacement(s)[0].item() == pytest.approx(-0.1)


@pytest.mark.parametrize('kind', sorted(SPECS))
def test_value_and_gradient_agree_with_autograd(kind):
    """The closed forms of value_and_gradient (distance, dihedral, position) and the generic one agree with autograd."""
    from aiida_mlff.core.colvars import CollectiveVariable

    frames = pbc_frames(n_frames=4)
    pos, cell, pbc = as_tensors(frames)
    flat = pos.reshape(-1, 3)
    offsets = torch.arange(len(frames)) * pos.shape[1]
    cv = cv_from_spec(SPECS[kind])
    value, grad = cv.value_and_gradient(flat, cell, pbc, offsets)
    reference, reference_grad = CollectiveVariable.value_and_gradient(cv, flat, cell, pbc, offsets)
    np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad.numpy(), reference_grad.numpy(), rtol=0, atol=1e-10)
    assert grad.shape == (len(frames), len(cv.atoms), 3)
