"""Tests for vla_prune_ros.parameters (no ROS): the parameter table, the checks the node's
on_set_parameters_callback runs, the shipped robot config, the launch merge, and the node's proprio builder against the simulator's own proprio."""
import math
from pathlib import Path

import numpy as np
import pytest

from vla_prune_ros import parameters as nc
from vla_prune_ros.control.controller import ControllerConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'config'
MODEL = nc.ModelInfo(action_dim=7, chunk_len=8, num_cameras=2, proprio_dim=8, camera_names=('primary', 'wrist'),
                     action_names=('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper'))


def sim_values(**changes):
    return {**nc.defaults(), **nc.load_params_file(CONFIG / 'sim_robot.yaml'), 'checkpoint': '/ckpt', **changes}


# --- the table --------------------------------------------------------------------------------------

def test_numeric_parameters_have_ranges_and_the_right_ones_are_read_only():
    for spec in nc.PARAMETERS.values():
        assert spec.description, spec.name
        if spec.element_type in ('integer', 'double'):
            assert spec.low is not None and spec.high is not None and spec.low <= spec.high, spec.name
    read_only = {name for name, spec in nc.PARAMETERS.items() if spec.read_only}
    assert {'checkpoint', 'device', 'dtype', 'camera_topics', 'urdf_path', 'robot_description', 'ee_frame',
            'joint_names'} <= read_only
    assert not {'method', 'control_dt', 'execute_steps', 'max_input_age', 'action_low', 'action_high',
                'specprune.dynamic_keep_ratio', 'controller.min_dwell_time'} & read_only
    nc.validate(nc.defaults())


# --- single values ------------------------------------------------------------------------------

@pytest.mark.parametrize('name, value, words', [
    ('control_dt', -1.0, ['control_dt', 'outside']),
    ('control_dt', 'fast', ['control_dt', 'expected a double']),
    ('control_dt', True, ['expected a double']),
    ('control_dt', math.nan, ['NaN']),
    ('execute_steps', 2.0, ['expected a integer']),
    ('method', 'fastv', ['not one of']),
    ('dtype', 'int8', ['not one of']),
    ('device', 'gpu0', ["'cuda:N'"]),
    ('specprune.topk_coarse', [16, 300], ['300', 'outside']),
    ('specprune.topk_coarse', 16, ['array']),
    ('camera_topics', ['a', 3], ['string array']),
    ('stale_input_policy', 'ignore', ['not one of']),
])
def test_check_value_refuses_with_a_reason_naming_the_parameter(name, value, words):
    reason = nc.check_value(nc.PARAMETERS[name], value)
    for word in words:
        assert word in reason, reason


def test_check_value_accepts_good_values():
    good = {'control_dt': 0.05, 'device': 'cuda:1', 'method': 'lightvla_star', 'specprune.topk_coarse': [1, 2, 3],
            'controller.fine_exit_speed': math.inf, 'action_low': [], 'execute_steps': 0}
    for name, value in good.items():
        assert nc.check_value(nc.PARAMETERS[name], value) == '', name


# --- the whole set --------------------------------------------------------------------------------

@pytest.mark.parametrize('changes, words', [
    ({'checkpoint': '/other'}, ['checkpoint', 'read-only']),
    ({'camera_topics': ['a', 'b']}, ['read-only']),
    ({'no_such_parameter': 1}, ['unknown parameter']),
    ({'control_dt': -1.0}, ['control_dt']),
    ({'specprune.dynamic_keep_ratio': 0.0}, ['specprune.dynamic_keep_ratio', '(0, 1]']),
    ({'specprune.delta_min': 7}, ['specprune.delta_m']),          # above delta_max = 6
    ({'lightvla.noise_scale': -1.0}, ['lightvla.noise_scale']),
    ({'controller.fine_exit_speed': 0.01}, ['controller.fine_exit_speed', 'hysteresis']),
    ({'action_high': [0.03, 0.03, 0.03, 0.15, 0.15, 0.15, -1.0]}, ['action_low[6]', 'action_high[6]']),
    ({'action_low': [-1.0] * 6}, ['same length']),
    ({'execute_steps': 9}, ['execute_steps', 'chunk length 8']),
])
def test_validate_update_refuses_with_a_reason(changes, words):
    reason = nc.validate_update(sim_values(), changes, MODEL)
    assert reason, changes
    for word in words:
        assert word in reason, reason


