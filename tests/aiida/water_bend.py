"""The H-O-H bend of water as a campaign that the campaign tests share: real pw.x labels, a tiny committee.

``test_campaign_general`` runs it with umbrella sampling and a relaxed-scan check, ``test_campaign_methods`` with the
other free-energy methods. Take copies (``copy.deepcopy``) before changing any part.
"""

from __future__ import annotations

CV = {'type': 'angle', 'atoms': [1, 0, 2]}
WINDOWS = {'start': 95.0, 'stop': 120.0, 'count': 6}  # degrees: part of the angle's range
#: campaign options common to the runs (no name, umbrella, convergence or check)
BASE = {
    'system': {'box': 8.0},
    'sampling': {'rattle': {'n': 4, 'stdev': 0.03}, 'scan': {'values': [95.0, 105.0, 115.0], 'rattle_stdev': 0.02}},
    'dft': {'max_concurrent': 2},
    'training': {
        'committee': 2,
        'model': {'cutoff': 3.0, 'angular_cutoff': 3.0, 'hidden': [8], 'chiral': False},
        'epochs': 60,
        'polish_steps': 20,
        'batch_size': 4,
    },
    'active_learning': {
        'max_iterations': 1,
        'max_candidates': 2,
        'explore': {'temperatures': [300.0], 'steps': 200, 'stride': 20},
    },
}
UMBRELLA = {
    'windows': WINDOWS,
    'equilibration_steps': 100,
    'production_steps': 600,
    'bins': 20,
    'bootstrap': 2,
    'steer_steps': 50,
    'max_refinements': 0,
}
