"""Protocols: named sets of inputs in YAML files, one file per work chain, and the one mixin that reads them."""

from __future__ import annotations

import copy
import pathlib
from functools import cache
from typing import Any

import yaml

__all__ = ['ProtocolMixin', 'option_port', 'recursive_merge']

PROTOCOL_DIR = pathlib.Path(__file__).parent


def recursive_merge(left: dict, right: dict) -> dict:
    """Return a deep copy of ``left`` with ``right`` merged in; values of ``right`` win."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_NODE_TYPES = {'number': 'Float', 'integer': 'Int', 'bool': 'Bool', 'choice': 'Str', 'mapping': 'Dict'}


def option_port(spec, name: str, schema, key: str | None = None, **kwargs) -> None:
    """Declare input ``name`` with the default, unit and help of option ``key`` (default ``name``) of ``schema``.

    The value is defined once, in ``aiida_mlff.core.options``; the port only carries it into the graph.
    """
    from aiida import orm

    from aiida_mlff.core.options import Schema

    option = schema[key or name]
    if isinstance(option, Schema):
        node_type, default = orm.Dict, option.defaults()
    else:
        node_type, default = getattr(orm, _NODE_TYPES[option.kind]), option.default
    unit = f' [{option.unit}]' if getattr(option, 'unit', '') else ''
    spec.input(
        name,
        valid_type=node_type,
        default=lambda: node_type(copy.deepcopy(default)),
        help=kwargs.pop('help', None) or f'{option.help}{unit}'.strip() or None,
        **kwargs,
    )


@cache
def _load(path: pathlib.Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


class ProtocolMixin:
    """Gives a work chain ``get_available_protocols`` and ``get_protocol_inputs`` from its YAML file.

    The file holds ``default_protocol``, ``default_inputs`` and ``protocols`` (each with a ``description`` and the
    inputs that differ from the defaults).
    """

    _protocol_file: str  # path relative to this folder, e.g. 'dft/label.yaml'
    _options = None  # the work chain's options schema (``aiida_mlff.core.options``): defaults filled in at the top

    @classmethod
    def _protocol_data(cls) -> dict:
        return _load(PROTOCOL_DIR / cls._protocol_file)

    @classmethod
    def get_default_protocol(cls) -> str:
        """Name of the protocol used when none is given."""
        return cls._protocol_data()['default_protocol']

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict[str, str]]:
        """Map each protocol name to ``{'description': ...}``."""
        return {name: {'description': p['description']} for name, p in cls._protocol_data()['protocols'].items()}

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
        """Return the inputs of ``protocol`` (default if None) with ``overrides`` merged last."""
        data = cls._protocol_data()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(
                f'`{protocol}` is not a protocol of {cls.__name__}: choose from {sorted(data["protocols"])}'
            )
        inputs = recursive_merge(data['default_inputs'], data['protocols'][protocol])
        inputs.pop('description', None)
        inputs = recursive_merge(inputs, overrides or {})
        if cls._options is not None:
            known = {k: v for k, v in inputs.items() if k in cls._options}
            checked = cls._options.validate(known, cls.__name__)
            inputs.update(checked)
        return inputs


def cv_sampling_builder(process, code, potential, structure, cv: dict, protocol, overrides, options, cv2):
    """The builder of a sampling work chain along one or two CVs (``mlff.umbrella``, ``mlff.metadynamics``).

    ``overrides`` are the work chain's options over its protocol's ``parameters``; ``options`` update the
    protocol's ``metadata.options``; ``potential`` may be None when a composite gives it later.
    """
    from aiida import orm

    if isinstance(code, str):
        code = orm.load_code(code)
    inputs = process.get_protocol_inputs(protocol, {'parameters': overrides or {}})
    builder = process.get_builder()
    builder.code = code
    if potential is not None:  # a composite gives the potential later
        builder.potential = potential
    builder.structure = structure
    builder.cv = orm.Dict(cv)
    if cv2 is not None:
        builder.cv2 = orm.Dict(cv2)
    builder.parameters = orm.Dict(inputs['parameters'])
    builder.options = orm.Dict({**inputs['options'], **(options or {})})
    return builder
