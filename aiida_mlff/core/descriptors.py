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
  feeds ``log(1 + chi^2)`` (parity even) to its networks, so energies are the same for mirror images.

Evaluation is split in two: :meth:`Descriptor.accumulate` sums per-pair terms into per-atom moments (all the
pair-sized work) and :meth:`Descriptor.combine` turns them into features. ``forward`` (autograd, differentiable
twice: training) is the two in a row. For energies and forces, ``Potential.evaluate`` instead runs ``accumulate`` on
a half pair list without a graph, autograd only from the features through the networks, and the hand-written
chain rule of :meth:`Descriptor.combine_backward` and :meth:`Descriptor.pair_gradients` back to the pair vectors.

Pairs beyond a cutoff must not count, and the cosine cutoff is periodic (not zero beyond rc), so ``accumulate`` selects
pairs in one of two modes (:func:`use_masked_pairs`): *compacted* (the CPU) keeps the pairs within each cutoff with
``torch.nonzero`` and ``index_select`` (least work, but it reads the device on the host); *masked* (every other
device) keeps every pair and sets the cutoff function and its derivative to zero outside ``0 < d < cutoff`` with
``torch.where``, evaluating those pairs at d = cutoff so that nothing overflows or divides by zero: no host read, so
an MD step on a GPU need not wait for the device. Both give the same numbers (the kept pairs see the same arithmetic).
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

__all__ = ['MASKED_PAIRS', 'Descriptor', 'DescriptorSpec', 'cosine_cutoff', 'describe', 'use_masked_pairs']

F64 = torch.float64
MAX_ORDER = 4  # largest power of cos(theta) needed (zeta <= 4)
#: Pair selection of :meth:`Descriptor.accumulate` when not given: None masks pairs off the CPU and compacts them on
#: it; True or False forces masked or compacted pairs everywhere (tests, benchmarks).
MASKED_PAIRS: bool | None = None


def use_masked_pairs(device: torch.device, masked: bool | None = None) -> bool:
    """Whether pairs beyond the cutoffs are masked (no host read) rather than compacted, for tensors on ``device``.

    ``masked`` if given, else :data:`MASKED_PAIRS` if set, else True off the CPU.
    """
    if masked is not None:
        return masked
    if MASKED_PAIRS is not None:
        return MASKED_PAIRS
    return device.type != 'cpu'


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


def _monomials(max_order: int) -> list[tuple[int, int, int]]:
    """Exponent triples (a, b, c) of the monomials x^a y^b z^c of orders 0 to ``max_order``, order by order."""
    exps = [(0, 0, 0)]
    for n in range(1, max_order + 1):
        exps += [(a, b, n - a - b) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]
    return exps


def _monomial_factors(exps: list[tuple[int, int, int]], max_order: int, n_gauss: int) -> tuple[Tensor, Tensor]:
    """Matrices that build ``g_s * w_m * u^e_m`` for every (Gaussian s, monomial m) pair with matrix products only.

    With ``u1 = (1, u_x, u_y, u_z)``: monomial m times its sqrt multinomial weight ``w_m`` is the product over
    f < max_order of ``(u1 @ factors[f])[:, m]`` (each monomial is a product of ``max_order`` entries of u1, padded
    with the 1), and ``(g @ expand)`` repeats Gaussian s over the monomials; columns are ordered
    ``s * n_mono + m``. Returns ``factors`` (max_order, 4, S * n_mono) and ``expand`` (S, S * n_mono).
    """
    n_mono = len(exps)
    factors = torch.zeros(max_order, 4, n_gauss, n_mono, dtype=F64)
    for m, (a, b, c) in enumerate(exps):
        n = a + b + c
        weight = math.sqrt(math.factorial(n) / (math.factorial(a) * math.factorial(b) * math.factorial(c)))
        components = [1] * a + [2] * b + [3] * c + [0] * (max_order - n)
        for f, component in enumerate(components):
            factors[f, component, :, m] = weight if f == 0 else 1.0
    expand = torch.zeros(n_gauss, n_gauss, n_mono, dtype=F64)
    expand[torch.arange(n_gauss), torch.arange(n_gauss), :] = 1.0
    return factors.reshape(max_order, 4, -1), expand.reshape(n_gauss, -1)


