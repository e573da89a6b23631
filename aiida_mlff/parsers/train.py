"""Parser of ``mlff.train``: reads only retrieved files (summary, potential, learning curve)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.parsers import Parser

from aiida_mlff.core import files

__all__ = ['TrainParser', 'read_summary']


def read_summary(parser: Parser):
    """Return ``(summary dict, None)`` or ``(None, exit code)`` for a missing or unreadable summary."""
    retrieved = parser.retrieved
    if files.SUMMARY_FILE not in retrieved.base.repository.list_object_names():
        return None, parser.exit_codes.ERROR_MISSING_SUMMARY
    try:
        return json.loads(retrieved.base.repository.get_object_content(files.SUMMARY_FILE)), None
    except (json.JSONDecodeError, UnicodeDecodeError) as exception:
        return None, parser.exit_codes.ERROR_READING_SUMMARY.format(error=str(exception))


class TrainParser(Parser):
    """Turn the retrieved files of ``mlff-run train`` into a potential, metrics and a learning curve."""

    def parse(self, **kwargs):
        """Parse the retrieved folder."""
        from aiida_mlff.core.potential_io import PotentialFileError
        from aiida_mlff.data.potential import PotentialData

        summary, exit_code = read_summary(self)
        if exit_code is not None:
            return exit_code
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
