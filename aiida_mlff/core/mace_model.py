"""MACE (an equivariant message-passing network, the ``mace-torch`` library) as an architecture of our contract.

:class:`MacePotential` holds a committee of ``ScaleShiftMACE`` models built by mace-torch and evaluates them on our
batches and neighbour lists: energies [eV], forces [eV/Å], stress [eV/Å^3] and the committee statistics of
:mod:`aiida_mlff.core.contract`, so that it runs in our batched MD, through the ASE calculator and in our potential
files. mace-torch is imported only when a MACE model is built (``pip install mace-torch``, the ``mace`` extra).

Importing ``mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the process. Our potential files are read with an
explicit ``weights_only=True``, which that variable does not override (``tests/core/test_contract.py`` proves it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers
from torch import Tensor, nn

from .architectures import ArchitectureError
from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors
from .models import Potential, atom_force_deviation

__all__ = ['MacePotential', 'build_mace']


def _irreps(channels: int, max_l: int) -> str:
    """Hidden irreps: ``channels`` copies of every even/odd-parity order up to ``max_l`` (``'32x0e + 32x1o'``)."""
    return ' + '.join(f'{channels}x{ell}{"e" if ell % 2 == 0 else "o"}' for ell in range(max_l + 1))


def _member(hyper: dict, n_elements: int, numbers: list[int]) -> nn.Module:
    """One ``ScaleShiftMACE`` of mace-torch from our hyperparameters (weights from the current torch seed)."""
    # mace first: importing it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, without which e3nn 0.4.4 (mace-torch's pin)
    # cannot read its own constants under torch >= 2.6; our potential files pass weights_only=True explicitly
    import mace  # noqa: F401
    from e3nn import o3
    from mace.modules import ScaleShiftMACE

    transform = hyper['distance_transform']
    return ScaleShiftMACE(
        r_max=float(hyper['cutoff']),
        num_bessel=int(hyper['n_bessel']),
        num_polynomial_cutoff=int(hyper['polynomial_cutoff']),
        max_ell=int(hyper['max_ell']),
        interaction_cls=_interaction_class(hyper['interaction']),
        interaction_cls_first=_interaction_class(hyper['interaction_first']),
        num_interactions=int(hyper['interactions']),
        num_elements=n_elements,
        hidden_irreps=o3.Irreps(_irreps(int(hyper['channels']), int(hyper['max_l']))),
        MLP_irreps=o3.Irreps(f'{int(hyper["readout"])}x0e'),
        atomic_energies=np.zeros(n_elements),
        avg_num_neighbors=float(hyper['avg_neighbors']),
        atomic_numbers=numbers,
        correlation=int(hyper['correlation']),
        gate=nn.functional.silu,
        radial_MLP=[int(w) for w in hyper['radial_mlp']],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
        pair_repulsion=bool(hyper['pair_repulsion']),
        distance_transform='None' if transform is None else str(transform),
    )


def _interaction_class(name: str) -> type:
    """mace-torch's interaction block class called ``name`` (a ValueError lists the known names)."""
    from mace.modules import interaction_classes

    if name not in interaction_classes:
        raise ValueError(f'mace-torch has no interaction block {name!r} (known: {sorted(interaction_classes)})')
    return interaction_classes[name]


