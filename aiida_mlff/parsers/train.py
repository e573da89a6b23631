"""Parser of ``mlff.train``: reads only retrieved files (summary, potential, learning curve)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.parsers import Parser

from aiida_mlff.core import files

__all__ = ['TrainParser', 'checkpoint_epoch', 'read_summary', 'scheduler_stop_reason']


def read_summary(parser: Parser):
    """Return ``(summary dict, None)`` or ``(None, exit code)`` for a missing or unreadable summary."""
    retrieved = parser.retrieved
    if files.SUMMARY_FILE not in retrieved.base.repository.list_object_names():
        return None, parser.exit_codes.ERROR_MISSING_SUMMARY
    try:
        return json.loads(retrieved.base.repository.get_object_content(files.SUMMARY_FILE)), None
    except (json.JSONDecodeError, UnicodeDecodeError) as exception:
        return None, parser.exit_codes.ERROR_READING_SUMMARY.format(error=str(exception))


def scheduler_stop_reason(parser: Parser) -> str | None:
    """Why the scheduler stopped the job, from its exit code or its stderr (Slurm); ``None`` when it did not say."""
    from aiida.engine import CalcJob

    codes = CalcJob.exit_codes
    status = parser.node.exit_status
    if status == codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
        return 'the scheduler walltime ran out'
    if status == codes.ERROR_SCHEDULER_OUT_OF_MEMORY.status:
        return 'out of memory'
    if status == codes.ERROR_SCHEDULER_NODE_FAILURE.status:
        return 'node failure'
    name = parser.node.get_option('scheduler_stderr') or '_scheduler-stderr.txt'
    if name not in parser.retrieved.base.repository.list_object_names():
        return None
    stderr = parser.retrieved.base.repository.get_object_content(name).lower()
    if re.search(r'cancelled at .*due to time limit', stderr):
        return 'the scheduler walltime ran out'
    if re.search(r'exceeded .*memory limit|oom[- ]kill', stderr):
        return 'out of memory'
    if re.search(r'\bcancel+ed at\b', stderr):
        return 'cancelled through the scheduler, e.g. scancel'
    return None


def checkpoint_epoch(folder: str | Path | None) -> int | None:
    """The number of epochs the training checkpoint in ``folder`` holds; ``None`` when there is none (or unreadable)."""
    if folder is None:
        return None
    path = Path(folder) / files.CHECKPOINT_FILE
    if not path.is_file():
        return None
    import torch

    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
        return int(saved['state']['epoch'])
    except Exception:  # a truncated or foreign file: no usable checkpoint
        return None


class TrainParser(Parser):
    """Turn the retrieved files of ``mlff-run train`` into a potential, metrics and a learning curve."""

    def parse(self, **kwargs):
        """Parse the retrieved folder."""
        from aiida_mlff.core.potential_io import PotentialFileError
        from aiida_mlff.data.potential import PotentialData

        summary, exit_code = read_summary(self)
        if exit_code is not None:
            if exit_code.status != self.exit_codes.ERROR_MISSING_SUMMARY.status:
                return exit_code
            return self._stopped(kwargs.get('retrieved_temporary_folder'))
        names = self.retrieved.base.repository.list_object_names()

        if files.LEARNING_CURVE_FILE in names:
            curve = json.loads(self.retrieved.base.repository.get_object_content(files.LEARNING_CURVE_FILE))
            array = orm.ArrayData()
            for key, values in sorted(curve.items()):
                array.set_array(key, np.asarray(values, dtype=float))
            self.out('learning_curve', array)

        status = summary.get('exit_status', files.EXIT_OK)
        if status == files.EXIT_BAD_INPUT:
            return self.exit_codes.ERROR_BAD_INPUT.format(error=summary.get('error', 'unknown'))
        if status == files.EXIT_NAN_LOSS:
            return self.exit_codes.ERROR_NAN_LOSS.format(epoch=summary.get('epoch', '?'))

        if files.POTENTIAL_FILE in names:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / files.POTENTIAL_FILE
                path.write_bytes(self.retrieved.base.repository.get_object_content(files.POTENTIAL_FILE, mode='rb'))
                try:
                    potential = PotentialData(path)
                except (PotentialFileError, FileNotFoundError) as exception:
                    return self.exit_codes.ERROR_INVALID_POTENTIAL.format(error=str(exception))
            self.out('potential', potential)
        if summary.get('metrics') is not None:
            self.out('metrics', orm.Dict(summary['metrics']))

        if status == files.EXIT_WALLTIME:
            return self.exit_codes.ERROR_WALLTIME.format(epoch=summary.get('epoch', '?'))
        if files.POTENTIAL_FILE not in names:
            return self.exit_codes.ERROR_MISSING_POTENTIAL
        return None

    def _stopped(self, temporary_folder):
        """No summary: mlff-run was killed (scancel, walltime, memory) or crashed before it could write one.

        A checkpoint in the remote folder (seen through the temporarily retrieved copy) makes the job resumable.
        """
        reason = scheduler_stop_reason(self)
        epoch = checkpoint_epoch(temporary_folder)
        if epoch is not None and epoch > 0:
            return self.exit_codes.ERROR_STOPPED_WITH_CHECKPOINT.format(
                reason=reason or 'killed by a signal', epoch=epoch
            )
        if reason is not None:
            return self.exit_codes.ERROR_STOPPED_BEFORE_CHECKPOINT.format(reason=reason)
        return self.exit_codes.ERROR_MISSING_SUMMARY
