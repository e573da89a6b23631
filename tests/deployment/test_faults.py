"""Faults of real campaigns, through the daemon on the Slurm cluster over SSH (run with ``MLFF_DEPLOYMENT=1``).

Each test injects the fault into the real services (``scancel`` of a running Slurm job, a pw.x SCF that cannot
converge, RabbitMQ stopped and started again) and asserts counts afterwards: epochs, PwCalculation nodes, Slurm jobs.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import SERVICES, h2o_frames, label_builder, pw_calculations, verdi, wait_for

pytestmark = pytest.mark.deployment

TRAIN_PROCESS_TYPE = 'aiida.calculations:mlff.train'


# ------------------------------------------------------------------------------------------------------- helpers
def slurm_state(job_id: str) -> str | None:
    """The compact Slurm state of ``job_id`` (``PD``, ``R``, ``CG``, ...), or ``None`` when it left the queue."""
    result = subprocess.run(['squeue', '-h', '-j', job_id, '-o', '%t'], capture_output=True, text=True, check=False)
    state = result.stdout.strip()
    return state or None


def scancel(job_id: str) -> None:
    """``scancel JOB_ID``, as a user of the cluster would."""
    subprocess.run(['scancel', job_id], check=True, timeout=30)


def wait_until(condition, timeout: float, message: str, poll: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(poll)


def running_calc(workchain, process_type: str):
    """The first unfinished CalcJob of ``process_type`` below ``workchain`` whose Slurm job is running, or None."""
    for calc in sorted(workchain.called_descendants, key=lambda n: n.pk):
        if calc.process_type != process_type or calc.is_terminated:
            continue
        job_id = calc.get_job_id()
        if job_id is not None and slurm_state(job_id) == 'R':
            return calc
    return None


def report(node) -> str:
    return verdi('process', 'report', str(node.pk), check=False).stdout


def checkpoint_state(path: Path) -> dict | None:
    """The ``state`` of a training checkpoint file (epoch, history), or None while there is none."""
    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location='cpu', weights_only=True)['state']
    except (RuntimeError, EOFError, OSError):  # replaced while being read
        return None


# ---------------------------------------------------------------------------------------------------- training
EPOCHS = 200
POLISH = 20  # L-BFGS steps after the AdamW epochs (rows of the learning curve with a polish_step)


def toy_dataset(n: int = 24):
    """Rattled H2O with labels of a harmonic toy model: the training fault test needs epochs, not DFT accuracy."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_mlff.data.dataset import TrainingSetData

    frames = h2o_frames(n, seed=5, stdev=0.05)
    reference = h2o_frames(1, seed=5, stdev=0.0)[0].positions
    for atoms in frames:
        d = atoms.positions - reference
        atoms.calc = SinglePointCalculator(atoms, energy=float(5.0 * (d**2).sum()), forces=-10.0 * d)
    return TrainingSetData(frames, label_method='harmonic toy model (deployment test)').store()


