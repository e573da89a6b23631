"""Per-element atomic networks and the ``Potential`` (energy, forces, stress, committee statistics).

The energy of a system is ``E = sum_i [scale * NN_{Z_i}(x_i) + E0_{Z_i}]`` with ``x_i`` the normalised descriptor
of atom i (``descriptors.py``), per-element networks ``NN_Z`` and trainable per-element reference energies ``E0``
[eV]. Forces are ``-dE/dR``, conservative by construction, by one of three paths that agree to rounding: autograd
through descriptor and networks (training, Hessians: the reference); on the CPU, the compiled kernels of
``kernels/bp_pairs.cpp`` (descriptor and its chain rule in one pass each over a full list sorted by centre atom) with
the networks' backward pass written out; elsewhere, the descriptor's torch sums over a half list and its hand-written
derivative with respect to the pair vectors. A committee of M members shares the descriptor and evaluates all member
networks in one batched pass (weights stacked along a member axis). Chirality terms enter the networks as
``log(1 + chi^2)`` (even in chi, and growing slowly where the training data end), so energies do not change under
reflection.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, register_architecture
from .architectures import build as build_architecture
from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors, positive_shift
from .descriptors import Descriptor, DescriptorSpec

__all__ = ['ARCHITECTURES', 'Potential', 'atom_force_deviation', 'register_architecture']

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {'tanh': torch.tanh, 'silu': nn.functional.silu}
KERNEL_ACTIVATIONS = {'tanh': 0, 'silu': 1}  # their codes in kernels/bp_pairs.cpp
KERNEL_MAX_ELEMENTS = 64  # MAX_ELEMENTS of kernels/bp_pairs.cpp


def _half_of(neighbors: Neighbors) -> Neighbors | None:
    """Each pair of a full list once, or None when the list is not symmetric (then it is used as it is).

    A pair is kept as i -> j with i < j; an atom and its own periodic image, with the lexicographically positive shift.
    """
    i, j = neighbors.i, neighbors.j
    first = i < j
    same = i == j
    if bool(same.any()):
        first = first | (same & positive_shift(neighbors.shifts))
    return neighbors.select(first) if 2 * int(first.sum()) == neighbors.n_pairs else None


def atom_force_deviation(member_forces: Tensor, mean: Tensor | None = None) -> Tensor:
    """(N,) committee force deviation of every atom [eV/Å]: ``sqrt(1/M sum_m |F_m,i - <F_i>|^2)``.

    ``member_forces`` is (M, N, 3) [eV/Å]; ``mean``, their mean over members (N, 3), when already at hand. The largest
    value over a structure's atoms is its ``max_force_deviation`` (:meth:`Potential.evaluate`).
    """
    if mean is None:
        mean = member_forces.mean(0)
    return ((member_forces - mean) ** 2).sum(-1).mean(0).sqrt()


class Potential(nn.Module):
    """Behler-Parrinello potential with chirality features and an optional committee.

    Use :meth:`build` to create one, :meth:`save` / :meth:`load` for files, :meth:`evaluate` for energies and
    forces (the interface in ``CONTRACT.md``) and :meth:`calculator` for an ASE calculator.

    Parameters
    ----------
    spec
        Descriptor hyperparameters (elements, cutoffs, basis sizes).
    committee
        Number of members M.
    hidden
        Hidden layer widths of each atomic network.
    activation
        ``'tanh'`` or ``'silu'``.
    seed
        Seed of the weight initialisation (member m uses its own stream).
    """

    architecture = DEFAULT_ARCHITECTURE

    def __init__(
        self,
        spec: DescriptorSpec,
        committee: int = 1,
        hidden: Sequence[int] = (32, 32),
        activation: str = 'tanh',
        seed: int = 0,
    ) -> None:
        super().__init__()
        if committee < 1:
            raise ValueError(f'committee must be >= 1, got {committee}')
        if activation not in ACTIVATIONS:
            raise ValueError(f'unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}')
        self.descriptor = Descriptor(spec)
        self.hidden = [int(h) for h in hidden]
        self.activation = activation
        self.seed = int(seed)
        self._act = ACTIVATIONS[activation]
        n_el, n_feat = self.descriptor.n_elements, self.descriptor.n_features
        self.register_buffer('feature_mean', torch.zeros(n_el, n_feat))
        self.register_buffer('feature_std', torch.ones(n_el, n_feat))
        self.register_buffer('energy_scale', torch.tensor(1.0))
        self.reference_energies = nn.Parameter(torch.zeros(committee, n_el))
        sizes = [n_feat, *self.hidden, 1]
        generator = torch.Generator().manual_seed(self.seed)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            w = torch.randn(committee, n_el, fan_in, fan_out, generator=generator) / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(committee, n_el, fan_out)))
        self.metadata: dict = {}

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, elements: Sequence[str], cutoff: float | None = None, committee: int = 1, seed: int = 0, **hyperparameters
    ) -> Potential:
        """Create a potential.

        Parameters
        ----------
        elements
            Chemical symbols the potential handles.
        cutoff
            Radial cutoff [Å]; None: the architecture's default (5 Å for ``bp-chiral`` and ``mace``; for
            ``xtb-delta`` the cutoff its ``correction`` names, else the correction's default).
        committee
            Number of committee members.
        seed
            Initialisation seed.
        **hyperparameters
            ``architecture`` (registry name, default ``'bp-chiral'``), descriptor options (``angular_cutoff`` [Å],
            ``n_radial``, ``n_angular``, ``zetas``, ``chiral``), network options (``hidden``, ``activation``) and
            ``dtype`` (``torch.float32`` default, or ``'float64'``) and ``device``.
        """
        name = hyperparameters.pop('architecture', cls.architecture)
        if cutoff is not None:
            hyperparameters['cutoff'] = cutoff
        return build_architecture(name, elements=elements, committee=committee, seed=seed, **hyperparameters)

    def hyperparameters(self) -> dict:
        """Everything :meth:`build` needs to recreate this architecture (plain data)."""
        spec = self.descriptor.spec.as_dict()
        return {
            'architecture': self.architecture,
            'elements': spec.pop('elements'),
            'cutoff': spec.pop('cutoff'),
            'committee': self.committee_size,
            'seed': self.seed,
            'hidden': list(self.hidden),
            'activation': self.activation,
            **spec,
        }

    @property
    def cutoff(self) -> float:
        """Largest cutoff the model needs [Å]."""
        return float(self.descriptor.spec.cutoff)

    @property
    def committee_size(self) -> int:
        """Number of committee members M."""
        return int(self.reference_energies.shape[0])

    @property
    def elements(self) -> list[str]:
        """Chemical symbols, sorted by atomic number."""
        return list(self.descriptor.spec.elements)

    @property
    def dtype(self) -> torch.dtype:
        """Floating point type of the parameters."""
        return self.reference_energies.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.reference_energies.device

    def save(self, path: str | Path) -> Path:
        """Write weights and metadata to one file (see ``potential_io``)."""
        from .potential_io import save_potential

        return save_potential(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = 'cpu') -> Potential:
        """Read a potential file; raises ``PotentialFileError`` saying what is wrong with a bad file."""
        from .potential_io import load_potential

        return load_potential(path, device=device)

    def calculator(self, **kwargs):
        """An ASE calculator for this potential (committees add ``energy_std`` and ``max_force_deviation``)."""
        from .ase_calculator import MLFFCalculator

        return MLFFCalculator(self, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    def transform(self, raw: Tensor, species: Tensor) -> Tensor:
        """Network inputs from raw features: chirality terms squared (parity even), then per-element scaling."""
        d = self.descriptor
        if d.n_chiral:
            raw = torch.cat([raw[:, : d.n_g2 + d.n_g5], torch.log1p(raw[:, d.n_g2 + d.n_g5 :] ** 2)], dim=1)
        return raw

    def normalise(self, features: Tensor, species: Tensor) -> Tensor:
        """Standardise transformed features with the per-element training statistics."""
        return (features - self.feature_mean.index_select(0, species)) / self.feature_std.index_select(0, species)

    def atomic_energies(self, x: Tensor, species: Tensor) -> Tensor:
        """(M, N) atomic energies [eV] of every member from normalised features ``x``.

        ``x`` is (N, F), shared by the members, or (N, M, F), one input per member (then one backward pass gives
        every member's gradient with respect to its own input).
        """
        n_members = self.committee_size
        out = x.new_zeros(n_members, x.shape[0])
        for e, index in enumerate(self._element_rows(species)):
            if index.numel() == 0:
                continue
            w0 = self.weights[0][:, e]  # (M, F, H)
            xe = x.index_select(0, index)
            if xe.dim() == 3:
                h = torch.bmm(xe.transpose(0, 1), w0)  # (M, n_e, H)
            else:
                h = (xe @ w0.permute(1, 0, 2).reshape(w0.shape[1], -1)).reshape(index.numel(), n_members, -1)
                h = h.transpose(0, 1)
            h = self._act(h + self.biases[0][:, e].unsqueeze(1))
            for layer in range(1, len(self.weights)):
                h = torch.baddbmm(self.biases[layer][:, e].unsqueeze(1), h, self.weights[layer][:, e])
                if layer < len(self.weights) - 1:
                    h = self._act(h)
            energy = self.energy_scale * h.squeeze(2) + self.reference_energies[:, e].unsqueeze(1)
            out = out.index_copy(1, index, energy)
        return out

    def last_hidden(self, x: Tensor, species: Tensor) -> Tensor:
        """(M, N, H) activations that feed the last linear layer of every member's atomic networks.

        A hook for last-layer uncertainty (``uncertainty.py``); :meth:`atomic_energies` does not use it. With ``x``
        the normalised features (N, F), member m's atomic energy of atom i (element e) is
        ``energy_scale * (h[m, i] @ weights[-1][m, e, :, 0] + biases[-1][m, e, 0]) + reference_energies[m, e]``
        [eV]. Without hidden layers ``h`` is ``x`` itself (copied per member). Differentiable in ``x``.
        """
        n_members = self.committee_size
        out = x.new_zeros(n_members, x.shape[0], self.weights[-1].shape[2])
        for e in range(self.descriptor.n_elements):
            index = torch.nonzero(species == e).squeeze(1)
            if index.numel() == 0:
                continue
            h = x.index_select(0, index).unsqueeze(0).expand(n_members, -1, -1)  # (M, n_e, F)
            for layer in range(len(self.weights) - 1):
                h = self._act(torch.baddbmm(self.biases[layer][:, e].unsqueeze(1), h, self.weights[layer][:, e]))
            out = out.index_copy(1, index, h)
        return out

    def member_energies(
        self,
        vectors: Tensor | None,
        neighbors: Neighbors | None,
        species: Tensor,
        batch_index: Tensor,
        n_systems: int,
        features: Tensor | None = None,
    ) -> Tensor:
        """(M, B) energies [eV] from pair vectors (P, 3) [Å]; differentiable in ``vectors``.

        With ``features``, the descriptor's raw features (N, n_features), or one copy per member (N, M, n_features),
        ``vectors`` and ``neighbors`` are not used and the energies are differentiable in ``features``.
        """
        raw = self.descriptor(vectors, neighbors.i, neighbors.j, species) if features is None else features
        if raw.dim() == 3:  # one input per member: transform and normalise every (atom, member) row alike
            n_atoms, n_members = raw.shape[0], raw.shape[1]
            rows = species.repeat_interleave(n_members)
            x = self.normalise(self.transform(raw.reshape(n_atoms * n_members, -1), rows), rows)
            x = x.reshape(n_atoms, n_members, -1)
        else:
            x = self.normalise(self.transform(raw, species), species)
        atomic = self.atomic_energies(x, species)
        return atomic.new_zeros(atomic.shape[0], n_systems).index_add(1, batch_index, atomic)

    def energy(self, batch: AtomsBatch, neighbors: Neighbors | None = None) -> Tensor:
        """(M, B) member energies [eV], differentiable in ``batch.positions`` and ``batch.cell`` (Hessians, strain)."""
        if neighbors is None:
            neighbors = neighbor_list(batch, self.cutoff)
        neighbors = self._within_cutoff(batch, neighbors)
        species = self.descriptor.element_index(batch.numbers)
        return self.member_energies(pair_vectors(batch, neighbors), neighbors, species, batch.batch, batch.n_systems)

    def _within_cutoff(self, batch: AtomsBatch, neighbors: Neighbors) -> Neighbors:
        with torch.no_grad():
            d2 = (pair_vectors(batch, neighbors) ** 2).sum(1)
            mask = d2 < self.cutoff**2
        return neighbors if bool(mask.all()) else neighbors.select(mask)

    def evaluate(
        self,
        batch: AtomsBatch,
        neighbors: Neighbors | None = None,
        forces: bool = True,
        stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, Tensor]:
        """Energies, forces, committee statistics and stress of every system in the batch.

        Three paths give the same numbers (to round-off): with ``create_graph``, autograd through the descriptor
        (the reference; training on forces); on the CPU, the compiled pair kernels of ``kernels/bp_pairs.cpp`` over
        a full list (``kernel`` ``'auto'`` or ``'compiled'``); otherwise the descriptor's torch sums over a half list
        and its hand-written chain rule (``kernel='torch'``, and every other device).

        Parameters
        ----------
        batch
            Structures (cast to the model's dtype and device).
        neighbors
            A neighbour list with at least all pairs within ``cutoff`` (extra pairs are dropped); built if None.
        forces
            Compute forces [eV/Å].
        stress
            Compute the stress [eV/Å^3] of periodic systems (``(1/V) dE/d(strain)``, ASE's sign convention).
        create_graph
            Keep the graph of the forces (for training on forces).

        Returns
        -------
        dict
            ``energy`` (B,), ``energies`` (M, B), ``energy_std`` (B,), ``forces`` (N, 3), ``member_forces``
            (M, N, 3) when M > 1, ``max_force_deviation`` (B,), ``stress`` (B, 3, 3) when asked.
        """
        from .memory import retain_freed_memory

        retain_freed_memory()  # once per process: pair-sized temporaries otherwise page-fault at every call
        if batch.dtype != self.dtype or batch.device != self.device:
            batch = batch.to(device=self.device, dtype=self.dtype)
        if neighbors is not None and (neighbors.shifts.dtype != self.dtype or neighbors.i.device != self.device):
            neighbors = Neighbors(
                neighbors.i.to(self.device), neighbors.j.to(self.device), neighbors.shifts.to(self.device, self.dtype)
            )
        species = self._species(batch.numbers)
        need_grad = forces or stress
        module = None if create_graph else self._compiled_kernels()
        if module is not None:
            from .kernels import pair_layout

            if neighbors is None:
                neighbors = neighbor_list(batch, self.cutoff)
            layout = pair_layout(neighbors, species.shape[0])
            if layout is not None:  # a full list
                return self._evaluate_compiled(module, batch, layout, species, need_grad, stress)
        if create_graph:
            return self._evaluate_autograd(batch, neighbors, species, need_grad, stress)
        return self._evaluate_torch(batch, neighbors, species, need_grad, stress)

    def _species(self, numbers: Tensor) -> Tensor:
        """(N,) element index of every atom, remembered for the last ``numbers`` tensor (MD passes the same one)."""
        cached = getattr(self, '_species_cache', None)
        if cached is not None and cached[0] is numbers:
            return cached[1]
        species = self.descriptor.element_index(numbers)
        self._species_cache = (numbers, species, self._element_rows(species))
        return species

    def _element_rows(self, species: Tensor) -> list[Tensor]:
        """Indices of the atoms of every element (remembered with :meth:`_species`)."""
        cached = getattr(self, '_species_cache', None)
        if cached is not None and cached[1] is species:
            return cached[2]
        return [torch.nonzero(species == e).squeeze(1) for e in range(self.descriptor.n_elements)]

    def _compiled_kernels(self):
        """The compiled pair kernels when this potential may and can use them (CPU), else None."""
        if getattr(self, 'kernel', 'auto') == 'torch' or self.device.type != 'cpu':
            return None
        if self.activation not in KERNEL_ACTIVATIONS or self.descriptor.n_elements > KERNEL_MAX_ELEMENTS:
            return None  # what the kernels do not cover goes the torch way
        from .kernels import bp_pairs

        module = bp_pairs()
        if module is None and getattr(self, 'kernel', 'auto') == 'compiled':
            raise RuntimeError('kernel="compiled" was asked for, but the compiled kernels are not available')
        return module

    def _evaluate_compiled(
        self, module, batch: AtomsBatch, layout, species: Tensor, need_grad: bool, stress: bool
    ) -> dict[str, Tensor]:
        """Energies and forces through the compiled descriptor kernels over a full list sorted by centre atom."""
        shifts = layout.shift_vectors(batch.cell, batch.batch)
        positions = batch.positions.detach().contiguous()
        tables = self.descriptor.kernel_tables()
        with torch.no_grad():
            raw, moments = module.features(positions, shifts, layout.rowptr, layout.j, layout.keep, species, *tables)
            atomic, grad_raw = module.networks(raw, species, *self._network_arguments(), need_grad)
            energies = atomic.new_zeros(atomic.shape[0], batch.n_systems).index_add_(1, batch.batch, atomic)
        if not need_grad:
            return self._result(energies)
        grads, member_forces = module.forces(
            positions, shifts, layout.rowptr, layout.j, layout.keep, species, *tables, moments, grad_raw
        )

        def vectors() -> Tensor:
            return positions.index_select(0, layout.j) - positions.index_select(0, layout.i) + shifts

        return self._forces_and_stress(energies, grads, layout.i, vectors, batch, stress, member_forces)

    def _evaluate_torch(
        self, batch: AtomsBatch, neighbors: Neighbors | None, species: Tensor, need_grad: bool, stress: bool
    ) -> dict[str, Tensor]:
        """Energies and forces from the descriptor's torch sums over a half list and its hand-written chain rule.

        Off the CPU (or with ``descriptors.MASKED_PAIRS``) pairs beyond the cutoffs are masked, not compacted: once
        the species and the half list of ``neighbors`` are cached, a call reads nothing on the host.
        """
        from .descriptors import use_masked_pairs

        half = neighbors is None
        if neighbors is None:
            neighbors = neighbor_list(batch, self.cutoff, full_list=False)
        else:
            # each pair once (the list holds i -> j and j -> i): the descriptor counts it for both atoms. The half
            # list is kept on the list object, so an MD run reuses it until its Verlet list is rebuilt.
            cached = getattr(neighbors, '_half_list', False)
            if cached is False:
                cached = _half_of(neighbors)
                neighbors._half_list = cached
            if cached is not None:
                neighbors, half = cached, True
        masked = use_masked_pairs(batch.positions.device)
        neighbors, vectors = self._pairs_within_cutoff(batch, neighbors, masked)
        context = {} if need_grad else None
        with torch.no_grad():
            sums = self.descriptor.accumulate(
                vectors, neighbors.i, neighbors.j, species, context, half=half, masked=masked
            )
        energies, raw = self._energies_from_sums(sums, species, batch, need_grad)
        if not need_grad:
            return self._result(energies)
        gradients = self.descriptor.combine_backward(*sums, self._feature_gradients(energies, raw))
        grads = self.descriptor.pair_gradients(context, *gradients)
        return self._forces_and_stress(energies, grads, neighbors.i, lambda: vectors, batch, stress, j=neighbors.j)

    def _evaluate_autograd(
        self, batch: AtomsBatch, neighbors: Neighbors | None, species: Tensor, need_grad: bool, stress: bool
    ) -> dict[str, Tensor]:
        """Autograd through the descriptor: the forces stay differentiable (training on forces); the reference."""
        if neighbors is None:
            neighbors = neighbor_list(batch, self.cutoff)
        neighbors, vectors = self._pairs_within_cutoff(batch, neighbors)
        with torch.set_grad_enabled(True):
            if need_grad and not vectors.requires_grad:
                vectors.requires_grad_(True)
            energies = self.member_energies(vectors, neighbors, species, batch.batch, batch.n_systems)
        if not need_grad:
            return self._result(energies, detach=False)
        grads = self._member_pair_gradients(energies, vectors, True).transpose(0, 1)  # (P, M, 3)
        return self._forces_and_stress(
            energies, grads, neighbors.i, lambda: vectors, batch, stress, j=neighbors.j, detach=False
        )

    def _pairs_within_cutoff(
        self, batch: AtomsBatch, neighbors: Neighbors, masked: bool = False
    ) -> tuple[Neighbors, Tensor]:
        """The pairs of ``neighbors`` closer than the cutoff and their vectors (P, 3) [Å].

        With ``masked``, every pair and its vector, without a host read (the descriptor masks the far pairs).
        """
        vectors = pair_vectors(batch, neighbors)
        if masked:
            return neighbors, vectors
        mask = (vectors.detach() ** 2).sum(1) < self.cutoff**2
        if not bool(mask.all()):
            keep = torch.nonzero(mask).squeeze(1)
            neighbors = Neighbors(
                neighbors.i.index_select(0, keep),
                neighbors.j.index_select(0, keep),
                neighbors.shifts.index_select(0, keep),
            )
            vectors = vectors.index_select(0, keep)
        return neighbors, vectors

    def _energies_from_sums(
        self, sums: tuple[Tensor, Tensor, Tensor], species: Tensor, batch: AtomsBatch, need_grad: bool
    ) -> tuple[Tensor, Tensor]:
        """(M, B) member energies from the descriptor's per-atom sums, and the raw features they are a graph of."""
        with torch.no_grad():
            raw = self.descriptor.combine(*sums)
        return self._energies_from_features(raw, species, batch, need_grad)

    def _energies_from_features(
        self, raw: Tensor, species: Tensor, batch: AtomsBatch, need_grad: bool
    ) -> tuple[Tensor, Tensor]:
        """(M, B) member energies from raw features (N, F), and the features they are a graph of.

        A committee gets one copy of the features per member, so that one backward pass gives every member's gradient.
        """
        with torch.no_grad():
            if need_grad and self.committee_size > 1:
                raw = raw.unsqueeze(1).expand(-1, self.committee_size, -1).contiguous()
            raw.requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            energies = self.member_energies(None, None, species, batch.batch, batch.n_systems, features=raw)
        return energies, raw

    def _network_arguments(self) -> tuple:
        """The networks as the compiled kernel takes them, kept until a parameter changes.

        Weights, biases, normalisation, reference energies, energy scale, the number of features before the chirality
        terms and the activation.
        """
        key = self._parameter_key()
        cached = getattr(self, '_network_arguments_cache', None)
        if cached is not None and cached[0] == key:
            return cached[1]
        d = self.descriptor
        with torch.no_grad():
            arguments = (
                [w.detach().contiguous() for w in self.weights],
                [b.detach().contiguous() for b in self.biases],
                self.feature_mean.contiguous(),
                (1.0 / self.feature_std).contiguous(),
                self.reference_energies.detach().contiguous(),
                float(self.energy_scale),
                d.n_g2 + d.n_g5 if d.n_chiral else d.n_features,
                KERNEL_ACTIVATIONS[self.activation],
            )
        self._network_arguments_cache = (key, arguments)
        return arguments

    def _parameter_key(self) -> tuple:
        """Identity and version of every parameter and normalisation buffer (training changes them in place)."""
        tensors = [*self.parameters(), self.feature_mean, self.feature_std, self.energy_scale]
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def _feature_gradients(self, energies: Tensor, raw: Tensor) -> Tensor:
        """(M, N, n_features) gradients of every member's energy with respect to the raw features."""
        if raw.dim() == 3:
            return torch.autograd.grad(energies.sum(), raw)[0].transpose(0, 1)
        return self._member_pair_gradients(energies, raw, False)

    @staticmethod
    def _result(energies: Tensor, detach: bool = True) -> dict[str, Tensor]:
        """Energy entries of the result: ``energies`` (M, B), their mean and spread (B,)."""
        n_members = energies.shape[0]
        result = {
            'energies': energies,
            'energy': energies.mean(0),
            'energy_std': energies.std(0, unbiased=False) if n_members > 1 else torch.zeros_like(energies[0]),
        }
        return {k: v.detach() for k, v in result.items()} if detach else result

    def _forces_and_stress(
        self,
        energies: Tensor,
        grads: Tensor,
        i: Tensor,
        vectors: Callable[[], Tensor],
        batch: AtomsBatch,
        stress: bool,
        member_forces: Tensor | None = None,
        j: Tensor | None = None,
        detach: bool = True,
    ) -> dict[str, Tensor]:
        """Forces, committee deviations and stress from dE_m/d(pair vector) ``grads`` (P, M, 3) of pairs i -> j.

        ``member_forces`` (M, N, 3) [eV/Å] when already summed, else summed here over the pairs (needs ``j``).
        """
        result = self._result(energies, detach=False)
        n_members, n_atoms = energies.shape[0], batch.positions.shape[0]
        if member_forces is None:
            flat = grads.reshape(-1, n_members * 3)  # (P, M*3)
            member_forces = flat.new_zeros(n_atoms, n_members * 3).index_add(0, i, flat).index_add(0, j, -flat)
            member_forces = member_forces.reshape(n_atoms, n_members, 3).permute(1, 0, 2)
        result['forces'] = member_forces.mean(0)
        result['max_force_deviation'] = torch.zeros_like(result['energy'])
        if n_members > 1:
            result['member_forces'] = member_forces
            deviation = atom_force_deviation(member_forces, result['forces'])  # (N,)
            result['max_force_deviation'] = result['max_force_deviation'].scatter_reduce(
                0, batch.batch, deviation, reduce='amax', include_self=True
            )
        if stress:
            pair_virial = vectors().unsqueeze(2) * grads.mean(1).unsqueeze(1)  # (P, 3, 3)
            virial = pair_virial.new_zeros(batch.n_systems, 3, 3).index_add(0, batch.batch[i], pair_virial)
            volume = torch.linalg.det(batch.cell).abs()
            periodic = batch.pbc.all(1) & (volume > 0)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            virial = 0.5 * (virial + virial.transpose(1, 2))
            result['stress'] = torch.where(periodic.view(-1, 1, 1), virial / safe.view(-1, 1, 1), torch.nan)
        return {k: v.detach() for k, v in result.items()} if detach else result

    @staticmethod
    def _member_pair_gradients(
        energies: Tensor, inputs: Tensor | Sequence[Tensor], create_graph: bool
    ) -> Tensor | list[Tensor]:
        """Gradients of every member's total energy: (M, *input.shape) for one input, a list of them for several."""
        n_members = energies.shape[0]
        totals = energies.sum(1)
        single = isinstance(inputs, Tensor)
        inputs = [inputs] if single else list(inputs)
        per_member = [
            torch.autograd.grad(
                totals[m],
                inputs,
                create_graph=create_graph,
                retain_graph=create_graph or m < n_members - 1,
                allow_unused=True,
                materialize_grads=True,
            )
            for m in range(n_members)
        ]
        stacked = [torch.stack([grads[k] for grads in per_member]) for k in range(len(inputs))]
        return stacked[0] if single else stacked


def build_bp_chiral(
    elements: Sequence[str],
    cutoff: float = 5.0,
    committee: int = 1,
    seed: int = 0,
    angular_cutoff: float = 3.5,
    n_radial: int = 8,
    n_angular: int = 3,
    zetas: Sequence[int] = (1, 2),
    chiral: bool = True,
    hidden: Sequence[int] = (32, 32),
    activation: str = 'tanh',
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = 'cpu',
) -> Potential:
    """Builder of the Behler-Parrinello potential with chirality features (see :meth:`Potential.build`)."""
    spec = DescriptorSpec(
        elements=list(elements),
        cutoff=float(cutoff),
        angular_cutoff=float(angular_cutoff),
        n_radial=int(n_radial),
        n_angular=int(n_angular),
        zetas=[int(z) for z in zetas],
        chiral=bool(chiral),
    )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace('torch.', ''))
    pot = Potential(spec, committee=committee, hidden=hidden, activation=activation, seed=seed)
    return pot.to(device=device, dtype=dtype)