def test_validate_update_accepts_a_live_method_switch_and_checks_the_model():
    current = sim_values()
    assert nc.validate_update(current, {'method': 'specprune', 'specprune.dynamic_keep_ratio': 0.5}, MODEL) == ''
    assert nc.validate_update(current, {'controller.fine_exit_speed': math.inf}, MODEL) == ''
    # Sizes must agree with the loaded model.
    small = nc.ModelInfo(action_dim=6, chunk_len=4, num_cameras=1, proprio_dim=7)
    assert 'the model has 6 action dimensions' in nc.validate_update(current, {}, small)
    no_bounds = {'action_low': [], 'action_high': []}
    assert '1 (' in nc.validate_update(current, no_bounds, nc.ModelInfo(7, 8, 1, 8, ('primary',)))
    reason = nc.validate_update(current, no_bounds, nc.ModelInfo(7, 8, 2, 7))
    assert 'proprio_source' in reason and 'gives 8 values, the model needs 7' in reason
    assert nc.validate_update(current, {**no_bounds, 'proprio_source': 'zeros'}, nc.ModelInfo(7, 8, 2, 7),
                              initializing=True) == ''
    # Read-only parameters may be "changed" to their current value, and set at initialisation.
    assert nc.validate_update(current, {'checkpoint': '/ckpt'}, MODEL) == ''
    assert nc.validate_update(current, {'checkpoint': '/x'}, MODEL, initializing=True) == ''


def test_method_options_become_what_create_method_takes():
    from vla_prune_ros.pruning import create_method
    values = {**nc.defaults(), 'specprune.forced_static_visual': 0, 'lightvla.forced_visual_keep': 12,
              'lightvla.query_mode': 'replace', 'specprune.topk_fine': [30, 20, 10]}
    spec = nc.method_options(values, 'specprune')
    assert spec['forced_static_visual'] is None and spec['topk_fine'] == (30, 20, 10)
    light = nc.method_options(values, 'lightvla')
    assert light['forced_visual_keep'] == 12 and 'query_mode' not in light
    assert nc.method_options(values, 'lightvla_star')['query_mode'] == 'replace'
    assert nc.method_options(values, 'none') == {}
    for method in nc.METHOD_NAMES:
        created = create_method(method, **nc.method_options(values, method))
        assert created.name == method
    assert create_method('specprune', **spec).options.topk_fine == (30, 20, 10)


# --- params files and the launch merge ----------------------------------------------------------------

def test_sim_robot_config_matches_the_simulator():
    from vla_prune_ros.paths import URDF_PATH
    from vla_prune_ros.sim import env, scene
    values = nc.load_params_file(CONFIG / 'sim_robot.yaml')
    nc.validate({**nc.defaults(), **values}, MODEL)
    np.testing.assert_allclose(values['action_low'], env.ACTION_LOW)
    np.testing.assert_allclose(values['action_high'], env.ACTION_HIGH)
    assert values['joint_names'] == list(scene.ARM_JOINT_NAMES)
    assert values['proprio_joint_names'] == list(scene.FINGER_JOINT_NAMES)
    assert values['ee_frame'] == scene.TCP_FRAME
    assert [topic.split('/')[1] for topic in values['camera_topics']] == list(scene.CAMERA_NAMES)
    assert nc.controller_config(values) == ControllerConfig()
    assert nc.resolve_urdf(values) == URDF_PATH.read_text()