def test_training_scancel_resumes_from_checkpoint(daemon):
    """(b) ``scancel`` of a running training job: the work chain resumes the remote checkpoint and finishes.

    Asserts: two TrainCalculations (the cancelled one with exit 411, the resumed one ok with ``parent_folder`` set);
    the final training holds exactly the requested epochs; the second job ran only the epochs the checkpoint lacked
    (its learning curve repeats the first job's checkpointed epochs bit for bit, wall times included, so they were
    restored, not recomputed).
    """
    from aiida.engine import submit

    from aiida_mlff.workflows.train.base import TrainBaseWorkChain

    overrides = {
        'train': {
            'parameters': {
                'model': {'cutoff': 3.5, 'angular_cutoff': 3.0, 'hidden': [16, 16], 'committee': 2},
                'epochs': EPOCHS,
                'patience': EPOCHS,  # no early stop: every requested epoch runs
                'batch_size': 4,
                'checkpoint_every': 1,
                'polish_steps': POLISH,
                'device': 'cpu',
            }
        }
    }
    builder = TrainBaseWorkChain.get_builder_from_protocol(
        'mlff-run@slurm-localhost', toy_dataset(), protocol='fast', overrides=overrides
    )
    started = time.monotonic()
    node = submit(builder)

    first = wait_until(
        lambda: running_calc(node, TRAIN_PROCESS_TYPE), 300, 'no training job started running in Slurm within 300 s'
    )
    workdir = Path(first.get_remote_workdir())
    checkpoint = workdir / 'checkpoint.pt'
    # Cancel after a few checkpointed epochs, well before the end.
    state = wait_until(
        lambda: (s := checkpoint_state(checkpoint)) is not None and s['epoch'] >= 5 and s,
        300,
        f'no checkpoint of 5 epochs in {workdir} within 300 s',
        poll=0.1,
    )
    job_id = first.get_job_id()
    scancel(job_id)
    print(f'\nscancel of Slurm job {job_id} (TrainCalculation<{first.pk}>) at checkpoint epoch >= {state["epoch"]}')
    wait_for(node, timeout=600)
    seconds = time.monotonic() - started

    assert node.is_finished_ok, report(node)
    calcs = sorted((n for n in node.called if n.process_type == TRAIN_PROCESS_TYPE), key=lambda n: n.pk)
    assert len(calcs) == 2, f'{len(calcs)} TrainCalculations, expected the cancelled one and one resumed job'
    cancelled, resumed = calcs
    assert cancelled.pk == first.pk
    assert cancelled.exit_status == cancelled.process_class.exit_codes.ERROR_STOPPED_WITH_CHECKPOINT.status, (
        f'{cancelled.exit_status}: {cancelled.exit_message}'
    )
    assert 'scancel' in cancelled.exit_message
    assert resumed.is_finished_ok, f'{resumed.exit_status}: {resumed.exit_message}'
    assert resumed.inputs.parent_folder.pk == cancelled.outputs.remote_folder.pk
    assert resumed.get_job_id() != job_id
    assert 'resume from the checkpoint' in report(node)

    # The epochs the first job had checkpointed when it was killed (its remote checkpoint is not touched afterwards).
    killed_at = checkpoint_state(checkpoint)
    first_epochs = killed_at['epoch']
    assert f'holds {first_epochs} epochs' in cancelled.exit_message
    assert 5 <= first_epochs < EPOCHS

    curve = resumed.outputs.learning_curve
    polish = curve.get_array('polish_step')
    adam = np.isnan(polish)
    epochs = curve.get_array('epoch')[adam]
    np.testing.assert_array_equal(epochs, np.arange(1, EPOCHS + 1))  # the requested number, each epoch once
    assert 1 <= int((~adam).sum()) <= POLISH  # then the polishing, once, after the last epoch
    assert np.all(np.flatnonzero(~adam) > np.flatnonzero(adam).max())
    potential = node.outputs.potential
    assert potential.load_potential().metadata['training']['epochs_run'] == EPOCHS
    # Restored, not recomputed: the first epochs' wall times are those of the first job, to the last bit.
    restored = np.array([row['time_s'] for row in killed_at['history']])
    np.testing.assert_array_equal(curve.get_array('time_s')[:first_epochs], restored)
    second_epochs = int(np.sum(epochs > first_epochs))
    assert second_epochs == EPOCHS - first_epochs
    assert second_epochs < EPOCHS
    print(
        f'training of {EPOCHS} epochs: first job checkpointed {first_epochs} epochs before scancel, the resumed job '
        f'ran {second_epochs}; {len(calcs)} Slurm jobs, {seconds:.0f} s in all'
    )


# ---------------------------------------------------------------------------------------------------------- pw.x
def test_scf_not_converged_is_restarted_then_listed_as_failed(daemon):
    """(c) pw.x whose SCF cannot converge (``electron_maxstep`` 1) under Slurm: PwBaseWorkChain restarts it (lower
    mixing) up to ``max_iterations``, then the label lists every structure in ``failed`` and in its report."""
    from aiida.engine import submit

    frames = h2o_frames(2, seed=41)
    overrides = {'pw': {'max_iterations': 2, 'pw': {'parameters': {'ELECTRONS': {'electron_maxstep': 1}}}}}
    builder = label_builder(frames, **overrides)
    max_iterations = builder.pw.max_iterations.value
    started = time.monotonic()
    node = submit(builder)
    wait_for(node, timeout=600)

    assert node.is_finished, report(node)
    assert node.exit_status == node.process_class.exit_codes.ERROR_ALL_LABELS_FAILED.status, report(node)
    assert 'dataset' not in node.outputs
    failed = node.outputs.failed.get_dict()
    assert sorted(failed) == sorted(builder.structures.keys())
    text = report(node)
    for key, reason in failed.items():
        assert f'label of structure `{key}` failed' in text
        assert 'exit status 401' in reason  # PwBaseWorkChain: maximum iterations exceeded
    from aiida_quantumespresso.calculations.pw import PwCalculation

    calcs = pw_calculations(node)
    status = PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED.status
    assert len(calcs) == len(frames) * max_iterations, f'{len(calcs)} PwCalculations'
    assert all(calc.exit_status == status for calc in calcs), [c.exit_status for c in calcs]
    assert len({calc.get_job_id() for calc in calcs}) == len(calcs)
    assert all(calc.computer.label == 'slurm-localhost' for calc in calcs)
    for base in node.called:
        assert len(base.called) == max_iterations
        assert 'reduced beta mixing' in report(base)
    print(
        f'\nSCF not converged: {len(frames)} labels failed after {len(calcs)} PwCalculations '
        f'({max_iterations} per structure) in {time.monotonic() - started:.0f} s'
    )


