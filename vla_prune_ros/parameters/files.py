"""ROS 2 params files and the merge the launch files do; what the simulated arm's config says."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from ..paths import CONFIG_DIR, SIM_ROBOT_CONFIG
from .checks import validate
from .spec import ParameterError, coerce
from .table import METHOD_NAMES, NODE_NAME, PARAMETERS, method_config_file

# What the node publishes besides per-parameter topics; recorded with its inputs (see recorded_topics).
OUTPUT_TOPICS = ('action_chunk', 'inference_stats', '/diagnostics')


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The flattened ``ros__parameters`` for ``node_name`` of a ROS 2 params file.

    Sections apply in this order, later winning: ``/**``, ``/**/<node_name>`` (the form the shipped
    files use, so they also apply to a node in a namespace), ``<node_name>``, ``/<node_name>``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ParameterError(f'{path}: cannot read ({error.strerror})') from None
    except yaml.YAMLError as error:
        raise ParameterError(f'{path}: not valid YAML ({error})') from None
    if not isinstance(data, Mapping):
        raise ParameterError(f'{path}: expected a mapping of node names')
    merged = {}
    for key in ('/**', '**', '/**/' + node_name, node_name, '/' + node_name):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping) or not isinstance(section.get('ros__parameters'), Mapping):
            raise ParameterError(f'{path}: {key}: expected a ros__parameters mapping')
        merged.update(_flatten(section['ros__parameters']))
    return merged


def resolve_launch_parameters(method: str, overrides: Optional[Mapping[str, Any]] = None,
                              config_files: Iterable[str | Path] = (), config_dir: str | Path | None = None
                              ) -> dict[str, Any]:
    """The node-parameter dict the launch file passes to ``Node(parameters=[...])``.

    Later wins: ``<config_dir>/<method>.yaml`` (the method's published defaults), then each
    of ``config_files`` (robot config, user config), then ``overrides`` (launch arguments;
    strings are parsed to the parameter's type, empty strings are skipped), then
    ``method`` itself. The result is validated and typed (doubles are floats). Raises
    ParameterError naming the file or parameter.
    """
    if method not in METHOD_NAMES:
        raise ParameterError(f'method: {method!r} not one of {list(METHOD_NAMES)}')
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    layers = [(config_dir / method_config_file(method), load_params_file(config_dir / method_config_file(method)))]
    for path in config_files:
        if path:
            layers.append((Path(path), load_params_file(path)))
    overrides = {k: v for k, v in (overrides or {}).items() if not (isinstance(v, str) and v == '')}
    layers.append(('launch arguments', overrides))
    layers.append(('method argument', {'method': method}))

    resolved: dict[str, Any] = {}
    for source, layer in layers:
        for name, value in layer.items():
            spec = PARAMETERS.get(name)
            if spec is None:
                raise ParameterError(f'{source}: {name}: unknown parameter of {NODE_NAME}')
            try:
                resolved[name] = coerce(spec, value)
            except ParameterError as error:
                raise ParameterError(f'{source}: {error}') from None
    validate(resolved)
    return resolved


def sim_robot_parameters() -> dict[str, Any]:
    """The simulated arm's robot config (``config/sim_robot.yaml``), flattened."""
    return load_params_file(SIM_ROBOT_CONFIG)


def recorded_topics(values: Mapping[str, Any]) -> list[str]:
    """What a recording of a run holds: the node's outputs, its inputs and the URDF (replay needs them)."""
    return [*OUTPUT_TOPICS, values['joint_states_topic'], values['success_topic'], *values['camera_topics'],
            'robot_description']