def test_load_params_file_flattens_and_reports_bad_files(tmp_path):
    good = tmp_path / 'good.yaml'
    good.write_text('/**:\n  ros__parameters:\n    control_dt: 0.2\n'
                    'vla_prune_node:\n  ros__parameters:\n    controller: {min_dwell_time: 0.5}\n    control_dt: 0.3\n'
                    '/**/vla_prune_node:\n  ros__parameters:\n    control_dt: 0.25\n    max_input_age: 2.0\n'
                    'other_node:\n  ros__parameters:\n    control_dt: 9.0\n')
    assert nc.load_params_file(good) == {'control_dt': 0.3, 'controller.min_dwell_time': 0.5, 'max_input_age': 2.0}
    bad = tmp_path / 'bad.yaml'
    bad.write_text('vla_prune_node: {ros__parameters: [1, 2]}\n')
    with pytest.raises(nc.ParameterError, match='bad.yaml: vla_prune_node: expected a ros__parameters mapping'):
        nc.load_params_file(bad)
    with pytest.raises(nc.ParameterError, match='missing.yaml: cannot read'):
        nc.load_params_file(tmp_path / 'missing.yaml')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('vla_prune_node: [\n')
    with pytest.raises(nc.ParameterError, match='not valid YAML'):
        nc.load_params_file(broken)


def test_resolve_launch_parameters_merges_in_order(tmp_path):
    user = tmp_path / 'user.yaml'
    user.write_text('vla_prune_node:\n  ros__parameters:\n    control_dt: 0.2\n'
                    '    specprune: {dynamic_keep_ratio: 0.6}\n    method: none\n')
    resolved = nc.resolve_launch_parameters(
        'specprune', {'checkpoint': '/ckpt', 'max_input_age': '1', 'control_dt': ''},
        [CONFIG / 'sim_robot.yaml', user])
    assert resolved['method'] == 'specprune'                 # the method argument wins over files
    assert resolved['control_dt'] == 0.2                     # user file over robot file; '' is skipped
    assert resolved['max_input_age'] == 1.0 and isinstance(resolved['max_input_age'], float)
    assert resolved['specprune.dynamic_keep_ratio'] == 0.6   # user file over specprune.yaml
    assert resolved['specprune.topk_coarse'] == [16, 12]     # from specprune.yaml
    assert resolved['ee_frame'] == 'tool0' and resolved['checkpoint'] == '/ckpt'
    overridden = nc.resolve_launch_parameters('none', {'execution': 'async', 'dry_run': 'true'},
                                              [CONFIG / 'sim_robot.yaml'])
    assert overridden['execution'] == 'async' and overridden['dry_run'] is True
    with pytest.raises(nc.ParameterError, match='execution'):
        nc.resolve_launch_parameters('none', {'execution': 'later'})
    star = nc.resolve_launch_parameters('lightvla_star', {}, [])
    assert star['method'] == 'lightvla_star' and star['lightvla.query_mode'] == 'add'


def test_resolve_launch_parameters_names_the_bad_source(tmp_path):
    with pytest.raises(nc.ParameterError, match="launch arguments: control_dt: -2.0 outside"):
        nc.resolve_launch_parameters('none', {'control_dt': '-2'})
    with pytest.raises(nc.ParameterError, match='method'):
        nc.resolve_launch_parameters('fastv', {})
    typo = tmp_path / 'typo.yaml'
    typo.write_text('vla_prune_node:\n  ros__parameters:\n    contrl_dt: 0.1\n')
    with pytest.raises(nc.ParameterError, match='typo.yaml: contrl_dt: unknown parameter'):
        nc.resolve_launch_parameters('none', {}, [typo])
    inconsistent = tmp_path / 'inconsistent.yaml'
    inconsistent.write_text('vla_prune_node:\n  ros__parameters:\n    specprune: {delta_min: 9}\n')
    with pytest.raises(nc.ParameterError, match=r'specprune\.delta_m(in|ax)'):
        nc.resolve_launch_parameters('specprune', {}, [inconsistent])


