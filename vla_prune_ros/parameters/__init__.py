"""The node's parameters without ROS: the table (``table``, derived in part from option declarations),
one parameter's spec and value checks (``spec``), checks of a whole set (``checks``), params files
and the launch merge (``files``). Unit-tested without rclpy or ``launch`` (not installable from PyPI).
"""
from .checks import (PER_CAMERA_PARAMETERS, ModelInfo, controller_config, duplicate_names, execution_options,
                     method_options, proprio_length, resolve_urdf, validate, validate_update)
from .files import load_params_file, recorded_topics, resolve_launch_parameters, sim_robot_parameters
from .spec import ParameterError, ParamSpec, check_value, coerce
from .table import METHOD_NAMES, METHOD_PREFIX, NODE_NAME, PARAMETERS, defaults, markdown_table, method_config_file

__all__ = ['METHOD_NAMES', 'METHOD_PREFIX', 'NODE_NAME', 'PARAMETERS', 'PER_CAMERA_PARAMETERS', 'ModelInfo', 'ParamSpec', 'ParameterError',
           'check_value', 'coerce', 'controller_config', 'defaults', 'duplicate_names', 'execution_options', 'load_params_file', 'markdown_table',
           'method_config_file', 'method_options', 'proprio_length', 'recorded_topics', 'resolve_launch_parameters',
           'resolve_urdf', 'sim_robot_parameters', 'validate', 'validate_update']
