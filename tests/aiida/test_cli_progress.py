"""Live progress of ``aiida-mlff campaign run``: drawn from the ``mlff_progress`` extras, refreshed by reports."""

from __future__ import annotations

import io
import logging

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.common.log import LOG_LEVEL_REPORT
from aiida.engine import WorkChain, run_get_node
from click.testing import CliRunner

from aiida_mlff.cli.progress import PROGRESS_EXTRA, RoundClock, describe, live_progress

UMBRELLA = {
    'stage': 'umbrella',
    'round': 1,
    'max_rounds': 4,
    'labels_used': 46,
    'label_budget': 60,
    'windows': 24,
    'windows_untrusted': 5,
    'stage_started': '2026-01-01T10:00:00+00:00',
}


class FakeClock:
    """Monotonic seconds that the test moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_describe_renders_the_extras():
    line = describe(UMBRELLA, elapsed=125.0)
    parts = line.split(' | ')
    assert parts[0].startswith('umbrella (since ')
    assert parts[1:] == [
        'round 1 (of at most 4)',
        'labels 46/60',
        'windows 24 (5 untrusted)',
        'elapsed 2.1 min',
        'time left: no estimate until a round has finished',
    ]
    learning = {**UMBRELLA, 'stage': 'active learning', 'label_budget': None, 'windows': None, 'stage_started': None}
    child = {'stage': 'active learning', 'iteration': 2, 'max_iterations': 5, 'labels_used': 30}
    assert describe(learning, child, elapsed=30.0, remaining=(1500.0, 600.0)) == (
        'active learning | round 1 (of at most 4) | iteration 2/5 (30 labels) | labels 46 (no budget) | elapsed 30 s'
        ' | ~25.0 min left (estimate: 10.0 min/round, if every round runs)'
    )
    assert describe(None, elapsed=3.0) == 'starting | elapsed 3 s'


def test_remaining_time_from_finished_rounds():
    clock = RoundClock(started=0.0)
    clock.observe(0, 5.0)  # the first round seen starts with the run
    assert clock.remaining({'stage': 'sampling', 'round': 0, 'max_rounds': 4}, 100.0) is None  # nothing finished
    clock.observe(1, 600.0)
    # only the first round finished: it stands in for the others (rounds are 0 .. 3: rounds 2 and 3 may follow)
    assert clock.remaining({'round': 1, 'max_rounds': 4}, 700.0) == (500.0 + 2 * 600.0, 600.0)
    clock.observe(2, 900.0)
    # rounds after the first set the pace (300 s): 200 s left in round 2, then at most 1 more round
    assert clock.remaining({'round': 2, 'max_rounds': 4}, 1000.0) == (200.0 + 1 * 300.0, 300.0)
    assert clock.remaining({'stage': 'done', 'round': 2, 'max_rounds': 4}, 1000.0) is None


@pytest.fixture
def campaign(aiida_profile):
    """A stored campaign node with an active-learning child, both publishing their progress."""
    node = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    node.set_process_label('CampaignWorkChain')
    node.store()
    node.base.extras.set(PROGRESS_EXTRA, {**UMBRELLA, 'stage': 'active learning', 'round': 0, 'windows': None})
    child = orm.WorkChainNode(process_type='aiida.workflows:mlff.active_learning')
    child.set_process_label('ActiveLearningWorkChain')
    child.base.links.add_incoming(node, link_type=LinkType.CALL_WORK, link_label='active_learning')
    child.store()
    child.base.extras.set(PROGRESS_EXTRA, {'stage': 'active learning', 'iteration': 1, 'max_iterations': 5})
    return node, child


def test_report_lines_refresh_the_display_from_the_extras(campaign):
    node, child = campaign
    stream, clock = io.StringIO(), FakeClock()
    with live_progress(stream=stream, tty=False, clock=clock):
        clock.now = 40.0
        child.logger.log(LOG_LEVEL_REPORT, 'training the committee')  # a child's report: its campaign is found
        orm.load_node(child.pk).base.extras.set(PROGRESS_EXTRA, {'iteration': 2, 'max_iterations': 5})
        child.logger.log(LOG_LEVEL_REPORT, 'exploring')
        clock.now = 600.0
        orm.load_node(node.pk).base.extras.set(PROGRESS_EXTRA, UMBRELLA)  # as the work chain's own node would
        node.logger.log(LOG_LEVEL_REPORT, 'running umbrella sampling')
        node.logger.log(LOG_LEVEL_REPORT, 'same state: no new line')
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith('active learning (since ')
    expected = ' | round 0 (of at most 4) | iteration 1/5 (? labels) | labels 46/60 | elapsed 40 s | time left: no'
    assert expected in lines[0]
    assert ' | iteration 2/5 ' in lines[1]
    assert lines[2].startswith('umbrella (since ')
    assert lines[2].endswith(
        'round 1 (of at most 4) | labels 46/60 | windows 24 (5 untrusted) | elapsed 10.0 min'
        ' | ~30.0 min left (estimate: 10.0 min/round, if every round runs)'
    )
    assert 'running umbrella sampling' not in stream.getvalue()


def test_report_lines_only_with_verbose(campaign):
    node, _ = campaign
    terminal = io.StringIO()
    console = logging.StreamHandler(terminal)  # stands for AiiDA's console handler
    logger = logging.getLogger('aiida')
    logger.addHandler(console)
    try:
        quiet, loud = io.StringIO(), io.StringIO()
        with live_progress(stream=quiet, tty=False):
            node.logger.log(LOG_LEVEL_REPORT, 'a report line')
            node.logger.warning('a warning')
        with live_progress(verbose=True, stream=loud, tty=False):
            node.logger.log(LOG_LEVEL_REPORT, 'another report line')
        node.logger.log(LOG_LEVEL_REPORT, 'after the run')
    finally:
        logger.removeHandler(console)
    assert 'report line' not in quiet.getvalue()
    assert 'active learning' in quiet.getvalue()
    assert 'another report line' in loud.getvalue().splitlines()
    assert terminal.getvalue().splitlines() == ['a warning', 'after the run']  # REPORT hidden only during the run


def test_live_bar_on_a_terminal(campaign):
    node, _ = campaign
    stream = io.StringIO()
    with live_progress(verbose=True, stream=stream, tty=True, interval=0.01):
        node.logger.log(LOG_LEVEL_REPORT, 'a report line')
    text = stream.getvalue()
    assert 'active learning' in text
    assert 'iteration 1/5' in text
    assert 'a report line' in text


class ProgressingWorkChain(WorkChain):
    """Publishes its progress and reports at each step, as the campaign does (run in this process)."""

    @classmethod
    def define(cls, spec):
        """Two rounds, then done."""
        super().define(spec)
        spec.outline(cls.sample, cls.umbrella, cls.finish)

    def _publish(self, **progress) -> None:
        self.node.base.extras.set(PROGRESS_EXTRA, {**UMBRELLA, **progress})

    def sample(self):
        """Round 0."""
        self._publish(stage='sampling', round=0, windows=None)
        self.report('sampling')

    def umbrella(self):
        """Round 1."""
        self._publish(stage='umbrella', round=1)
        self.report('umbrella sampling')

    def finish(self):
        """Done."""
        self._publish(stage='done', round=1)
        self.report('done')


def test_progress_of_a_work_chain_run_in_process(aiida_profile):
    stream = io.StringIO()
    with live_progress(stream=stream, tty=False):
        _, node = run_get_node(ProgressingWorkChain)
    assert node.is_finished_ok
    stages = [line.split(' ')[0] for line in stream.getvalue().splitlines()]
    assert stages == ['sampling', 'umbrella', 'done']


def test_run_has_a_verbose_flag():
    from aiida_mlff.cli import cmd_root

    result = CliRunner().invoke(cmd_root, ['campaign', 'run', '--help'])
    assert '-v, --verbose' in result.output


def test_report_lines_stay_off_aiidas_cli_handler_unless_verbose(capsys):
    """``campaign run`` prints through AiiDA's CLI handler (not a StreamHandler): its REPORT lines are hidden too."""
    import io
    import logging

    from aiida.cmdline.utils.log import CliHandler
    from aiida.common.log import LOG_LEVEL_REPORT

    from aiida_mlff.cli.progress import live_progress

    logger = logging.getLogger('aiida')
    handler, level = CliHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(LOG_LEVEL_REPORT)
    try:
        with live_progress(stream=io.StringIO(), tty=False):
            logger.log(LOG_LEVEL_REPORT, 'a report line during the run')
        logger.log(LOG_LEVEL_REPORT, 'a report line after the run')
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert 'during the run' not in printed
    assert 'after the run' in printed
