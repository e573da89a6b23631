"""What every restart work chain of aiida-mlff shares: reporting a handled failure once, in one place."""

from __future__ import annotations

from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

__all__ = ['MlffRestartWorkChain']


class MlffRestartWorkChain(BaseRestartWorkChain):
    """A ``BaseRestartWorkChain`` around an ``mlff-run`` CalcJob, with the helpers our handlers use.

    Subclasses set ``_process_class`` and ``_namespace`` (where the CalcJob's inputs are exposed).
    """

    _namespace: str

    @classmethod
    def define(cls, spec):
        """Expose the CalcJob, the restart outline, and the exit code for input no restart can fix."""
        super().define(spec)
        spec.expose_inputs(cls._process_class, namespace=cls._namespace)
        spec.expose_outputs(cls._process_class)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(
            310, 'ERROR_BAD_INPUT', message='mlff-run refused the input, which no restart can fix: {message}'
        )

    def setup(self):
        """Take the inputs of the first run."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._namespace))

    @process_handler(priority=600)
    def handle_bad_input(self, node):
        """Bad input (exit 310 of the CalcJob) cannot be fixed by a restart: stop with the message of mlff-run."""
        if node.exit_status != self._process_class.exit_codes.ERROR_BAD_INPUT.status:
            return None
        self.report_error_handled(node, 'none: the input must be fixed')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_BAD_INPUT.format(message=node.exit_message))

    def report_error_handled(self, node, action: str) -> None:
        """Report that the failure of ``node`` was handled, and how."""
        self.report(f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}')
        self.report(f'action taken: {action}')

    def restart(self, node, action: str) -> ProcessHandlerReport:
        """Report the action and ask for the next iteration with the updated ``self.ctx.inputs``."""
        self.report_error_handled(node, action)
        return ProcessHandlerReport(do_break=True)

    def _parameters(self) -> dict:
        return self.ctx.inputs.parameters.get_dict()

    def _set_parameters(self, **changes) -> None:
        from aiida import orm

        self.ctx.inputs.parameters = orm.Dict({**self._parameters(), **changes})