class MacePotential(nn.Module):
    """A committee of MACE models (mace-torch) behind :class:`aiida_mlff.core.contract.StoredPotential`.

    Members differ by their initial weights (seeds ``seed``, ``seed + 1``, ...). ``reference_energies`` (M, E) are
    per-element energy offsets [eV] added to every member's energy, as in our BP potential; training sets them.
    """

    architecture = 'mace'

    def __init__(self, elements: Sequence[str], committee: int = 1, seed: int = 0, **hyper) -> None:
        super().__init__()
        self._elements = sorted(set(elements), key=lambda s: atomic_numbers[s])
        self.seed = int(seed)
        self.hyper = dict(hyper)
        numbers = [atomic_numbers[s] for s in self._elements]
        members = []
        for member in range(committee):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + member)
                members.append(_member(self.hyper, len(numbers), numbers))
        self.members = nn.ModuleList(members)
        self.register_buffer('reference_energies', torch.zeros(committee, len(numbers)))
        lookup = torch.full((max(numbers) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer('_species_of_number', lookup, persistent=False)
        self.metadata: dict = {}

    # the attributes MD, the file format and PotentialData read
    @property
    def cutoff(self) -> float:
        """Radial cutoff of the messages [Å]."""
        return float(self.hyper['cutoff'])

    @property
    def committee_size(self) -> int:
        """Number of committee members M."""
        return len(self.members)

    @property
    def elements(self) -> list[str]:
        """Chemical symbols, sorted by atomic number."""
        return list(self._elements)

    @property
    def dtype(self) -> torch.dtype:
        """Floating point type of the parameters."""
        return self.reference_energies.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.reference_energies.device

    def hyperparameters(self) -> dict:
        """What :func:`build_mace` takes back to build this model again (plain data)."""
        hyper = {k: list(v) if isinstance(v, tuple | list) else v for k, v in self.hyper.items()}
        return {
            'architecture': self.architecture,
            'elements': self.elements,
            'committee': self.committee_size,
            'seed': self.seed,
            **hyper,
        }

    def save(self, path: str | Path) -> Path:
        """Write weights and metadata to one potential file (``potential_io``)."""
        from .potential_io import save_potential

        return save_potential(self, path)

    @torch.no_grad()
    def set_energy_scale(self, scale: float) -> None:
        """Scale [eV] of every member's interaction energy (MACE's scale-shift block; training sets it)."""
        for member in self.members:
            member.scale_shift.scale.fill_(float(scale))

    # ----------------------------------------------------------------------------------------------------------
    def _species(self, numbers: Tensor) -> Tensor:
        """(N,) element index of every atom; a ValueError names elements the model lacks."""
        lookup = self._species_of_number
        known = (numbers < lookup.shape[0]) & (lookup[numbers.clamp(max=lookup.shape[0] - 1)] >= 0)
        if not bool(known.all()):
            missing = sorted({int(z) for z in numbers[~known]})
            raise ValueError(f'atomic numbers {missing} are not in this model (elements {self.elements})')
        return lookup[numbers]

    def graph(self, batch: AtomsBatch, neighbors: Neighbors) -> dict[str, Tensor]:
        """mace-torch's input dictionary for the pairs of ``neighbors`` inside the cutoff (edges i -> j).

        Positions [Å], shifts [Å] and cell [Å] in the model's dtype; what every member (and an imported mace-torch
        model, :mod:`aiida_mlff.core.foreign`) is called with.
        """
        keep = pair_vectors(batch, neighbors).detach().norm(dim=-1) < self.cutoff
        i, j, shifts = neighbors.i[keep], neighbors.j[keep], neighbors.shifts[keep]
        cell = batch.cell.to(self.dtype)
        shift_vectors = torch.bmm(shifts.to(self.dtype).unsqueeze(1), cell[batch.batch[i]]).squeeze(1)
        species = self._species(batch.numbers)
        counts = torch.bincount(batch.batch, minlength=batch.n_systems)
        return {
            'positions': batch.positions.to(self.dtype),
            'node_attrs': nn.functional.one_hot(species, len(self._elements)).to(self.dtype),
            'edge_index': torch.stack([i, j]),
            'shifts': shift_vectors,
            'unit_shifts': shifts.to(self.dtype),
            'cell': cell.reshape(-1, 3),
            'batch': batch.batch,
            'ptr': torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
        }

    def evaluate(
        self,
        batch: AtomsBatch,
        neighbors: Neighbors | None = None,
        forces: bool = True,
        stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, Tensor]:
        """Energies [eV], forces [eV/Å], stress [eV/Å^3] (NaN for open systems) and committee statistics.

        ``create_graph`` keeps the graph for training (forces differentiable in the weights).
        """
        if neighbors is None:
            neighbors = neighbor_list(batch, self.cutoff)
        with torch.enable_grad():  # forces and stress are gradients, also when the caller runs without grad
            return self._evaluate(batch, neighbors, forces, stress, create_graph)

    def _evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors, forces: bool, stress: bool, create_graph: bool
    ) -> dict[str, Tensor]:
        graph = self.graph(batch, neighbors)
        species = self._species(batch.numbers)
        offsets = self.reference_energies[:, species]  # (M, N)
        energies, member_forces, stresses = [], [], []
        for m, member in enumerate(self.members):
            data = dict(graph, positions=graph['positions'].detach().clone())
            out = member(data, training=create_graph, compute_force=forces, compute_stress=stress)
            offset = offsets[m].new_zeros(batch.n_systems).index_add(0, batch.batch, offsets[m])
            energies.append(out['energy'] + offset)
            if forces:
                member_forces.append(out['forces'])
            if stress:
                stresses.append(out['stress'])
        return self._result(batch, torch.stack(energies), member_forces, stresses, detach=not create_graph)

    @staticmethod
    def _result(batch: AtomsBatch, energies: Tensor, member_forces, stresses, detach: bool) -> dict[str, Tensor]:
        """The contract's dictionary from every member's energies (M, B), forces and stresses."""
        n_members = energies.shape[0]
        out = Potential._result(energies, detach=False)  # energies, their mean and spread, as our BP potential
        if member_forces:
            stacked = torch.stack(member_forces)
            out['forces'] = stacked.mean(0)
            deviation = atom_force_deviation(stacked, out['forces'])
            spread = deviation.new_zeros(batch.n_systems).scatter_reduce(
                0, batch.batch, deviation, 'amax', include_self=False
            )
            out['max_force_deviation'] = spread
            if n_members > 1:
                out['member_forces'] = stacked
        else:
            out['max_force_deviation'] = torch.zeros_like(out['energy'])
        if stresses:
            periodic = batch.pbc.any(dim=1).view(-1, 1, 1)
            mean = torch.stack(stresses).mean(0)
            out['stress'] = torch.where(periodic, mean, torch.full_like(mean, float('nan')))
        return {k: v.detach() for k, v in out.items()} if detach else out


def build_mace(
    elements: Sequence[str],
    cutoff: float = 5.0,
    committee: int = 1,
    seed: int = 0,
    channels: int = 32,
    max_l: int = 1,
    max_ell: int = 3,
    correlation: int = 3,
    interactions: int = 2,
    n_bessel: int = 8,
    polynomial_cutoff: int = 5,
    radial_mlp: Sequence[int] = (32, 32, 32),
    readout: int = 16,
    avg_neighbors: float = 10.0,
    interaction_first: str = 'RealAgnosticResidualInteractionBlock',
    interaction: str = 'RealAgnosticResidualInteractionBlock',
    pair_repulsion: bool = False,
    distance_transform: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = 'cpu',
) -> MacePotential:
    """Builder of the ``mace`` architecture.

    Cutoff [Å]; ``channels`` copies of the orders up to ``max_l`` as hidden features, spherical harmonics up to
    ``max_ell``, body order ``correlation + 1``, ``interactions`` message passes, ``avg_neighbors`` the normalisation
    of the messages. ``interaction_first`` and ``interaction``: mace-torch's interaction block classes (by name) of the
    first and the later message passes; ``pair_repulsion`` adds MACE's ZBL pair repulsion, ``distance_transform``
    (``'Agnesi'``, ``'Soft'`` or None) transforms the distances before the radial basis. These four follow mace-torch's
    own options, so that a model mace-torch trained can be imported (:func:`aiida_mlff.core.foreign.import_mace_model`).
    Raises ArchitectureError when mace-torch is not installed.
    """
    _require_mace()
    pot = MacePotential(
        elements,
        committee=committee,
        seed=seed,
        cutoff=float(cutoff),
        channels=int(channels),
        max_l=int(max_l),
        max_ell=int(max_ell),
        correlation=int(correlation),
        interactions=int(interactions),
        n_bessel=int(n_bessel),
        polynomial_cutoff=int(polynomial_cutoff),
        radial_mlp=[int(w) for w in radial_mlp],
        readout=int(readout),
        avg_neighbors=float(avg_neighbors),
        interaction_first=str(interaction_first),
        interaction=str(interaction),
        pair_repulsion=bool(pair_repulsion),
        distance_transform=None if distance_transform in (None, 'None') else str(distance_transform),
    )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace('torch.', ''))
    return pot.to(device=device, dtype=dtype)


def _require_mace() -> None:
    """Raise ArchitectureError saying how to install mace-torch when it is missing."""
    if importlib.util.find_spec('mace') is None or importlib.util.find_spec('e3nn') is None:
        raise ArchitectureError(
            "architecture 'mace' needs the mace-torch library: pip install 'aiida-mlff[mace]' (or mace-torch)"
        )
