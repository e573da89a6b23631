"""Sphinx directive ``mlff-options``: a table of the options of a schema, read from ``aiida_mlff.core.options``.

Every default, unit, bound and help text shown comes from the :class:`~aiida_mlff.core.options.Schema` when the
documentation is built, so the pages never repeat a default by hand. Usage (MyST)::

    ```{mlff-options} aiida_mlff.core.options.TRAIN
    :prefix: training
    :protocols: train/base.yaml train.parameters
    ```

Argument: the dotted import path of a ``Schema``. Options:

``prefix``
    Written before every key (``training.epochs``).
``only`` / ``exclude``
    Space-separated dotted keys to keep / leave out (a nested schema's key covers all of its options).
``protocols``
    A protocol file under ``aiida_mlff/workflows/protocols`` and the dotted path of the options inside each
    protocol: adds a column with the value of every protocol that differs from the schema's default.
"""

from __future__ import annotations

import importlib
import inspect
import math

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

_KINDS = {
    'number': 'number',
    'integer': 'integer',
    'bool': 'true/false',
    'numbers': 'list of numbers',
    'mapping': 'mapping',
    'any': '',
}


def _import(path: str):
    module_name, _, name = path.rpartition('.')
    module = importlib.import_module(module_name)
    return module, getattr(module, name)


def _flow(value) -> str:
    """A value as it would be written in a YAML campaign file (``null`` for None, flow style for lists)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f'{value:g}'
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False).strip()
    return text[: -len('...')].strip() if text.endswith('...') else text


def _literal(text: str) -> list[nodes.Node]:
    return [nodes.literal(text, text)] if text else []


def _text(text: str) -> list[nodes.Node]:
    return [nodes.Text(str(text))] if text else []


def _joined(parts: list[list[nodes.Node]], separator: str) -> list[nodes.Node]:
    out: list[nodes.Node] = []
    for k, part in enumerate(parts):
        if k:
            out.append(nodes.Text(separator))
        out.extend(part)
    return out


def _allowed(option) -> list[nodes.Node]:
    """Type and range of an option, e.g. 'integer >= 1', 'one of auto, cpu, cuda', 'number > 0, null allowed'."""
    kind = getattr(option, 'kind', 'any')
    parts: list[list[nodes.Node]] = []
    if kind == 'choice':
        choices = [_literal(_flow(c)) for c in option.choices if c is not None]
        parts.append(_text('one of ') + _joined(choices, ', '))
    else:
        text = _KINDS.get(kind, kind)
        bounds = []
        if option.low is not None:
            bounds.append(f'{">" if option.low_open else ">="} {option.low:g}')
        if option.high is not None:
            bounds.append(f'{"<" if option.high_open else "<="} {option.high:g}')
        if bounds:
            text = (text + ' ' if text else '') + ' and '.join(bounds)
        if getattr(option, 'nonempty', False):
            text += ', not empty'
        if text:
            parts.append(_text(text))
    if option.nullable:
        parts.append(_literal('null') + _text(' allowed'))
    return _joined(parts, ', ')


def _table(headers: list[str], rows: list[list[list[nodes.Node]]], widths: list[int]) -> nodes.table:
    """A docutils table (built directly, so it is the same under MyST and reST)."""

    def row(cells: list[list[nodes.Node]]) -> nodes.row:
        line = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            if cell:
                entry += nodes.paragraph('', '', *cell)
            line += entry
        return line

    table = nodes.table(classes=['mlff-options'])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += row([_text(h) for h in headers])
    group += head
    body = nodes.tbody()
    body.extend(row(cells) for cells in rows)
    group += body
    return table


def _flatten(schema, prefix: str = ''):
    """(dotted key, Option) of every option of a schema, nested schemas included, in their order."""
    from aiida_mlff.core.options import Schema

    for key, spec in schema.fields.items():
        dotted = f'{prefix}{key}'
        if isinstance(spec, Schema):
            yield from _flatten(spec, f'{dotted}.')
        else:
            yield dotted, spec


def _keys(text: str | None) -> list[str]:
    return text.split() if text else []


def _selected(key: str, only: list[str], exclude: list[str]) -> bool:
    def covers(pattern: str) -> bool:
        return key == pattern or key.startswith(pattern + '.')

    if only and not any(covers(p) for p in only):
        return False
    return not any(covers(p) for p in exclude)


def _dig(mapping, dotted: str):
    for part in dotted.split('.') if dotted else []:
        mapping = mapping.get(part, {}) if isinstance(mapping, dict) else {}
    return mapping if isinstance(mapping, dict) else {}


def _flat_values(mapping: dict, prefix: str = '', keep: set[str] = frozenset()) -> dict:
    """Dotted key -> value of a nested mapping; the keys in ``keep`` (mapping options) are not descended into."""
    flat = {}
    for key, value in mapping.items():
        dotted = f'{prefix}{key}'
        if isinstance(value, dict) and dotted not in keep:
            flat.update(_flat_values(value, f'{dotted}.', keep))
        else:
            flat[dotted] = value
    return flat


def _protocol_values(spec: str, defaults: dict, mappings: set[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Protocol names, and dotted key -> {protocol: value} where a protocol differs from the schema default."""
    from aiida_mlff.workflows.protocols import PROTOCOL_DIR, recursive_merge

    file, _, inside = spec.partition(' ')
    data = yaml.safe_load((PROTOCOL_DIR / file).read_text())
    names = list(data['protocols'])
    found: dict[str, dict[str, str]] = {}
    for name in names:
        inputs = recursive_merge(data.get('default_inputs') or {}, data['protocols'][name])
        values = _flat_values(_dig(inputs, inside.strip()), keep=mappings)
        for key, value in values.items():
            default = defaults.get(key)
            if isinstance(default, dict) and isinstance(value, dict):
                value = recursive_merge(default, value)
            if key in defaults and value != default:
                found.setdefault(key, {})[name] = _flow(value)
    return names, found


