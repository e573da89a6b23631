"""Provenance queries: which DFT calculations stand behind a node, and what depends on a node.

The graph is walked inside the database, never node by node in Python. AiiDA's own ``with_descendants`` /
``with_ancestors`` joins enumerate *paths* (a recursive ``UNION ALL`` with a depth column), and an active-learning
campaign is a DAG with very many reconvergent paths: every label of iteration k reaches the final PMF through every
structure that the MD of iteration k+1 produced, and so on, so the number of paths grows exponentially with the
number of iterations (such a query on a 10,000-node campaign graph did not finish in 10 minutes). Here the walk is a
recursive query with ``UNION``, which keeps each node once, so it costs one pass over the links; the nodes found are
then filtered and projected with :class:`~aiida.orm.QueryBuilder`. Where the storage offers no SQL session, a
breadth-first walk with one QueryBuilder query per generation is used instead.

Like AiiDA's, the walk follows *data provenance* only: ``INPUT_CALC`` and ``CREATE`` links; workflow ``CALL`` and
``RETURN`` links are not followed. That is what the question "which DFT labels does this result rest on" needs: every
label reaches a potential through the calculations (calcfunctions and calculation jobs) that created the data in
between.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiida import orm

__all__ = [
    'MD_PROCESS_TYPE',
    'PMF_ARRAY',
    'PW_PROCESS_TYPE',
    'Dependents',
    'Lineage',
    'NodeRow',
    'ancestors',
    'closure',
    'dependents',
    'descendants',
    'dft_calculations_behind',
    'dft_uuids_behind',
    'label_sources_behind',
    'lineage',
    'load_node',
    'type_name',
]

#: ``process_type`` of aiida-quantumespresso's ``PwCalculation`` (the DFT labels of a campaign).
PW_PROCESS_TYPE = 'aiida.calculations:quantumespresso.pw'
#: ``process_type`` of ``mlff.md`` calculation jobs.
MD_PROCESS_TYPE = 'aiida.calculations:mlff.md'
#: The y array that marks an ``XyData`` as a potential of mean force.
PMF_ARRAY = 'free_energy'

_PROJECT = ['id', 'uuid', 'node_type', 'process_type', 'attributes.process_label', 'label', 'attributes.y_names']


@dataclass(frozen=True)
class NodeRow:
    """One node of a provenance answer, as projected by the query (no node is loaded).

    Attributes
    ----------
    pk, uuid
        Identifiers.
    node_type
        AiiDA's ``node_type`` string (e.g. ``'data.mlff.dataset.TrainingSetData.'``).
    process_type
        Entry point string of the process class for process nodes, else ``None``.
    process_label
        The process class name (``'PwCalculation'``) for process nodes, else ``None``.
    label
        The node label.
    y_names
        Names of the y arrays of ``XyData`` nodes (used to recognise a PMF), else ``None``.
    """

    pk: int
    uuid: str
    node_type: str
    process_type: str | None
    process_label: str | None
    label: str
    y_names: tuple[str, ...] | None = None

    @property
    def type_name(self) -> str:
        """Short type: the process class name for processes, the data class name (``PMF`` for a PMF) otherwise."""
        return type_name(self.node_type, self.process_label, self.y_names)

    @classmethod
    def from_projection(cls, row: list) -> NodeRow:
        """Build a row from the values of ``_PROJECT``."""
        pk, uuid, node_type, process_type, process_label, label, y_names = row
        return cls(
            int(pk),
            str(uuid),
            node_type,
            process_type or None,
            process_label,
            label or '',
            tuple(y_names) if y_names else None,
        )


def type_name(node_type: str, process_label: str | None = None, y_names: tuple[str, ...] | None = None) -> str:
    """Short human name of a node type.

    Parameters
    ----------
    node_type
        AiiDA's ``node_type`` string, e.g. ``'process.calculation.calcjob.CalcJobNode.'``.
    process_label
        The process class name of a process node, preferred when given.
    y_names
        The y array names of an ``XyData`` node: one with a ``free_energy`` array is named ``PMF``.
    """
    if process_label:
        return process_label
    if y_names and PMF_ARRAY in y_names:
        return 'PMF'
    parts = [p for p in node_type.split('.') if p]
    return parts[-1] if parts else node_type


def load_node(identifier: int | str | orm.Node) -> orm.Node:
    """Return a node from a node, a PK (int or digits) or a UUID (or a unique UUID prefix)."""
    if isinstance(identifier, orm.Node):
        return identifier
    if isinstance(identifier, int) or (isinstance(identifier, str) and identifier.isdigit()):
        return orm.load_node(pk=int(identifier))
    return orm.load_node(uuid=str(identifier))


def _pk(node: int | str | orm.Node) -> int:
    return load_node(node).pk


_FOLLOWED_LINKS = ('create', 'input_calc')
_CHUNK = 5000  # ids per ``IN`` filter: below SQLite's limit on bound variables


def _closure_sql(pk: int, direction: str) -> list[int] | None:
    """PKs of all ancestors or descendants of ``pk`` by one recursive SQL query, or None without an SQL session."""
    from aiida.manage import get_manager

    storage = get_manager().get_profile_storage()
    get_session = getattr(storage, 'get_session', None)
    if get_session is None:
        return None
    from sqlalchemy import text

    near, far = ('input_id', 'output_id') if direction == 'ancestors' else ('output_id', 'input_id')
    sql = text(
        'WITH RECURSIVE walk(id) AS ('
        ' SELECT CAST(:pk AS INTEGER)'
        f' UNION SELECT link.{near} FROM db_dblink AS link JOIN walk ON link.{far} = walk.id'
        f' WHERE link.type IN ({", ".join(repr(t) for t in _FOLLOWED_LINKS)})'
        ') SELECT id FROM walk WHERE id != :pk'
    )
    return [int(row[0]) for row in get_session().execute(sql, {'pk': pk})]


def _closure_querybuilder(pk: int, direction: str) -> list[int]:
    """PKs of all ancestors or descendants of ``pk``: a breadth-first walk, one QueryBuilder query per generation."""
    relation = 'with_outgoing' if direction == 'ancestors' else 'with_incoming'
    seen: set[int] = {pk}
    frontier = [pk]
    while frontier:
        found: set[int] = set()
        for start in range(0, len(frontier), _CHUNK):
            qb = orm.QueryBuilder()
            qb.append(orm.Node, filters={'id': {'in': frontier[start : start + _CHUNK]}}, tag='frontier')
            qb.append(
                orm.Node,
                project='id',
                edge_filters={'type': {'in': list(_FOLLOWED_LINKS)}},
                **{relation: 'frontier'},
            )
            found.update(qb.all(flat=True))
        frontier = sorted(found - seen)
        seen.update(frontier)
    seen.discard(pk)
    return sorted(seen)


def closure(node: int | str | orm.Node, direction: str, method: str = 'sql') -> list[int]:
    """PKs of every ancestor (``direction='ancestors'``) or descendant of ``node``, each once, sorted.

    Parameters
    ----------
    node
        A node or its PK/UUID.
    direction
        ``'ancestors'`` or ``'descendants'``.
    method
        ``'sql'``: one recursive query (falls back to ``'querybuilder'`` without an SQL session);
        ``'querybuilder'``: one QueryBuilder query per generation.
    """
    if direction not in {'ancestors', 'descendants'}:
        raise ValueError(f"direction must be 'ancestors' or 'descendants', got {direction!r}")
    if method not in {'sql', 'querybuilder'}:
        raise ValueError(f"method must be 'sql' or 'querybuilder', got {method!r}")
    pk = _pk(node)
    pks = _closure_sql(pk, direction) if method == 'sql' else None
    return sorted(pks) if pks is not None else _closure_querybuilder(pk, direction)


def _select(pks: list[int], cls: type[orm.Node], filters: dict | None, project) -> list:
    """Rows of the nodes among ``pks`` of class ``cls`` matching ``filters`` (chunked ``IN`` filters)."""
    rows: list = []
    for start in range(0, len(pks), _CHUNK):
        qb = orm.QueryBuilder()
        qb.append(cls, filters={'id': {'in': pks[start : start + _CHUNK]}, **(filters or {})}, project=project)
        rows.extend(qb.all())
    return rows


def _related(node, direction: str, cls: type[orm.Node], filters: dict | None) -> list[NodeRow]:
    pks = closure(node, direction)
    rows = [NodeRow.from_projection(row) for row in _select(pks, cls, filters, _PROJECT)]
    return sorted(rows, key=lambda r: r.pk)


def ancestors(node: int | str | orm.Node, cls: type[orm.Node] = orm.Node, filters: dict | None = None) -> list[NodeRow]:
    """Every node of class ``cls`` (and QueryBuilder ``filters``) that ``node`` derives from, sorted by PK."""
    return _related(node, 'ancestors', cls, filters)


def descendants(
    node: int | str | orm.Node, cls: type[orm.Node] = orm.Node, filters: dict | None = None
) -> list[NodeRow]:
    """Every node of class ``cls`` (and QueryBuilder ``filters``) derived from ``node``, sorted by PK."""
    return _related(node, 'descendants', cls, filters)


def dft_calculations_behind(node: int | str | orm.Node, process_type: str = PW_PROCESS_TYPE) -> list[orm.CalcJobNode]:
    """The DFT calculations (``PwCalculation`` nodes by default) that ``node`` derives from.

    Parameters
    ----------
    node
        A potential, PMF, dataset or any node (or its PK/UUID).
    process_type
        Entry point string of the DFT calculation class.

    Returns
    -------
    list of CalcJobNode
        Sorted by PK, each once.
    """
    rows = _select(closure(node, 'ancestors'), orm.CalcJobNode, {'process_type': process_type}, '*')
    return sorted((row[0] for row in rows), key=lambda n: n.pk)


def dft_uuids_behind(node: int | str | orm.Node, process_type: str = PW_PROCESS_TYPE) -> set[str]:
    """UUIDs of the DFT calculations behind ``node`` (as :func:`dft_calculations_behind`, loading no node)."""
    rows = _select(closure(node, 'ancestors'), orm.CalcJobNode, {'process_type': process_type}, 'uuid')
    return {str(row[0]) for row in rows}


def label_sources_behind(node: int | str | orm.Node, process_type: str = PW_PROCESS_TYPE) -> set[str]:
    """UUIDs of the DFT calculations whose labels are in the datasets ``node`` finally rests on.

    :func:`dft_uuids_behind` answers which DFT calculations are in the provenance of ``node``. That includes
    calculations whose labels were later dropped, e.g. as exact duplicates when ``merge_datasets`` joined their
    dataset with an older one: the dropped labels are still *inputs* of the merge. This function answers which labels
    ``node`` was built on: the ``sources`` of the *final* datasets behind ``node`` (``node`` itself when it is a
    dataset; else every ``TrainingSetData`` among its ancestors that was not consumed into another dataset among its
    ancestors), restricted to the DFT calculations in its provenance.

    Queries: one walk, one selection of the datasets, one query of the processes that consumed them; then the
    ``sources`` array of each final dataset is read (a handful of nodes, not one per label).

    Parameters
    ----------
    node
        A potential, PMF, dataset or any node (or its PK/UUID).
    process_type
        Entry point string of the DFT calculation class.
    """
    from aiida_mlff.data.dataset import TrainingSetData

    node = load_node(node)
    ancestor_pks = closure(node, 'ancestors')
    if isinstance(node, TrainingSetData):
        final = [node.pk]
    else:
        datasets = {int(row[0]) for row in _select(ancestor_pks, TrainingSetData, None, 'id')}
        consumed: set[int] = set()
        if datasets:
            qb = orm.QueryBuilder()
            qb.append(TrainingSetData, filters={'id': {'in': sorted(datasets)}}, tag='dataset', project='id')
            qb.append(orm.ProcessNode, with_incoming='dataset', tag='process')
            qb.append(TrainingSetData, with_incoming='process', project='id')
            consumed = {int(a) for a, b in qb.all() if int(b) in datasets and int(b) != int(a)}
        final = sorted(datasets - consumed)
    sources = {s for pk in final for s in orm.load_node(pk).sources if s}
    in_graph = (
        {
            str(row[0])
            for row in _select(
                ancestor_pks, orm.CalcJobNode, {'process_type': process_type, 'uuid': {'in': sorted(sources)}}, 'uuid'
            )
        }
        if sources
        else set()
    )
    return in_graph


@dataclass
class Dependents:
    """What depends on a node: potentials, MD runs and PMFs derived from it (each a list of rows sorted by PK)."""

    potentials: list[NodeRow] = field(default_factory=list)
    md_runs: list[NodeRow] = field(default_factory=list)
    pmfs: list[NodeRow] = field(default_factory=list)


def dependents(node: int | str | orm.Node) -> Dependents:
    """Every potential, MD run (``mlff.md`` job) and PMF that depends on ``node`` (e.g. a DFT calculation).

    One walk over the descendants of ``node``, then one QueryBuilder selection per kind. A PMF is an ``XyData``
    with a ``free_energy`` y array.
    """
    from aiida_mlff.data.potential import PotentialData

    pks = closure(node, 'descendants')

    def select(cls, filters=None) -> list[NodeRow]:
        return sorted((NodeRow.from_projection(r) for r in _select(pks, cls, filters, _PROJECT)), key=lambda r: r.pk)

    return Dependents(
        potentials=select(PotentialData),
        md_runs=select(orm.CalcJobNode, {'process_type': MD_PROCESS_TYPE}),
        pmfs=select(orm.XyData, {'attributes.y_names': {'contains': [PMF_ARRAY]}}),
    )


@dataclass
class Lineage:
    """Both directions of the provenance of one node, with counts by type.

    Attributes
    ----------
    node
        The node asked about.
    ancestors, descendants
        Every node it derives from / every node derived from it, sorted by PK.
    """

    node: orm.Node
    ancestors: list[NodeRow]
    descendants: list[NodeRow]

    @staticmethod
    def _counts(rows: list[NodeRow]) -> Counter:
        return Counter(row.type_name for row in rows)

    @property
    def ancestor_counts(self) -> Counter:
        """Number of ancestors by short type name."""
        return self._counts(self.ancestors)

    @property
    def descendant_counts(self) -> Counter:
        """Number of descendants by short type name."""
        return self._counts(self.descendants)

    def format_tree(self, show: int = 3) -> str:
        """A compact text tree: the node, then ancestors and descendants grouped by type with a few PKs each.

        Parameters
        ----------
        show
            How many PKs to list per type (0 lists none).
        """
        node = self.node
        head = f'{type(node).__name__}<{node.pk}> {node.uuid}' + (f' {node.label!r}' if node.label else '')
        lines = [head]
        sections = [('ancestors', self.ancestors), ('descendants', self.descendants)]
        for s, (title, rows) in enumerate(sections):
            last_section = s == len(sections) - 1
            lines.append(f'{"└──" if last_section else "├──"} {title} ({len(rows)})')
            by_type: dict[str, list[int]] = {}
            for row in rows:
                by_type.setdefault(row.type_name, []).append(row.pk)
            stem = '    ' if last_section else '│   '
            names = sorted(by_type, key=lambda name: (-len(by_type[name]), name))
            for t, name in enumerate(names):
                pks = by_type[name]
                listed = ''
                if show > 0:
                    more = f', ... +{len(pks) - show}' if len(pks) > show else ''
                    listed = ': ' + ', '.join(str(pk) for pk in pks[:show]) + more
                branch = '└──' if t == len(names) - 1 else '├──'
                lines.append(f'{stem}{branch} {name} x{len(pks)}{listed}')
        return '\n'.join(lines)


def lineage(node: int | str | orm.Node) -> Lineage:
    """Ancestors and descendants of ``node`` (two queries)."""
    node = load_node(node)
    return Lineage(node=node, ancestors=ancestors(node), descendants=descendants(node))
