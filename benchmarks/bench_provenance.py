"""Time the provenance queries on a synthetic campaign graph of about 10,000 nodes (temporary SQLite profile).

The graph mimics an active-learning campaign: per iteration an MD job (or, first, a sampling calcfunction) makes
structures, one PwCalculation node labels each, a calcfunction collects the labels into a dataset, another merges
it with the previous dataset, a training job makes a potential; at the end a WHAM calcfunction makes a PMF. Unused
labels (structures labelled but never collected) are added as decoys. Then it times, on the final PMF:
``dft_uuids_behind`` (UUIDs only), ``dft_calculations_behind`` (loads the nodes), ``lineage`` (both directions), and
``dependents`` of a first-iteration label, and checks the answer against the expected set.

Run: ``.venv/bin/python benchmarks/bench_provenance.py [--iterations 12] [--per-iteration 200]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid

# aiida is imported only after AIIDA_PATH points at a temporary folder (see main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iterations', type=int, default=12)
    parser.add_argument('--per-iteration', type=int, default=200, help='structures labelled per iteration')
    parser.add_argument('--decoys', type=int, default=200, help='labels never collected into a dataset')
    parser.add_argument('--repeat', type=int, default=5, help='timings per query (the best is shown)')
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix='bench-provenance-')
    os.environ['AIIDA_PATH'] = tmp  # a throw-away configuration: never touches the user's profiles
    try:
        run(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class GraphBuilder:
    """Collects nodes and links in memory, then writes them with two bulk inserts (seconds for 10,000 nodes)."""

    def __init__(self, user_id: int):
        self.user_id = user_id
        self.nodes: list[dict] = []
        self.links: list[tuple[int, int, str, str]] = []  # (input index, output index, label, link type)
        self.stored: dict[int, int] = {}  # index -> PK of nodes stored beforehand through the ORM (the datasets)

    def dataset(self, sources: list[str]) -> int:
        """A real ``TrainingSetData`` (one H atom per label) whose ``sources`` are the UUIDs ``sources``."""
        import numpy as np
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        from aiida_mlff.data.dataset import TrainingSetData

        frames = []
        for k in range(len(sources)):
            atoms = Atoms('H', positions=[[0.0, 0.0, 0.001 * k]], cell=[5.0, 5.0, 5.0], pbc=True)
            atoms.calc = SinglePointCalculator(atoms, energy=-13.6, forces=np.zeros((1, 3)))
            frames.append(atoms)
        node = TrainingSetData(frames, sources=sources, label_method='benchmark').store()
        self.nodes.append({'uuid': node.uuid})
        self.stored[len(self.nodes) - 1] = node.pk
        return len(self.nodes) - 1

    def node(self, node_type: str, process_type: str | None = None, attributes: dict | None = None) -> int:
        self.nodes.append(
            {
                'uuid': str(uuid.uuid4()),
                'node_type': node_type,
                'process_type': process_type,
                'attributes': attributes or {},
                'user_id': self.user_id,
            }
        )
        return len(self.nodes) - 1

    def process(self, node_type: str, process_type: str, label: str, inputs: dict[str, int], outputs: list[str]):
        """A process node with ``inputs`` (label -> node index) creating one node per entry of ``outputs``."""
        from aiida import orm
        from aiida.common.links import LinkType

        calc = self.node(node_type, process_type, {'process_label': label, 'process_state': 'finished'})
        for key, source in inputs.items():
            self.links.append((source, calc, key, LinkType.INPUT_CALC.value))
        created = []
        for k, out_type in enumerate(outputs):
            attributes = {'y_names': ['free_energy', 'error']} if out_type == orm.XyData.class_node_type else None
            out = out_type if isinstance(out_type, int) else self.node(out_type, attributes=attributes)
            self.links.append((calc, out, f'out_{k}', LinkType.CREATE.value))
            created.append(out)
        return calc, created

    def write(self, storage) -> list[int]:
        from aiida.orm.entities import EntityTypes

        with storage.transaction():
            new = [k for k in range(len(self.nodes)) if k not in self.stored]
            inserted = storage.bulk_insert(EntityTypes.NODE, [self.nodes[k] for k in new], allow_defaults=True)
            pks = [0] * len(self.nodes)
            for k, pk in [*zip(new, inserted, strict=True), *self.stored.items()]:
                pks[k] = pk
            rows = [
                {'input_id': pks[a], 'output_id': pks[b], 'label': label, 'type': kind}
                for a, b, label, kind in self.links
            ]
            storage.bulk_insert(EntityTypes.LINK, rows, allow_defaults=True)
        return pks


def run(args) -> None:
    from aiida import orm
    from aiida.manage import get_manager

    from aiida_mlff import provenance
    from aiida_mlff.data.potential import PotentialData
    from aiida_mlff.environment import ensure_profile

    ensure_profile('bench-provenance')
    storage = get_manager().get_profile_storage()
    graph = GraphBuilder(orm.User.collection.get_default().pk)
    calcjob, calcfunction = orm.CalcJobNode.class_node_type, orm.CalcFunctionNode.class_node_type
    data, params = orm.Data.class_node_type, orm.Dict.class_node_type  # stand-ins: only types matter here

    start = time.perf_counter()
    expected: set[int] = set()
    first_label = None
    seed = graph.node(orm.StructureData.class_node_type)
    _, structures = graph.process(
        calcfunction,
        'aiida.calculations:mlff.sample.rattle',
        'rattle_structure',
        {'structure': seed},
        [orm.StructureData.class_node_type] * args.per_iteration,
    )
    dataset = potential = None
    all_uuids: list[str] = []
    for iteration in range(args.iterations):
        if iteration:
            _, structures = graph.process(
                calcjob,
                provenance.MD_PROCESS_TYPE,
                'MdCalculation',
                {'potential': potential, 'structure': seed},
                [orm.StructureData.class_node_type] * args.per_iteration,
            )
        labels, uuids = {}, []
        for k, structure in enumerate(structures):
            pw, (parameters, _) = graph.process(
                calcjob, provenance.PW_PROCESS_TYPE, 'PwCalculation', {'structure': structure}, [params, data]
            )
            labels[f'parameters_{k}'] = parameters
            expected.add(pw)
            uuids.append(graph.nodes[pw]['uuid'])
            first_label = pw if first_label is None else first_label
        all_uuids.extend(uuids)
        _, (new,) = graph.process(
            calcfunction, 'aiida.calculations:mlff.dataset_from_pw', 'dataset_from_pw', labels, [graph.dataset(uuids)]
        )
        if dataset is not None:
            _, (new,) = graph.process(
                calcfunction,
                'aiida.calculations:mlff.merge_datasets',
                'merge_datasets',
                {'d0': dataset, 'd1': new},
                [graph.dataset(list(all_uuids))],
            )
        dataset = new
        _, (potential,) = graph.process(
            calcjob,
            'aiida.calculations:mlff.train',
            'TrainCalculation',
            {'dataset': dataset},
            [PotentialData.class_node_type],
        )
    for k in range(args.decoys):  # labelled, never collected: must not count
        graph.process(
            calcjob,
            provenance.PW_PROCESS_TYPE,
            'PwCalculation',
            {'structure': structures[k % len(structures)]},
            [params, data],
        )
    _, (pmf,) = graph.process(
        calcfunction, 'aiida.calculations:mlff.wham', 'wham', {'potential': potential}, [orm.XyData.class_node_type]
    )
    pks = graph.write(storage)
    build_s = time.perf_counter() - start
    expected = {graph.nodes[i]['uuid'] for i in expected}
    pmf, first_label = pks[pmf], pks[first_label]
    n_nodes = orm.QueryBuilder().append(orm.Node).count()
    print(f'graph: {n_nodes} nodes, {len(expected)} DFT labels behind the PMF, built in {build_s:.1f} s')

    def best(func) -> tuple[float, object]:
        times, result = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = func()
            times.append(time.perf_counter() - t0)
        return min(times), result

    rows = []
    t, uuids = best(lambda: provenance.dft_uuids_behind(pmf))
    assert uuids == expected, 'dft_uuids_behind is wrong'
    rows.append(('dft_uuids_behind(pmf)', len(uuids), t))
    t, labels = best(lambda: provenance.label_sources_behind(pmf))
    assert labels == expected, 'label_sources_behind is wrong'
    rows.append(('label_sources_behind(pmf)', len(labels), t))
    t, pks = best(lambda: provenance.closure(pmf, 'ancestors', method='querybuilder'))
    assert expected <= set(
        orm.QueryBuilder().append(orm.Node, filters={'id': {'in': pks}}, project='uuid').all(flat=True)
    )
    rows.append(('closure(pmf), one QB per generation', len(pks), t))
    t, nodes = best(lambda: provenance.dft_calculations_behind(pmf))
    assert {n.uuid for n in nodes} == expected, 'dft_calculations_behind is wrong'
    rows.append(('dft_calculations_behind(pmf)', len(nodes), t))
    t, result = best(lambda: provenance.lineage(pmf))
    rows.append(('lineage(pmf), both directions', len(result.ancestors) + len(result.descendants), t))
    t, found = best(lambda: provenance.dependents(first_label))
    assert len(found.potentials) == args.iterations, 'dependents is wrong'
    assert len(found.pmfs) == 1, 'dependents is wrong'
    rows.append(('dependents(first label)', len(found.potentials) + len(found.md_runs) + len(found.pmfs), t))
    print(f'{"query":<34}{"answer (nodes)":>16}{"best of " + str(args.repeat) + " (s)":>18}')
    for name, size, seconds in rows:
        print(f'{name:<34}{size:>16}{seconds:>18.3f}')


if __name__ == '__main__':
    main()
