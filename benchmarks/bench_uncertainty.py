"""Committee deviation (raw and calibrated) vs a last-layer variance of one model vs both, on held-out pw.x frames.

Data: the pw.x-labelled ``TrainingSetData`` of the newest finished campaign in the local profile (or ``--dataset PK``),
in labelling order (by the creation time of the calculation behind each label, else the dataset's own order). The
first 70 % train a committee with the training options of ``examples/h2o2-torsion.yaml`` and ``uncertainty='both'``
(every member's last-layer posterior); the last 30 %, labelled later (frames the earlier models never saw), are held
out. Scales are those fitted on the training run's validation split (``pot.metadata``); the coverage of the 95 %
interval on the held-out frames is then an out-of-sample test, and the scale a fit on the held-out frames themselves
would give is shown for comparison. Spearman: per-atom uncertainty vs per-atom force error norm; each method is scored
against the errors of the forces it comes with (committee mean; member 0 for the last layer alone). 'both (mixture)'
is the stored combination (law of total variance over the members' posteriors); 'both (calibrated parts)' averages
the calibrated variances of the committee and of member 0's last layer (its scale fitted here on the validation split).

Costs are measured side by side in one run (interleaved repeats, median wall time), for the held-out frames as one
batch and for one structure at a time: energy + forces of member 0 alone, of the committee (with its deviation), of
member 0 with its last-layer energy variance, with its energy and force variances (the Jacobian), and of both.

Usage: ``python benchmarks/bench_uncertainty.py [--dataset PK] [--threads 1] [--validation-fraction 0.2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dataset(pk: int | None):
    """The dataset node: ``pk``, or the output ``dataset`` of the newest finished campaign."""
    from aiida import orm

    if pk is not None:
        return orm.load_node(pk)
    qb = orm.QueryBuilder().append(
        orm.WorkflowNode,
        filters={'process_type': 'aiida.workflows:mlff.campaign', 'attributes.process_state': 'finished'},
        tag='campaign',
    )
    qb.append(orm.Data, with_incoming='campaign', edge_filters={'label': 'dataset'}, project='*')
    qb.order_by({'campaign': {'ctime': 'desc'}})
    found = qb.first()
    if found is None:
        raise SystemExit('no finished campaign with a dataset in this profile: give --dataset PK')
    return found[0]


def _labelling_order(dataset) -> tuple[list, str]:
    """The frames sorted by the creation time of their source calculations (stable), and how they were ordered."""
    from aiida import orm

    frames, sources = dataset.to_atoms(), dataset.sources
    if not all(sources):
        return frames, 'dataset order (some sources unknown)'
    qb = orm.QueryBuilder().append(orm.Node, filters={'uuid': {'in': sorted(set(sources))}}, project=['uuid', 'ctime'])
    ctime = dict(qb.all())
    if set(ctime) != set(sources):
        return frames, 'dataset order (some sources not in this profile)'
    order = sorted(range(len(frames)), key=lambda k: (ctime[sources[k]], k))
    return [frames[k] for k in order], 'creation time of the pw.x calculation behind each label'


def _cpu_name() -> str:
    """The processor's model name (Linux), or the platform's guess."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        return platform.processor() or '?'
    return next((line.split(':', 1)[1].strip() for line in lines if line.startswith('model name')), '?')


def _training_options() -> tuple[int, dict, dict]:
    """Committee size, model hyperparameters and training options of the demo campaign file."""
    config = yaml.safe_load((ROOT / 'examples' / 'h2o2-torsion.yaml').read_text())
    options = dict(config['training'])
    return options.pop('committee'), options.pop('model'), options