class OptionsTable(SphinxDirective):
    """``mlff-options``: one row per option of a schema: key, default, unit, allowed values, help."""

    required_arguments = 1
    has_content = False
    option_spec = {  # noqa: RUF012 (docutils reads it as a class attribute)
        'prefix': directives.unchanged,
        'only': directives.unchanged,
        'exclude': directives.unchanged,
        'protocols': directives.unchanged,
    }

    def run(self):
        """The table of the selected options."""
        path = self.arguments[0]
        module, schema = _import(path)
        self.env.note_dependency(inspect.getsourcefile(module))
        self.env.note_dependency(inspect.getsourcefile(importlib.import_module('aiida_mlff.core.options')))
        prefix = self.options.get('prefix', '')
        prefix = f'{prefix}.' if prefix else ''
        only, exclude = _keys(self.options.get('only')), _keys(self.options.get('exclude'))
        rows = [(key, option) for key, option in _flatten(schema) if _selected(key, only, exclude)]
        if not rows:
            raise self.error(f'mlff-options: no option of {path} is selected')
        protocols, per_protocol = [], {}
        if 'protocols' in self.options:
            mappings = {k for k, o in rows if o.kind == 'mapping'}
            defaults = _flat_values(schema.defaults(), keep=mappings)
            protocols, per_protocol = _protocol_values(self.options['protocols'], defaults, mappings)
            from aiida_mlff.workflows.protocols import PROTOCOL_DIR

            self.env.note_dependency(str(PROTOCOL_DIR / self.options['protocols'].split()[0]))
        headers = ['Option', 'Default', 'Unit', 'Allowed', 'Description']
        widths = [22, 14, 10, 18, 36]
        if protocols:
            headers.insert(2, 'Protocols')
            widths = [20, 12, 16, 9, 15, 28]
        table_rows = []
        for key, option in rows:
            cells = [
                _literal(prefix + key),
                _literal(_flow(option.default)),
                _text(option.unit),
                _allowed(option),
                _text(option.help),
            ]
            if protocols:
                set_by = per_protocol.get(key, {})
                cells.insert(2, _joined([_text(f'{name}: ') + _literal(v) for name, v in set_by.items()], '; '))
            table_rows.append(cells)
        return [_table(headers, table_rows, widths)]


def setup(app):
    """Register the directive."""
    app.add_directive('mlff-options', OptionsTable)
    return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
