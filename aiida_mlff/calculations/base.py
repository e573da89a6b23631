"""What ``mlff.train`` and ``mlff.md`` share: running ``mlff-run TASK job.json`` and the summary-file exit codes."""

from __future__ import annotations

from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_mlff.core import files

__all__ = ['MlffRunCalculation']


class MlffRunCalculation(CalcJob):
    """Base of the CalcJobs that run ``mlff-run``: one serial process, the job file in, the summary file out."""

    _task: str  # 'train' or 'md'
    _parser: str  # entry point of the parser

    @classmethod
    def define(cls, spec):
        """Define the shared part of the process specification."""
        super().define(spec)
        options = spec.inputs['metadata']['options']
        options['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['parser_name'].default = cls._parser
        options['input_filename'].default = files.JOB_FILE
        options['output_filename'].default = 'mlff-run.out'
        spec.exit_code(300, 'ERROR_MISSING_SUMMARY', message='mlff-run wrote no summary: it crashed; see its output.')
        spec.exit_code(301, 'ERROR_READING_SUMMARY', message='The summary file could not be read: {error}')
        spec.exit_code(310, 'ERROR_BAD_INPUT', message='mlff-run refused the input: {error}')

    def calcinfo(self, local_copy_list: list, remote_copy_list: list, retrieve: list[str]) -> datastructures.CalcInfo:
        """The CalcInfo that runs ``mlff-run <task> job.json`` and retrieves ``retrieve`` plus its output."""
        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self._task, files.JOB_FILE]
        codeinfo.stdout_name = self.inputs.metadata.options.output_filename
        codeinfo.join_files = True

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.remote_copy_list = remote_copy_list
        calcinfo.retrieve_list = [*retrieve, self.inputs.metadata.options.output_filename]
        return calcinfo