def _gaussian_centres(first: float, last: float, n: int) -> tuple[Tensor, float]:
    """Gaussian centres evenly spaced from ``first`` to ``last`` [Å] and their width parameter [1/Å^2].

    ``eta = 0.5 / spacing^2``; for ``n = 1`` one centre at 1 Å with a spacing of 1 Å.
    """
    if n > 1:
        centres = torch.linspace(first, last, n, dtype=F64)
        return centres, 0.5 / float(centres[1] - centres[0]) ** 2
    return torch.ones(1, dtype=F64), 0.5


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

        rs, self.radial_eta = _gaussian_centres(0.5, spec.cutoff - 0.5, spec.n_radial)
        self.register_buffer('radial_centres', rs, persistent=False)
        ra, self.angular_eta = _gaussian_centres(0.9, spec.angular_cutoff - 0.6, spec.n_angular)
        self.register_buffer('angular_centres', ra, persistent=False)

        self.max_order = max(max(spec.zetas), 1)
        exps = _monomials(self.max_order)
        factors, expand = _monomial_factors(exps, self.max_order, spec.n_angular)
        self.register_buffer('mono_factors', factors, persistent=False)
        self.register_buffer('gauss_expand', expand, persistent=False)
        parity = torch.tensor([(-1.0) ** sum(e) for e in exps], dtype=F64).repeat(spec.n_angular)
        self.register_buffer('mono_parity', parity, persistent=False)  # monomials of -u: (-1)^order
        weights = [math.sqrt(math.factorial(sum(e)) / math.prod(math.factorial(k) for k in e)) for e in exps]
        self.register_buffer('mono_exps', torch.tensor(exps, dtype=torch.int64), persistent=False)
        self.register_buffer('mono_weights', torch.tensor(weights, dtype=F64), persistent=False)
        orders = [sum(e) for e in exps]
        order_sum = torch.zeros(len(orders), self.max_order + 1, dtype=F64)
        order_sum[torch.arange(len(orders)), orders] = 1.0
        self.register_buffer('order_sum', order_sum, persistent=False)
        self.n_mono = len(orders)
        # Gaussians as exp(-eta (d - d0)^2) exp(2 eta (c - d0) (d - d0) - eta (c - d0)^2) (see _gaussian_parts)
        self.radial_shift = self._split_shift(rs, self.radial_eta, spec.cutoff)
        self.angular_shift = self._split_shift(ra, self.angular_eta, spec.angular_cutoff)

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
        # gradient of the triple products from the cross products of channel pairs: for chi = a . (b x c),
        # d/da = b x c, d/db = -(a x c), d/dc = a x b
        channel_pairs = list(combinations(range(n_channels), 2)) if spec.chiral else []
        position = {pair: k for k, pair in enumerate(channel_pairs)}
        coef = torch.zeros(len(triples), n_channels, len(channel_pairs), dtype=F64)
        for t, (a, b, c) in enumerate(triples):
            coef[t, a, position[(b, c)]] += 1.0
            coef[t, b, position[(a, c)]] -= 1.0
            coef[t, c, position[(a, b)]] += 1.0
        self.register_buffer(
            'channel_pairs', torch.tensor(channel_pairs, dtype=torch.int64).reshape(-1, 2), persistent=False
        )
        self.register_buffer(
            'chiral_coef', coef.reshape(len(triples), n_channels * len(channel_pairs)), persistent=False
        )

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
    def _split_shift(centres: Tensor, eta: float, cutoff: float) -> float | None:
        """Shift d0 for the split evaluation of the Gaussians, or None where its exponentials could overflow."""
        d0 = 0.5 * cutoff
        spread = float((centres - d0).abs().max())
        largest = max(2.0 * eta * spread * d0, eta * d0 * d0, eta * spread * spread)
        return d0 if largest < 40.0 else None

    @staticmethod
    def _gaussian_parts(
        dist: Tensor, centres: Tensor, eta: float, cutoff: float, shift: float | None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Factors of ``exp(-eta (d - c_k)^2) f_c(d) = basis[:, k] * pre * fc`` for distances ``d`` <= ``cutoff`` [Å].

        With a ``shift`` d0, ``basis`` (P, K) is ``exp(2 eta (c_k - d0) (d - d0) - eta (c_k - d0)^2)`` and ``pre``
        (P,) ``exp(-eta (d - d0)^2)`` (one fused matrix product and one exponential over the (P, K) block);
        without, ``basis`` is ``exp(-eta (d - c_k)^2)`` and ``pre`` is None. ``fc`` (P,) is the cosine cutoff, zero
        where a (P,) ``mask`` (masked pairs, :meth:`_masked_distances`) is false.
        """
        fc = 0.5 * torch.cos(dist * (math.pi / cutoff)) + 0.5
        if mask is not None:
            fc = torch.where(mask, fc, 0.0)
        if shift is None:
            return torch.exp(-eta * (dist.unsqueeze(1) - centres) ** 2), None, fc
        c = centres - shift
        x = dist - shift
        pre = torch.exp(-eta * x * x)
        return (
            torch.exp(torch.addmm((-eta * c * c).unsqueeze(0), x.unsqueeze(1), (2.0 * eta * c).unsqueeze(0))),
            pre,
            fc,
        )

    @staticmethod
    def _gaussian_slopes(
        parts: tuple[Tensor, Tensor | None, Tensor],
        dist: Tensor,
        eta: float,
        cutoff: float,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(P,) a and b [1/Å] with ``d gauss_k / d d = basis_k (a + b c_k)`` (see ``_gaussian_parts``).

        ``d gauss_k / d d = basis_k pre [f_c' - 2 eta d f_c + 2 eta c_k f_c]``; f_c' is zero where ``mask`` is false.
        """
        _, pre, fc = parts
        dfc = (-0.5 * math.pi / cutoff) * torch.sin(dist * (math.pi / cutoff))
        if mask is not None:
            dfc = torch.where(mask, dfc, 0.0)
        a = dfc - (2.0 * eta) * dist * fc
        b = (2.0 * eta) * fc
        if pre is not None:
            a, b = a * pre, b * pre
        return a, b

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
        return self.combine(*self.accumulate(vectors, i, j, species))

    @staticmethod
    def _masked_distances(dist: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
        """Masked mode: (P,) mask of the pairs with ``0 < d < cutoff`` [Å], and distances safe to evaluate.

        Every pair outside the mask gets the distance ``cutoff``, where the Gaussians, the cutoff function and
        ``vector / d`` are finite; the mask zeroes its weight. Zero-length pairs (padding) take no part.
        """
        mask = (dist > 0.0) & (dist < cutoff)
        return mask, torch.where(mask, dist, cutoff)

    @staticmethod
    def _compact(dist: Tensor, cutoff: float, *tensors: Tensor | None) -> tuple[Tensor | None, list[Tensor | None]]:
        """Compacted mode: indices of the pairs with ``d < cutoff`` [Å] and ``tensors`` (P, ...) restricted to them.

        The indices are None when every pair is within the cutoff; None entries of ``tensors`` stay None. Reads the
        device on the host (``bool`` and ``torch.nonzero``).
        """
        within = dist.detach() < cutoff
        if bool(within.all()):
            return None, list(tensors)
        keep = torch.nonzero(within).squeeze(1)
        return keep, [None if t is None else t.index_select(0, keep) for t in tensors]

    def accumulate(
        self,
        vectors: Tensor,
        i: Tensor,
        j: Tensor,
        species: Tensor,
        context: dict | None = None,
        half: bool = False,
        masked: bool | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-atom sums over neighbours, from which :meth:`combine` makes the features.

        Returns ``radial`` (N * n_el, n_radial): G2 Gaussians summed per (atom, neighbour element);
        ``moments`` (N * n_el, n_angular * n_mono): angular Gaussians times unit-vector monomials, summed likewise;
        ``diag`` (N * n_el, n_angular): squared angular Gaussians summed likewise (the j = k terms). Differentiable in
        ``vectors`` [Å]. With ``half``, the pairs are a half list (each unordered pair once) and every pair also counts
        for j, with vector -r_ij (monomials of -u are those of u times (-1)^order): the same sums as the full list
        at half the pair work. With a dict ``context`` (use under ``torch.no_grad()``), stores what
        :meth:`pair_gradients` needs to turn gradients of these sums into gradients of the pair vectors without an
        autograd graph. ``masked`` picks how pairs beyond the cutoffs are left out (:func:`use_masked_pairs`; by
        default masked off the CPU, compacted on it): masked mode reads nothing on the host.
        """
        spec = self.spec
        masked = use_masked_pairs(vectors.device, masked)
        n_atoms = species.shape[0]
        n_el = self.n_elements
        dtype, device = vectors.dtype, vectors.device
        n_pairs = vectors.shape[0]
        dist = torch.linalg.norm(vectors, dim=1)
        slot = i * n_el + species.index_select(0, j)
        slot_r = j * n_el + species.index_select(0, i) if half else None  # the reverse pairs j -> i
        keep, mask = None, None
        if masked:
            mask, dist_r = self._masked_distances(dist, spec.cutoff)
        else:
            keep, (vectors, dist, slot, slot_r) = self._compact(dist, spec.cutoff, vectors, dist, slot, slot_r)
            dist_r = dist

        parts = self._gaussian_parts(dist_r, self.radial_centres, self.radial_eta, spec.cutoff, self.radial_shift, mask)
        basis, pre, fc = parts
        radial = basis * (fc if pre is None else fc * pre).unsqueeze(1)  # (P, K)
        g2 = torch.zeros(n_atoms * n_el, spec.n_radial, dtype=dtype, device=device).index_add(0, slot, radial)
        if half:
            g2 = g2.index_add(0, slot_r, radial)
        if context is not None:
            context.update(
                n_pairs=n_pairs,
                keep=keep,
                mask=mask,
                vectors=vectors,
                dist=dist_r,
                slot=slot,
                slot_r=slot_r,
                radial_parts=parts,
            )
        moments, diag = self._angular_sums(vectors, dist, slot, slot_r, n_atoms, masked, context)
        return g2, moments, diag

    def _angular_sums(
        self,
        vectors: Tensor,
        dist: Tensor,
        slot: Tensor,
        slot_r: Tensor | None,
        n_atoms: int,
        masked: bool,
        context: dict | None,
    ) -> tuple[Tensor, Tensor]:
        """``moments`` and ``diag`` of :meth:`accumulate` from the pairs (P, 3) [Å] kept for the radial sums."""
        spec = self.spec
        n_el, half = self.n_elements, slot_r is not None
        dtype, device = vectors.dtype, vectors.device
        keep_a, mask_a = None, None
        if masked:
            mask_a, dist = self._masked_distances(dist, spec.angular_cutoff)
        else:
            keep_a, (vectors, dist, slot, slot_r) = self._compact(
                dist, spec.angular_cutoff, vectors, dist, slot, slot_r
            )
        unit1 = torch.cat([torch.ones_like(dist).unsqueeze(1), vectors / dist.unsqueeze(1)], dim=1)  # (P', 4)
        parts = self._gaussian_parts(
            dist, self.angular_centres, self.angular_eta, spec.angular_cutoff, self.angular_shift, mask_a
        )
        basis, pre, fc = parts
        g = basis * (fc if pre is None else fc * pre).unsqueeze(1)  # (P', S)
        # g_s times the weighted monomials of the unit vector, (P', S * n_mono), as products of matrix products
        factors = [unit1 @ f for f in self.mono_factors]
        mono = factors[0]
        for f in factors[1:]:
            mono = mono * f
        expanded = g @ self.gauss_expand
        terms = expanded * mono
        moments = torch.zeros(n_atoms * n_el, spec.n_angular * self.n_mono, dtype=dtype, device=device)
        moments = moments.index_add(0, slot, terms)
        diag = torch.zeros(n_atoms * n_el, spec.n_angular, dtype=dtype, device=device).index_add(0, slot, g * g)
        if half:
            moments = moments.index_add(0, slot_r, terms * self.mono_parity)
            diag = diag.index_add(0, slot_r, g * g)
        if context is not None:
            context.update(
                keep_a=keep_a,
                mask_a=mask_a,
                unit1=unit1,
                dist_a=dist,
                slot_a=slot,
                slot_ar=slot_r,
                angular_parts=parts,
                g=g,
                expanded=expanded,
                factors=factors,
                mono=mono,
            )
        return moments, diag

    def kernel_tables(self) -> tuple:
        """The descriptor's constants in the order the compiled kernels (``kernels/bp_pairs.cpp``) take them.

        Index tables (monomial exponents, element pairs, monomial orders, chirality triples), real tables (Gaussian
        centres [Å], monomial weights, G5 pair factors and same-element flags, G5 coefficients), the number of
        elements, and cutoffs [Å] and Gaussian widths [1/Å^2].
        """
        spec = self.spec
        cached = getattr(self, '_kernel_tables', None)
        dtype = self.radial_centres.dtype
        if cached is None or cached[1][0].dtype != dtype or cached[1][0].device != self.radial_centres.device:
            index = [self.mono_exps, self.pair_a, self.pair_b, self.order_sum.argmax(1), self.triples]
            real = [
                self.radial_centres,
                self.angular_centres,
                self.mono_weights,
                self.pair_factor,
                self.pair_same,
                self.g5_coeff,
            ]
            scalars = [float(spec.cutoff), float(spec.angular_cutoff), float(self.radial_eta), float(self.angular_eta)]
            cached = ([t.contiguous() for t in index], [t.contiguous() for t in real], self.n_elements, scalars)
            self._kernel_tables = cached
        return cached

    def combine(self, radial: Tensor, moments: Tensor, diag: Tensor) -> Tensor:
        """(N, n_features) raw features from the per-atom sums of :meth:`accumulate`."""
        spec = self.spec
        n_el, n_s = self.n_elements, spec.n_angular
        n_atoms = radial.shape[0] // n_el
        g2 = radial.reshape(n_atoms, n_el * spec.n_radial)
        moments = moments.reshape(n_atoms, n_el, n_s, self.n_mono)
        diag = diag.reshape(n_atoms, n_el, n_s)

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

    def combine_backward(
        self, radial: Tensor, moments: Tensor, diag: Tensor, grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of the per-atom sums of :meth:`accumulate` from feature gradients.

        ``grad`` (M, N, n_features) holds M gradients of the features of :meth:`combine`; returns (M, ...) stacks
        shaped like ``radial``, ``moments`` and ``diag``.
        """
        spec = self.spec
        n_el, n_s, n_mono = self.n_elements, spec.n_angular, self.n_mono
        n_members, n_atoms = grad.shape[0], grad.shape[1]
        grad_radial = grad[..., : self.n_g2].reshape(n_members, n_atoms * n_el, spec.n_radial)

        # G5 = factor * coeff^T (sum_m left_m right_m order_sum - same * diag)
        mom = moments.reshape(1, n_atoms, n_el, n_s, n_mono)
        n_pairs, n_combo = self.pair_a.shape[0], self.g5_coeff.shape[1]
        g5 = grad[..., self.n_g2 : self.n_g2 + self.n_g5].reshape(n_members, n_atoms, n_pairs, n_s, n_combo)
        gq = (g5 * self.pair_factor.view(1, 1, -1, 1, 1)) @ self.g5_coeff.T  # (M, N, pairs, S, orders)
        gprod = gq @ self.order_sum.T  # (M, N, pairs, S, n_mono)
        left, right = mom.index_select(2, self.pair_a), mom.index_select(2, self.pair_b)
        grad_moments = gprod.new_zeros(n_members, n_atoms, n_el, n_s, n_mono)
        grad_moments = grad_moments.index_add(2, self.pair_a, gprod * right).index_add(2, self.pair_b, gprod * left)
        grad_diag = gq.new_zeros(n_members, n_atoms, n_el, n_s).index_add(
            2, self.pair_a, gq.sum(-1) * (-self.pair_same).view(1, 1, -1, 1)
        )

        if self.n_chiral:
            # chi = a . (b x c): every channel's gradient is a signed sum of cross products of channel pairs
            vec = moments.reshape(n_atoms, n_el * n_s, n_mono)[..., 1:4]
            pairs = self.channel_pairs
            cross = torch.linalg.cross(vec.index_select(1, pairs[:, 0]), vec.index_select(1, pairs[:, 1]), dim=-1)
            gchi = grad[..., self.n_g2 + self.n_g5 :].reshape(n_members * n_atoms, -1)  # (M * N, T)
            weights = (gchi @ self.chiral_coef).reshape(n_members, n_atoms, n_el * n_s, pairs.shape[0])
            grad_vec = torch.matmul(weights, cross)  # (M, N, channels, 3)
            grad_moments = grad_moments.reshape(n_members, n_atoms, n_el * n_s, n_mono)
            grad_moments[..., 1:4] += grad_vec
        return (
            grad_radial,
            grad_moments.reshape(n_members, n_atoms * n_el, n_s * n_mono),
            grad_diag.reshape(n_members, n_atoms * n_el, n_s),
        )

    def pair_gradients(self, context: dict, grad_radial: Tensor, grad_moments: Tensor, grad_diag: Tensor) -> Tensor:
        """(P, M, 3) gradients with respect to the pair vectors, from M gradients of the sums of :meth:`accumulate`.

        ``grad_*`` are (M, ...) stacks shaped like the sums (one per committee member); ``context`` is the dict
        filled by :meth:`accumulate` (for a half list: gradients with respect to the one vector of each pair; masked
        mode or compacted, zero for the pairs beyond the cutoff). The chain rule through the Gaussians, cutoffs and
        monomials is written out, so no autograd graph over pairs is needed (not differentiable again: training uses
        autograd).
        """
        spec = self.spec
        c = context
        dist, vectors, slot = c['dist'], c['vectors'], c['slot']
        half = c['slot_r'] is not None
        # d gauss_k / d d = basis_k (a + b c_k), as one (P, K) block
        slope_a, slope_b = self._gaussian_slopes(c['radial_parts'], dist, self.radial_eta, spec.cutoff, c['mask'])
        radial_slopes = c['radial_parts'][0] * torch.addmm(
            slope_a.unsqueeze(1), slope_b.unsqueeze(1), self.radial_centres.unsqueeze(0)
        )
        unit_r = vectors / dist.unsqueeze(1)
        angular = c['slot_a'].shape[0] > 0
        if angular:
            slot_a, g, unit1, dist_a = c['slot_a'], c['g'], c['unit1'], c['dist_a']
            slope_a, slope_b = self._gaussian_slopes(
                c['angular_parts'], dist_a, self.angular_eta, spec.angular_cutoff, c['mask_a']
            )
            angular_slopes = c['angular_parts'][0] * torch.addmm(
                slope_a.unsqueeze(1), slope_b.unsqueeze(1), self.angular_centres.unsqueeze(0)
            )
            n_pairs, n_s, n_mono = slot_a.shape[0], spec.n_angular, self.n_mono
            mono, expanded, factors = c['mono'], c['expanded'], c['factors']
            unit = unit1[:, 1:]
            inv_a = (1.0 / dist_a).unsqueeze(1)
            # g_s times the products of all monomial factors but one (product rule over the factors)
            others = []
            for f in range(len(factors)):
                rest = expanded
                for k, factor in enumerate(factors):
                    if k != f:
                        rest = rest * factor
                others.append(rest)
            # (3, S * n_mono) maps of every factor onto (x, y, z) of u1 (its first row is the constant 1)
            onto_unit = [matrix[1:] for matrix in self.mono_factors]
        members = []
        for m in range(grad_radial.shape[0]):  # committee members one by one: every tensor stays 2-D and contiguous
            grad_r = grad_radial[m].index_select(0, slot)
            if half:  # the reverse pair j -> i sees the same distance
                grad_r = grad_r + grad_radial[m].index_select(0, c['slot_r'])
            ddist = (grad_r * radial_slopes).sum(1)  # (P,)
            out = ddist.unsqueeze(1) * unit_r  # (P, 3)
            if angular:
                a = grad_moments[m].index_select(0, slot_a)  # (P', S * n_mono)
                grad_d = grad_diag[m].index_select(0, slot_a)
                if half:  # the reverse pair sees -u: its monomials change sign with their order
                    a = a + grad_moments[m].index_select(0, c['slot_ar']) * self.mono_parity
                    grad_d = grad_d + grad_diag[m].index_select(0, c['slot_ar'])
                # d/dg_s (sum over monomials, plus the j = k terms), then through the Gaussians to the distance
                dg = (a * mono).view(n_pairs, n_s, n_mono).sum(-1) + 2.0 * g * grad_d
                dd = (dg * angular_slopes).sum(1)  # (P',)
                # d/du through the monomial factors onto (x, y, z) of u1, then projected off u and divided by d
                gu = None
                for rest, matrix in zip(others, onto_unit, strict=True):
                    term = torch.mm(matrix, (a * rest).T).T  # (P', 3); this orientation is the faster product
                    gu = term if gu is None else gu + term
                radial_part = dd.unsqueeze(1) - (gu * unit).sum(1, keepdim=True) * inv_a
                grad_a = radial_part * unit + gu * inv_a
                keep_a = c['keep_a']
                out = out + grad_a if keep_a is None else out.index_add(0, keep_a, grad_a)
            if c['keep'] is not None:
                out = out.new_zeros(c['n_pairs'], 3).index_add(0, c['keep'], out)
            members.append(out)
        return torch.stack(members, dim=1)


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