def test_launch_file_is_thin_and_valid_python():
    import ast
    source = (REPO / 'launch' / 'vla_prune.launch.py').read_text()
    tree = ast.parse(source)
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    assert 'resolve_launch_parameters' in source
    for argument in ('method', 'checkpoint', 'config', 'robot_config', 'control_dt', 'max_input_age', 'execution',
                     'dry_run', 'record'):
        assert f"DeclareLaunchArgument('{argument}'" in source, argument


def test_resolve_urdf(tmp_path):
    assert nc.resolve_urdf({'robot_description': '<robot/>', 'urdf_path': '/nope'}) == '<robot/>'
    assert nc.resolve_urdf({'robot_description': '', 'urdf_path': ''}) == ''
    assert '<robot name="vla_arm">' in nc.resolve_urdf({'urdf_path': 'package://vla_prune_ros/assets/arm.urdf'})
    with pytest.raises(nc.ParameterError, match='urdf_path: cannot read'):
        nc.resolve_urdf({'urdf_path': str(tmp_path / 'missing.urdf')})
    with pytest.raises(nc.ParameterError, match='only package://vla_prune_ros/'):
        nc.resolve_urdf({'urdf_path': 'package://other_robot/urdf/arm.urdf'})


# --- the node's proprio, against the simulator's -------------------------------------------------------

def test_ee_pose_proprio_matches_the_simulator():
    """The node rebuilds the simulator's proprio (TCP xyz, continuous rotation vector, fingers) from joint
    positions with pinocchio; the simulator computes it with MuJoCo. They must agree."""
    from vla_prune_ros.control.kinematics import ProprioBuilder
    from vla_prune_ros.sim.env import TabletopEnv
    import mujoco
    values = sim_values()
    builder = ProprioBuilder('ee_pose', 8, nc.resolve_urdf(values), values['ee_frame'],
                             values['proprio_joint_names'], values['proprio_reference_rotvec'])
    assert builder.required_joints == [f'joint{i}' for i in range(1, 7)] + ['finger_left_joint', 'finger_right_joint']
    env = TabletopEnv(render_images=False, seed=3)
    rng = np.random.default_rng(0)
    try:
        for trial in range(12):
            q = env.home_qpos + rng.normal(0.0, 0.3, 6) * (trial > 0)
            fingers = rng.uniform(0.0, 0.04, 2)
            env.data.qpos[env._arm_qpos] = q
            env.data.qpos[env._finger_qpos] = fingers
            mujoco.mj_forward(env.model, env.data)
            positions = dict(zip(env.joint_names, list(q) + list(fingers)))
            np.testing.assert_allclose(builder.build(positions), env.proprio(), atol=1e-6)
    finally:
        env.close()
    zeros = ProprioBuilder('zeros', 8)
    assert zeros.required_joints == [] and np.array_equal(zeros.build({}), np.zeros(8))
    joints = ProprioBuilder('joint_positions', 2, extra_joints=['a', 'b'])
    assert np.array_equal(joints.build({'a': 1.0, 'b': -2.0}), [1.0, -2.0])


def test_rate_meter_counts_recent_messages():
    from vla_prune_ros.node.inputs import RateMeter
    meter = RateMeter(window=2.0)
    assert meter.rate(0.0) == 0.0
    for i in range(31):                        # 30 Hz for one second, just after startup
        meter.tick(10.0 + i / 30)
    assert meter.rate(11.0) == pytest.approx(31.0)
    for i in range(31, 91):                    # and on for two more seconds
        meter.tick(10.0 + i / 30)
    assert meter.rate(13.0) == pytest.approx(30.0, abs=0.6)
    assert meter.rate(15.1) == 0.0             # the topic went silent
