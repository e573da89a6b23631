"""Behler-Parrinello symmetry functions and signed-volume chirality terms, vectorised over pairs.

Per centre atom i, with neighbours j, k of elements a, b, distances r [Å] and cutoff functions f_c:

* G2 (radial, cutoff ``cutoff``): ``G2[a, s] = sum_{j in a} exp(-eta (r_ij - r_s)^2) f_c(r_ij)``.
* G5 (angular, shorter cutoff ``angular_cutoff``):
  ``G5[ab, s, zeta, lambda] = 2^(1-zeta) sum_{j != k} (1 + lambda cos theta_jik)^zeta g_s(r_ij) g_s(r_ik)`` with
  ``g_s(r) = exp(-eta (r - r_s)^2) f_c(r)``. The sum over neighbour pairs is evaluated exactly, without building
  triplets, from per-atom moment tensors: ``sum_{jk} cos^n theta g_j g_k = |sum_j g_j u_j^{(x)n}|^2``.
* Chirality (pseudoscalars): with vector moments ``V_c = sum_{j in a} g_s(r_ij) u_ij`` for channels c = (a, s),
  ``chi[c1, c2, c3] = V_c1 . (V_c2 x V_c3) = sum_{jkl} g g g  u_ij . (u_ik x u_il)``, a sum of signed volumes of
  neighbour triples. It changes sign under a reflection and is invariant under proper rotations. The potential
  feeds ``chi^2`` (parity even) to its networks, so energies are the same for mirror images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations, combinations_with_replacement

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor

from .atoms import AtomsBatch, neighbor_list, pair_vectors

__all__ = ['Descriptor', 'DescriptorSpec', 'cosine_cutoff', 'describe']

F64 = torch.float64
MAX_ORDER = 4  # largest power of cos(theta) needed (zeta <= 4)


def cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    """Behler's cosine cutoff ``0.5 (cos(pi r / rc) + 1)`` for r < rc, else 0 (smooth first derivative)."""
    return torch.where(r < cutoff, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))


@dataclass
class DescriptorSpec:
    """Hyperparameters of the descriptor.

    Attributes
    ----------
    elements : list[str]
        Chemical symbols, sorted by atomic number.
    cutoff : float
        Radial (G2) cutoff [Å].
    angular_cutoff : float
        Angular (G5) and chirality cutoff [Å], at most ``cutoff``.
    n_radial : int
        Number of G2 Gaussians per neighbour element, centres evenly spaced in [0.5 Å, cutoff - 0.5 Å].
    n_angular : int
        Number of angular radial Gaussians, centres evenly spaced in [0.9 Å, angular_cutoff - 0.6 Å].
    zetas : list[int]
        Angular exponents (each <= 4); every zeta is used with lambda = +1 and -1.
    chiral : bool
        Whether to include chirality terms.
    """

    elements: list[str]
    cutoff: float = 5.0
    angular_cutoff: float = 3.5
    n_radial: int = 8
    n_angular: int = 3
    zetas: list[int] = field(default_factory=lambda: [1, 2])
    chiral: bool = True

    def __post_init__(self) -> None:
        self.elements = sorted(set(self.elements), key=lambda s: atomic_numbers[s])
        self.angular_cutoff = min(float(self.angular_cutoff), float(self.cutoff))
        if any(z < 1 or z > MAX_ORDER for z in self.zetas):
            raise ValueError(f'zetas must be between 1 and {MAX_ORDER}, got {self.zetas}')

    def as_dict(self) -> dict:
        """Plain-data form (for potential files)."""
        return asdict(self)