def _median_ms(functions: dict, repeats: int) -> dict:
    """Median wall time [ms] of each function, the functions interleaved in every repeat (after one warm-up)."""
    times = {name: [] for name in functions}
    for func in functions.values():
        func()
    for _ in range(repeats):
        for name, func in functions.items():
            start = time.perf_counter()
            func()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def _cost_functions(pot, posteriors, singles, frames) -> dict:
    """name -> function evaluating ``frames`` (an AtomsBatch or one structure) the way the method needs."""
    from aiida_mlff.core.uncertainty import structure_features

    def last_layer_energy():
        phi, _ = structure_features(singles[0], frames)
        cov = torch.as_tensor(posteriors[0].covariance, dtype=torch.float64)
        singles[0].evaluate(frames)  # the forces still come from the network
        return torch.einsum('bd,de,be->b', phi.double(), cov, phi.double())

    def both():
        pot.evaluate(frames)
        return [p.predict(s, frames) for p, s in zip(posteriors, singles, strict=True)]

    return {
        'member 0: E, F': lambda: singles[0].evaluate(frames),
        f'committee M={pot.committee_size}: E, F, deviation': lambda: pot.evaluate(frames),
        'member 0 + last-layer E variance': last_layer_energy,
        'member 0 + last-layer E, F variances': lambda: posteriors[0].predict(singles[0], frames),
        f'both: committee + {len(posteriors)} last layers': both,
    }


def _calibrated_parts(pot, posterior, frames) -> tuple[np.ndarray, np.ndarray]:
    """sigma = sqrt(((s_c d)^2 + (s_ll sigma_ll)^2) / 2) of the committee and member 0's last layer, each calibrated."""
    from aiida_mlff.core import uncertainty

    deviation, errors = uncertainty.committee_deviations(pot, frames)
    s_c, s_ll = pot.metadata['calibration']['scale'], pot.metadata['calibration_last_layer']['scale']
    last_layer = posterior.predict(pot, frames)['force_sigma']
    return np.sqrt(((s_c * deviation) ** 2 + (s_ll * last_layer) ** 2) / 2), errors


def _scores(pot, posteriors, held_out, val_frames) -> dict:
    """Per method: per-atom sigma [eV/Å], force errors (N, 3) [eV/Å] and the scale fitted on the validation split."""
    from aiida_mlff.core import uncertainty

    deviation, errors = uncertainty.committee_deviations(pot, held_out)
    predictions = [p.predict(pot, held_out) for p in posteriors]
    reference = np.concatenate([a.get_forces() for a in held_out])
    meta = pot.metadata
    return {
        f'committee (M={pot.committee_size})': (deviation, errors, meta['calibration']['scale']),
        'last layer (member 0)': (
            predictions[0]['force_sigma'],
            predictions[0]['forces'] - reference,
            meta['calibration_last_layer']['scale'],
        ),
        'both (mixture)': (
            uncertainty.mixture_sigma(deviation, [p['force_sigma'] for p in predictions]),
            errors,
            meta['calibration_both']['scale'],
        ),
        'both (calibrated parts)': (
            *_calibrated_parts(pot, posteriors[0], held_out),
            uncertainty.fit_scale(*_calibrated_parts(pot, posteriors[0], val_frames)),
        ),
    }