def test_pw_killed_is_tolerated_and_listed(daemon):
    """(c) A pw.x killed by ``scancel`` inside ``mlff.dft.label`` (no restarts, tolerance 1 of 3): the label finishes
    with the other two, the killed structure is in ``failed`` and the report; one PwCalculation per structure."""
    from aiida.common.links import LinkType
    from aiida.engine import submit
    from aiida.orm import Float, Int

    frames = h2o_frames(3, seed=43)
    builder = label_builder(frames, pw={'max_iterations': 1})
    builder.max_concurrent = Int(1)
    builder.max_failure_fraction = Float(0.5)
    node = submit(builder)

    victim = wait_until(
        lambda: running_calc(node, 'aiida.calculations:quantumespresso.pw'),
        300,
        'no pw.x job started running in Slurm within 300 s',
    )
    # Running in Slurm is not enough: the batch step may not have started yet. Kill pw.x once it writes its output.
    output = Path(victim.get_remote_workdir()) / victim.get_option('output_filename')
    wait_until(
        lambda: output.is_file() and 'Program PWSCF' in output.read_text(errors='replace'),
        120,
        f'pw.x did not start writing {output} within 120 s',
        poll=0.1,
    )
    job_id = victim.get_job_id()
    scancel(job_id)
    key = victim.caller.base.links.get_incoming(link_type=LinkType.CALL_WORK).one().link_label.removeprefix('label_')
    print(f'\nscancel of Slurm job {job_id} (PwCalculation<{victim.pk}> of structure {key})')
    wait_for(node, timeout=600)

    assert node.is_finished_ok, report(node)
    failed = node.outputs.failed.get_dict()
    assert list(failed) == [key], failed
    assert f'label of structure `{key}` failed' in report(node)
    assert node.outputs.dataset.n_structures == len(frames) - 1
    calcs = pw_calculations(node)
    assert len(calcs) == len(frames), f'{len(calcs)} PwCalculations for {len(frames)} structures'
    assert sum(calc.is_finished_ok for calc in calcs) == len(frames) - 1
    assert not victim.is_finished_ok
    assert 'CANCELLED AT' in (victim.get_scheduler_stderr() or ''), victim.exit_message
    assert 'JOB DONE' not in victim.outputs.retrieved.base.repository.get_object_content(output.name)
    assert len({calc.get_job_id() for calc in calcs}) == len(frames)


# ------------------------------------------------------------------------------------------------------ RabbitMQ
def services(action: str, service: str) -> None:
    result = subprocess.run(['bash', str(SERVICES), action, service], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'scripts/services {action} {service}: {result.stdout}{result.stderr}'


def test_rabbitmq_restarted_mid_run(daemon):
    """(d) RabbitMQ stopped while a daemon-submitted label has a pw.x job running in Slurm, started again 15 s later:
    the work chain finishes, with one PwCalculation (and one Slurm job) per structure."""
    from aiida.engine import submit
    from aiida.orm import Int

    frames = h2o_frames(2, seed=47)
    builder = label_builder(frames)
    builder.max_concurrent = Int(1)
    node = submit(builder)
    wait_until(
        lambda: running_calc(node, 'aiida.calculations:quantumespresso.pw'),
        300,
        'no pw.x job started running in Slurm within 300 s',
    )
    try:
        services('stop', 'rabbitmq')
        stopped = time.monotonic()
        print('\nRabbitMQ stopped while a pw.x job runs in Slurm')
        time.sleep(15)
        assert not node.is_terminated
    finally:
        services('start', 'rabbitmq')
    print(f'RabbitMQ started again after {time.monotonic() - stopped:.0f} s')
    wait_for(node, timeout=600)

    assert node.is_finished_ok, report(node)
    assert node.outputs.dataset.n_structures == len(frames)
    calcs = pw_calculations(node)
    assert len(calcs) == len(frames), f'{len(calcs)} PwCalculations for {len(frames)} structures'
    assert all(calc.is_finished_ok for calc in calcs)
    assert len({calc.inputs.structure.uuid for calc in calcs}) == len(frames)
    assert len({calc.get_job_id() for calc in calcs}) == len(frames)