def _monomial_table(max_order: int) -> tuple[list[Tensor], Tensor, Tensor]:
    """Symmetric monomials x^a y^b z^c of the unit vector up to ``max_order``.

    Monomials of order n are built from those of order n-1 times (x, y, z) (an outer product flattened to
    3 * n_{n-1} columns); ``select[n - 2]`` picks the first occurrence of each exponent triple. Returns the
    selections, the sqrt multinomial weights and the order of every monomial.
    """
    exps = [[(0, 0, 0)], [(1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    select = []
    for _ in range(2, max_order + 1):
        candidates = [
            tuple(e + (1 if c == d else 0) for d, e in enumerate(prev)) for prev in exps[-1] for c in range(3)
        ]
        unique, index = [], []
        for col, cand in enumerate(candidates):
            if cand not in unique:
                unique.append(cand)
                index.append(col)
        exps.append(unique)
        select.append(torch.tensor(index, dtype=torch.int64))
    weights, orders = [], []
    for n, block in enumerate(exps[: max_order + 1]):
        for a, b, c in block:
            weights.append(math.factorial(n) / (math.factorial(a) * math.factorial(b) * math.factorial(c)))
            orders.append(n)
    return select, torch.tensor(weights, dtype=F64).sqrt(), torch.tensor(orders)


class Descriptor(torch.nn.Module):
    """Computes G2, G5 and chirality features of every atom from pair vectors.

    ``forward`` returns raw features (N, n_features) with signed chirality terms; names in ``names``.
    """

    def __init__(self, spec: DescriptorSpec) -> None:
        super().__init__()
        self.spec = spec
        n_el = len(spec.elements)
        self.n_elements = n_el
        lookup = torch.full((119,), -1, dtype=torch.int64)
        for index, symbol in enumerate(spec.elements):
            lookup[atomic_numbers[symbol]] = index
        self.register_buffer('element_lookup', lookup, persistent=False)

        rs = (
            torch.linspace(0.5, spec.cutoff - 0.5, spec.n_radial, dtype=F64)
            if spec.n_radial > 1
            else torch.ones(1, dtype=F64)
        )
        width = float(rs[1] - rs[0]) if spec.n_radial > 1 else 1.0
        self.register_buffer('radial_centres', rs, persistent=False)
        self.radial_eta = 0.5 / width**2

        ra = (
            torch.linspace(0.9, spec.angular_cutoff - 0.6, spec.n_angular, dtype=F64)
            if spec.n_angular > 1
            else torch.ones(1, dtype=F64)
        )
        awidth = float(ra[1] - ra[0]) if spec.n_angular > 1 else 1.0
        self.register_buffer('angular_centres', ra, persistent=False)
        self.angular_eta = 0.5 / awidth**2

        self.max_order = max(max(spec.zetas), 1)
        select, w, orders = _monomial_table(self.max_order)
        for order, index in enumerate(select, start=2):
            self.register_buffer(f'mono_select_{order}', index, persistent=False)
        self.register_buffer('mono_weight', w, persistent=False)
        order_sum = torch.zeros(len(orders), self.max_order + 1, dtype=F64)
        order_sum[torch.arange(len(orders)), orders] = 1.0
        self.register_buffer('order_sum', order_sum, persistent=False)
        self.n_mono = len(orders)

        # G5 = 2^(1-zeta) sum_n binom(zeta, n) lambda^n Q_n, with Q_n = sum_{j != k} cos^n g_j g_k
        combos = [(zeta, lam) for zeta in spec.zetas for lam in (1, -1)]
        coeff = torch.zeros(self.max_order + 1, len(combos), dtype=F64)
        for col, (zeta, lam) in enumerate(combos):
            for n in range(zeta + 1):
                coeff[n, col] = 2.0 ** (1 - zeta) * math.comb(zeta, n) * float(lam) ** n
        self.register_buffer('g5_coeff', coeff, persistent=False)

        pairs = list(combinations_with_replacement(range(n_el), 2))
        self.register_buffer('pair_a', torch.tensor([p[0] for p in pairs], dtype=torch.int64), persistent=False)
        self.register_buffer('pair_b', torch.tensor([p[1] for p in pairs], dtype=torch.int64), persistent=False)
        # Behler's sum over ordered (j, k) counts unlike pairs in both orders
        self.register_buffer(
            'pair_factor', torch.tensor([1.0 if a == b else 2.0 for a, b in pairs], dtype=F64), persistent=False
        )
        self.register_buffer(
            'pair_same', torch.tensor([1.0 if a == b else 0.0 for a, b in pairs], dtype=F64), persistent=False
        )

        n_channels = n_el * spec.n_angular
        triples = list(combinations(range(n_channels), 3)) if spec.chiral else []
        self.register_buffer('triples', torch.tensor(triples, dtype=torch.int64).reshape(-1, 3), persistent=False)

        names = []
        for a in spec.elements:
            names += [f'G2[{a}](rs={r:.2f})' for r in rs.tolist()]
        for a, b in pairs:
            for r in ra.tolist():
                names += [
                    f'G5[{spec.elements[a]}-{spec.elements[b]}](rs={r:.2f},zeta={z},lambda={lam:+d})'
                    for z, lam in combos
                ]
        channels = [f'{el}{r:.2f}' for el in spec.elements for r in ra.tolist()]
        names += [f'chiral[{channels[p]},{channels[q]},{channels[s]}]' for p, q, s in triples]
        self.names = names
        self.n_g2 = n_el * spec.n_radial
        self.n_g5 = len(pairs) * spec.n_angular * len(combos)
        self.n_chiral = len(triples)
        self.n_features = len(names)

    @staticmethod
    def _gaussians(dist: Tensor, centres: Tensor, eta: float, cutoff: float) -> Tensor:
        """(P, K) ``exp(-eta (d - c_k)^2) f_c(d)`` for distances ``d`` < ``cutoff`` [Å].

        Evaluated as ``exp(2 eta c_k d - eta c_k^2) * [exp(-eta d^2) f_c(d)]`` (one fused matrix product and one
        exponential over the (P, K) block) unless the split exponents could overflow.
        """
        envelope = 0.5 * torch.cos(dist * (math.pi / cutoff)) + 0.5
        if 2.0 * eta * float(centres.max()) * cutoff > 60.0:
            return torch.exp(-eta * (dist.unsqueeze(1) - centres) ** 2) * envelope.unsqueeze(1)
        envelope = envelope * torch.exp(-eta * dist * dist)
        exponent = torch.addmm(
            (-eta * centres * centres).unsqueeze(0), dist.unsqueeze(1), (2.0 * eta * centres).unsqueeze(0)
        )
        return torch.exp(exponent) * envelope.unsqueeze(1)

    def element_index(self, numbers: Tensor) -> Tensor:
        """(N,) index of each atom's element in ``spec.elements``; raises for elements the model does not know."""
        index = self.element_lookup[numbers]
        if bool((index < 0).any()):
            unknown = sorted({chemical_symbols[z] for z in numbers[index < 0].tolist()})
            raise ValueError(f'elements {unknown} are not in this model ({self.spec.elements})')
        return index

    def forward(self, vectors: Tensor, i: Tensor, j: Tensor, species: Tensor) -> Tensor:
        """Raw features of every atom.

        Parameters
        ----------
        vectors
            (P, 3) pair vectors r_j - r_i [Å]; pairs beyond the cutoff contribute nothing.
        i, j
            (P,) centre and neighbour atom indices.
        species
            (N,) element index of each atom.

        Returns
        -------
        Tensor
            (N, n_features): G2, then G5, then signed chirality terms.
        """
        spec = self.spec
        n_atoms = species.shape[0]
        n_el = self.n_elements
        dtype, device = vectors.dtype, vectors.device
        dist = torch.linalg.norm(vectors, dim=1)
        slot = i * n_el + species.index_select(0, j)
        within = dist.detach() < spec.cutoff
        if not bool(within.all()):
            keep = torch.nonzero(within).squeeze(1)
            vectors, dist, slot = vectors.index_select(0, keep), dist.index_select(0, keep), slot.index_select(0, keep)

        radial = self._gaussians(dist, self.radial_centres, self.radial_eta, spec.cutoff)  # (P, K)
        g2 = torch.zeros(n_atoms * n_el, spec.n_radial, dtype=dtype, device=device)
        g2 = g2.index_add(0, slot, radial).reshape(n_atoms, n_el * spec.n_radial)

        inner = dist.detach() < spec.angular_cutoff
        if not bool(inner.all()):
            keep = torch.nonzero(inner).squeeze(1)
            vectors, dist, slot = vectors.index_select(0, keep), dist.index_select(0, keep), slot.index_select(0, keep)
        unit = vectors / dist.unsqueeze(1)
        g = self._gaussians(dist, self.angular_centres, self.angular_eta, spec.angular_cutoff)  # (P', S)
        # symmetric monomials of the unit vector, order by order, times sqrt multinomial weights
        blocks = [torch.ones_like(dist).unsqueeze(1), unit]
        for order in range(2, self.max_order + 1):
            outer = (blocks[-1].unsqueeze(2) * unit.unsqueeze(1)).flatten(1)
            blocks.append(outer.index_select(1, getattr(self, f'mono_select_{order}')))
        mono = torch.cat(blocks, dim=1) * self.mono_weight  # (P', n_mono)
        n_s = spec.n_angular
        moments = torch.zeros(n_atoms * n_el, n_s * self.n_mono, dtype=dtype, device=device)
        moments = moments.index_add(0, slot, (g.unsqueeze(2) * mono.unsqueeze(1)).reshape(-1, n_s * self.n_mono))
        moments = moments.reshape(n_atoms, n_el, n_s, self.n_mono)
        diag = torch.zeros(n_atoms * n_el, n_s, dtype=dtype, device=device)
        diag = diag.index_add(0, slot, g * g).reshape(n_atoms, n_el, n_s)

        # Q_n[ab] = sum_{j in a, k in b, j != k} cos^n g_j g_k
        left, right = moments.index_select(1, self.pair_a), moments.index_select(1, self.pair_b)
        q = (left * right) @ self.order_sum  # (N, pairs, S, orders)
        q = q - (self.pair_same.view(1, -1, 1) * diag.index_select(1, self.pair_a)).unsqueeze(-1)
        g5 = (q @ self.g5_coeff) * self.pair_factor.view(1, -1, 1, 1)
        features = [g2, g5.reshape(n_atoms, -1)]

        if self.n_chiral:
            vec = moments[..., 1:4].reshape(n_atoms, n_el * n_s, 3)  # order-1 monomials x, y, z (weight 1)
            t = self.triples
            cross = torch.linalg.cross(vec.index_select(1, t[:, 1]), vec.index_select(1, t[:, 2]), dim=-1)
            features.append((vec.index_select(1, t[:, 0]) * cross).sum(-1))
        return torch.cat(features, dim=1)


def describe(atoms: Atoms, cutoff: float = 5.0, chiral: bool = True, **options) -> tuple[np.ndarray, list[str]]:
    """Symmetry-function features of every atom of one structure.

    Parameters
    ----------
    atoms
        The structure (open or periodic).
    cutoff
        Radial cutoff [Å].
    chiral
        Include signed chirality terms (names contain ``chiral``); they change sign under reflection.
    **options
        Further ``DescriptorSpec`` fields (``angular_cutoff``, ``n_radial``, ``n_angular``, ``zetas``, ``elements``).

    Returns
    -------
    features : np.ndarray
        (n_atoms, n_features) float64 raw (unnormalised) features.
    names : list[str]
        Name of each column.
    """
    elements = options.pop('elements', sorted(set(atoms.get_chemical_symbols())))
    spec = DescriptorSpec(elements=elements, cutoff=cutoff, chiral=chiral, **options)
    descriptor = Descriptor(spec).double()
    batch = AtomsBatch.from_atoms(atoms, dtype=torch.float64)
    nbrs = neighbor_list(batch, cutoff)
    with torch.no_grad():
        features = descriptor(pair_vectors(batch, nbrs), nbrs.i, nbrs.j, descriptor.element_index(batch.numbers))
    return features.numpy(), list(descriptor.names)