def _print_table(pot, posteriors, held_out, val_frames, costs_batch, costs_one) -> None:
    from aiida_mlff.core import uncertainty

    header = (
        f'{"method":<24} {"Spearman":>8} {"cov95 raw":>9} {"cov95 cal":>9} {"s (val)":>8} {"s (held)":>8} '
        f'{"F RMSE meV/Å":>12}'
    )
    print(header)
    print('-' * len(header))
    for name, (sigma, errors, scale) in _scores(pot, posteriors, held_out, val_frames).items():
        result = uncertainty.calibrate(sigma, errors, len(held_out), scale=scale)
        rmse = 1000 * float(np.sqrt(np.mean(errors**2)))
        print(
            f'{name:<24} {result.spearman:8.3f} {result.coverage_95_raw:9.3f} {result.coverage_95:9.3f} '
            f'{scale:8.2f} {uncertainty.fit_scale(sigma, errors):8.2f} {rmse:12.1f}'
        )
    print()
    n = len(held_out)
    header = f'{"evaluation":<40} {f"ms/structure (batch of {n})":>26} {"ms (one structure)":>19}'
    print(header)
    print('-' * len(header))
    for name in costs_batch:
        print(f'{name:<40} {costs_batch[name] / n:26.2f} {costs_one[name]:19.2f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', type=int, default=None, help='PK of a TrainingSetData (default: newest campaign)')
    parser.add_argument('--holdout', type=float, default=0.3, help='fraction labelled last that is held out')
    parser.add_argument('--validation-fraction', type=float, default=0.2, help='of the training part (calibration)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from aiida_mlff.environment import load_mlff_profile

    load_mlff_profile()
    from aiida_mlff.core import uncertainty
    from aiida_mlff.core.atoms import AtomsBatch
    from aiida_mlff.core.models import Potential
    from aiida_mlff.core.training import split_indices, train

    dataset = _dataset(args.dataset)
    frames, ordering = _labelling_order(dataset)
    n_held = round(args.holdout * len(frames))
    train_frames, held_out = frames[: len(frames) - n_held], frames[len(frames) - n_held :]
    committee, model, options = _training_options()
    options.update(validation_fraction=args.validation_fraction, seed=args.seed)
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    pot = Potential.build(elements, committee=committee, seed=args.seed, **model)
    start = time.perf_counter()
    report = train(pot, train_frames, uncertainty='both', **options)
    train_s = time.perf_counter() - start
    train_idx, val_idx = split_indices(len(train_frames), args.validation_fraction, args.seed)
    fit_frames, val_frames = [train_frames[k] for k in train_idx], [train_frames[k] for k in val_idx]
    extra = {}
    for method in uncertainty.METHODS:  # what each choice adds to a training run (deterministic: same entries)
        start = time.perf_counter()
        uncertainty.fit_uncertainty(pot, fit_frames, val_frames, method)
        extra[method] = time.perf_counter() - start
    posteriors = uncertainty.load_posteriors(pot)
    singles = [uncertainty.member_potential(pot, p.member) for p in posteriors]

    print(f'machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__},')
    print(f'  {torch.get_num_threads()} thread(s), model dtype {pot.dtype}, shared machine (nice), median of repeats')
    print(
        f'dataset PK {dataset.pk} ({dataset.base.attributes.get("label_method")}): {len(frames)} frames of '
        f'{sorted({a.get_chemical_formula() for a in frames})}, ordered by {ordering}'
    )
    print(
        f'train on the first {len(train_frames)} ({len(fit_frames)} fit + {len(val_frames)} validation, the scales), '
        f'held out: the last {len(held_out)} labelled ({sum(len(a) for a in held_out)} atoms)'
    )
    print(
        f'committee {committee}, model {model}; training {train_s:.0f} s ({report["epochs_run"]} epochs); '
        'uncertainty fitting after it: ' + ', '.join(f"'{m}' {t:.2f} s" for m, t in extra.items())
    )
    p0 = posteriors[0]
    print(
        f'last layer (member 0): D = {len(p0.weights)}, alpha = {p0.prior_precision:.3g}, '
        f'label noise {np.sqrt(p0.energy_noise_variance) * 1000:.1f} meV (E), '
        f'{np.sqrt(p0.force_noise_variance) * 1000:.1f} meV/Å (F component), gamma = {p0.effective_parameters:.1f}'
    )
    print()
    batch = AtomsBatch.from_atoms(held_out, dtype=pot.dtype)
    one = AtomsBatch.from_atoms(held_out[0], dtype=pot.dtype)
    costs_batch = _median_ms(_cost_functions(pot, posteriors, singles, batch), args.repeats)
    costs_one = _median_ms(_cost_functions(pot, posteriors, singles, one), args.repeats)
    _print_table(pot, posteriors, held_out, val_frames, costs_batch, costs_one)


if __name__ == '__main__':
    main()
