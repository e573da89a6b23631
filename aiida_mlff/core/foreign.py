"""Models written by other programs, imported as our potentials: MACE ``.model`` files (mace-torch).

A MACE ``.model`` file (what ``mace_run_train`` writes, and the MACE foundation models) is a whole ``torch.nn.Module``
saved with ``torch.save(model)``: a pickle. Unpickling runs code that the file names, so :func:`import_mace_model`
is the one place in aiida-mlff that reads a file with ``weights_only=False``; give it only files you trust. It reads
the module's hyperparameters, rebuilds the model as our ``mace`` architecture (:mod:`aiida_mlff.core.mace_model`),
copies the weights, checks on a probe structure that both give the same energy, forces and stress, and records the
file's SHA-256 in ``metadata['imported_from']``. The result is saved as our own potential file, which loads
weights-only like any other, and fine-tunes as a trained potential (:func:`aiida_mlff.core.finetune.is_trained`).

A model that uses a feature our MACE cannot represent (several heads, another radial basis or gate, cuEquivariance
layers, ...) is refused with a :class:`ForeignModelError` naming every such feature, never imported as something else.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from torch import Tensor, nn

from .files import file_sha256

__all__ = ['ForeignModelError', 'import_mace_model', 'mace_hyperparameters']

#: largest difference between the imported and the original model on the probe (float64), relative to 1 + max |value|
AGREEMENT = 1e-8

#: MACE constructor options with one value our ``mace`` architecture builds: (model attribute, that value)
_FIXED_OPTIONS = (
    ('use_so3', False),
    ('use_agnostic_product', False),
    ('use_last_readout_only', False),
    ('use_edge_irreps_first', False),
    ('edge_irreps', None),
    ('apply_cutoff', True),
)

#: mace-torch's distance transform classes -> the name its ``distance_transform`` option takes
_TRANSFORMS = {'AgnesiTransform': 'Agnesi', 'SoftTransform': 'Soft'}


class ForeignModelError(ValueError):
    """A file is not a model this version can import, or the model uses a feature it cannot represent."""


def import_mace_model(
    path: str | Path,
    committee: int = 1,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = 'cpu',
):
    """Our ``mace`` potential with the weights of a MACE ``.model`` file (a pickled mace-torch module).

    Parameters
    ----------
    path
        The file, as ``torch.save(model)`` wrote it (``mace_run_train``'s ``*.model``, a foundation model). Reading
        it unpickles it, which runs code the file names: only import files you trust.
    committee
        Members of the result: 1 is the model itself; more are grown from it as in fine-tuning (copies with seeded
        noise, :func:`aiida_mlff.core.finetune.resize_committee`).
    seed
        Seed of that noise.
    dtype
        Floating point type of the result; default: the model's own.
    device
        Torch device of the result.

    Returns
    -------
    MacePotential
        Energies [eV], forces [eV/Å] and stress [eV/Å^3] as the MACE model's (checked on a probe structure in
        float64). The model's elements, sorted by atomic number; its per-element energies E0 [eV] become our
        ``reference_energies``. ``metadata['imported_from']``: ``format`` (``'mace'``), ``file`` (the name),
        ``sha256``, ``model_class``, ``model_dtype`` and ``mace_version`` (the mace-torch that read it).

    Raises
    ------
    FileNotFoundError
        No such file.
    ForeignModelError
        The file is not a MACE model torch can read, or the model uses a feature our ``mace`` cannot represent, or
        the rebuilt model does not reproduce it.
    aiida_mlff.core.architectures.ArchitectureError
        mace-torch is not installed.
    """
    from .finetune import resize_committee
    from .mace_model import _require_mace, build_mace

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'MACE model file {path} does not exist')
    _require_mace()
    import mace

    sha256 = file_sha256(path)
    model = _unpickle_mace(path)
    model_dtype = next(model.parameters()).dtype
    elements, hyper = mace_hyperparameters(model)
    model = model.to(torch.float64)
    try:
        pot = build_mace(elements, committee=1, seed=seed, dtype=torch.float64, **hyper)
    except (TypeError, ValueError, AssertionError, AttributeError) as error:
        raise ForeignModelError(f'{path}: aiida-mlff cannot rebuild this MACE model ({hyper}): {error}') from error
    _copy_weights(model, pot)
    _check_agreement(model, pot)
    pot.metadata = {
        'imported_from': {
            'format': 'mace',
            'file': path.name,
            'sha256': sha256,
            'model_class': type(model).__name__,
            'model_dtype': str(model_dtype).replace('torch.', ''),
            'mace_version': str(getattr(mace, '__version__', 'unknown')),
        }
    }
    if committee != 1:
        pot = resize_committee(pot, int(committee), seed=seed)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace('torch.', ''))
    return pot.to(device=device, dtype=model_dtype if dtype is None else dtype)


def _unpickle_mace(path: Path) -> nn.Module:
    """The mace-torch module pickled in ``path``; a ForeignModelError says what the file holds instead."""
    from mace.modules import MACE, ScaleShiftMACE

    try:
        # weights_only=False: a MACE .model file is a pickled module, and unpickling runs code the file names. This
        # is the only such load in aiida-mlff: the user names the file, and its SHA-256 is recorded by the caller.
        obj = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise ForeignModelError(f'{path} is not a MACE model file that torch can read: {error}') from error
    if isinstance(obj, torch.jit.ScriptModule):
        raise ForeignModelError(
            f'{path} holds a TorchScript (compiled) model; import the .model file mace saved beside it (torch.save)'
        )
    if isinstance(obj, dict):
        what = 'an aiida-mlff potential file: use it as it is' if obj.get('format') else 'a dictionary, not a model'
        raise ForeignModelError(f'{path} holds {what}')
    if type(obj) not in (MACE, ScaleShiftMACE):
        raise ForeignModelError(
            f'{path} holds a {type(obj).__module__}.{type(obj).__name__}, not a MACE energy model '
            '(mace.modules.MACE or ScaleShiftMACE)'
        )
    return obj.eval()


def mace_hyperparameters(model: nn.Module) -> tuple[list[str], dict]:
    """Elements and the hyperparameters of :func:`aiida_mlff.core.mace_model.build_mace` of a mace-torch model.

    Raises a ForeignModelError that lists every feature of the model our ``mace`` architecture cannot represent.
    """
    from e3nn import o3

    from .mace_model import _irreps

    problems = _unsupported_features(model)
    numbers = [int(z) for z in model.atomic_numbers]
    hidden = o3.Irreps(str(model.products[0].linear.irreps_out))
    channels, max_l = hidden.count('0e'), hidden.lmax
    if hidden != o3.Irreps(_irreps(channels, max_l)):
        problems.append(f'hidden irreps {hidden} (ours: the same number of channels of 0e, 1o, 2e, ... up to some l)')
    readout = o3.Irreps(str(model.readouts[-1].linear_1.irreps_out))
    if readout.count('0e') != readout.dim or readout.dim == 0:
        problems.append(f'readout MLP irreps {readout} are not scalars 0e')
    correlations = sorted({_correlation(product) for product in model.products})
    if len(correlations) != 1:
        problems.append(f'correlation differs between layers ({correlations})')
    neighbours = sorted({float(block.avg_num_neighbors) for block in model.interactions})
    if len(neighbours) != 1:
        problems.append(f'avg_num_neighbors differs between layers ({neighbours})')
    if problems:
        raise ForeignModelError('this MACE model uses what aiida-mlff cannot represent: ' + '; '.join(problems))
    radial = model.radial_embedding
    transform = getattr(radial, 'distance_transform', None)
    hyper = {
        'cutoff': float(model.r_max),
        'channels': channels,
        'max_l': max_l,
        'max_ell': int(o3.Irreps(str(model.spherical_harmonics.irreps_out)).lmax),
        'correlation': correlations[0],
        'interactions': int(model.num_interactions),
        'n_bessel': int(radial.out_dim),
        'polynomial_cutoff': int(radial.cutoff_fn.p),
        'radial_mlp': [int(width) for width in model.interactions[0].conv_tp_weights.hs[1:-1]],
        'readout': readout.dim,
        'avg_neighbors': neighbours[0],
        'interaction_first': type(model.interactions[0]).__name__,
        'interaction': type(model.interactions[-1]).__name__,
        'pair_repulsion': hasattr(model, 'pair_repulsion_fn'),
        'distance_transform': None if transform is None else _TRANSFORMS[type(transform).__name__],
    }
    return [chemical_symbols[z] for z in numbers], hyper


def _unsupported_features(model: nn.Module) -> list[str]:
    """What the MACE model uses that our ``mace`` architecture does not build (empty when nothing)."""
    from mace.modules import NonLinearReadoutBlock, interaction_classes

    problems = []
    numbers = [int(z) for z in model.atomic_numbers]
    if numbers != sorted(numbers):
        problems.append(f'atomic numbers not in increasing order ({numbers})')
    heads = list(getattr(model, 'heads', None) or ['Default'])
    if len(heads) != 1:
        problems.append(f'{len(heads)} heads {heads} (keep one first, e.g. mace.tools.scripts_utils.remove_pt_head)')
    for name, value in _FIXED_OPTIONS:
        if getattr(model, name, value) != value:
            problems.append(f'{name}={getattr(model, name)!r} (ours: {value!r})')
    if hasattr(model, 'joint_embedding') or hasattr(model, 'embedding_readout'):
        problems.append('embeddings of extra features (embedding_specs)')
    for block in model.interactions:
        if type(block).__name__ not in interaction_classes:
            problems.append(f'interaction block {type(block).__name__}')
        radial = getattr(block, 'conv_tp_weights', None)
        if not hasattr(radial, 'hs'):
            problems.append(f'radial MLP {type(radial).__name__} (ours: e3nn FullyConnectedNet)')
        for accelerated in ('cueq_config', 'oeq_config'):
            if getattr(getattr(block, accelerated, None), 'enabled', False):
                problems.append(f'{accelerated} (convert the model back to e3nn layers first)')
    readout = model.readouts[-1]
    if type(readout) is not NonLinearReadoutBlock:
        problems.append(f'readout {type(readout).__name__} (ours: NonLinearReadoutBlock)')
    else:
        acts = getattr(readout.non_linearity, 'acts', [])
        gate = getattr(acts[0], 'f', None) if len(acts) else None
        if gate is not nn.functional.silu:
            problems.append(f'gate {getattr(gate, "__name__", gate)!r} (ours: silu)')
    basis = type(model.radial_embedding.bessel_fn).__name__
    if basis != 'BesselBasis':
        problems.append(f'radial basis {basis} (ours: BesselBasis, radial_type bessel)')
    transform = getattr(model.radial_embedding, 'distance_transform', None)
    if transform is not None and type(transform).__name__ not in _TRANSFORMS:
        problems.append(f'distance transform {type(transform).__name__}')
    if len(model.interactions) > 1:
        last = str(model.products[-1].linear.irreps_out)
        if last != str(model.products[0].linear.irreps_out[0]):
            problems.append(f'last layer irreps {last} beyond scalars (keep_last_layer_irreps)')
    return sorted(set(problems), key=problems.index)


def _correlation(product: nn.Module) -> int:
    """Body order - 1 of one EquivariantProductBasisBlock (e3nn symmetric contraction)."""
    try:
        return len(product.symmetric_contractions.contractions[0].weights) + 1
    except AttributeError as error:
        raise ForeignModelError(f'a product block without e3nn symmetric contractions ({error})') from error


@torch.no_grad()
def _copy_weights(model: nn.Module, pot) -> None:
    """Copy the weights of the mace-torch ``model`` into the single member of ``pot``; its E0 [eV] into our offsets.

    Tensors are matched by name and size (the single-head scale, shift and E0 of mace-torch may carry a head
    dimension). Every parameter of ours must come from the model, and every parameter of the model must have a
    place; constant buffers that one e3nn version stores and another does not keep their built values.
    """
    member = pot.members[0]
    theirs = model.state_dict()
    ours = member.state_dict()
    our_parameters = {name for name, _ in member.named_parameters()}
    their_parameters = {name for name, _ in model.named_parameters()}
    problems = [f'{key} has no place in ours' for key in sorted(their_parameters - set(ours))]
    state = {}
    for key, value in ours.items():
        source = theirs.get(key)
        if key == 'atomic_energies_fn.atomic_energies':
            state[key] = torch.zeros_like(value)  # E0 lives in our reference energies
        elif source is None:
            if key in our_parameters:
                problems.append(f'{key} is missing')
            state[key] = value
        elif source.numel() != value.numel():
            problems.append(f'{key} has shape {tuple(source.shape)}, ours {tuple(value.shape)}')
        else:
            state[key] = source.reshape(value.shape).to(value.dtype)
    if problems:
        raise ForeignModelError('the weights of this MACE model do not fit its hyperparameters: ' + '; '.join(problems))
    member.load_state_dict(state)
    energies = model.atomic_energies_fn.atomic_energies.reshape(-1)
    pot.reference_energies[0].copy_(energies.to(pot.dtype))


def _probe(elements: list[str], spacing: float = 2.0, seed: int = 0) -> Atoms:
    """A periodic probe: two atoms of up to 8 of ``elements`` on a jittered cubic grid of ``spacing`` [Å]."""
    picks = sorted({round(k) for k in np.linspace(0, len(elements) - 1, min(len(elements), 8))})
    symbols = [elements[k] for k in picks] * 2
    side = math.ceil(len(symbols) ** (1 / 3))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing='ij'), -1).reshape(-1, 3)[: len(symbols)]
    jitter = np.random.default_rng(seed).uniform(-0.15, 0.15, size=grid.shape)
    cell = np.diag([side * spacing] * 3) + np.random.default_rng(seed + 1).uniform(-0.2, 0.2, size=(3, 3))
    return Atoms(symbols, scaled_positions=(grid + 0.5 + jitter / spacing) / side, cell=cell, pbc=True)


def _check_agreement(model: nn.Module, pot) -> None:
    """Raise a ForeignModelError unless ``pot`` gives ``model``'s energy, forces and stress on a probe (float64)."""
    from .atoms import AtomsBatch, neighbor_list

    batch = AtomsBatch.from_atoms(_probe(pot.elements), dtype=torch.float64)
    neighbors = neighbor_list(batch, pot.cutoff)
    ours = pot.evaluate(batch, neighbors, forces=True, stress=True)
    graph = pot.graph(batch, neighbors)
    with torch.enable_grad():
        theirs = model(dict(graph, positions=graph['positions'].clone()), compute_force=True, compute_stress=True)
    gaps = {key: _gap(ours[key], theirs[key]) for key in ('energy', 'forces', 'stress')}
    if max(gaps.values()) > AGREEMENT:
        detail = ', '.join(f'{key} {gap:.1e}' for key, gap in gaps.items())
        raise ForeignModelError(
            f'the rebuilt model does not reproduce this MACE model on a probe structure (relative gaps {detail}): '
            'it uses a feature aiida-mlff cannot represent'
        )


def _gap(ours: Tensor, theirs: Tensor) -> float:
    """The largest difference relative to the largest value: max |ours - theirs| / (1 + max |theirs|)."""
    theirs = theirs.detach().to(ours.dtype)
    return float((ours - theirs).abs().max() / (1.0 + theirs.abs().max()))
