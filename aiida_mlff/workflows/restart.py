"""What every restart work chain of aiida-mlff shares: reporting a handled failure once, in one place."""

from __future__ import annotations

from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport

__all__ = ['MlffRestartWorkChain']


class MlffRestartWorkChain(BaseRestartWorkChain):
    """A ``BaseRestartWorkChain`` with the helpers our handlers use."""

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
