"""Measured end-effector velocity: pinocchio on the shipped URDF against MuJoCo's own TCP velocity."""
import numpy as np
import pytest

from vla_prune_ros.kinematics import EndEffectorVelocity
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert

ARM = [f'joint{i}' for i in range(1, 7)]


@pytest.fixture(scope='module')
def trajectory():
    """Joint states and MuJoCo's TCP twist along an expert push."""
    with TabletopEnv(render_images=False) as env:
        obs = env.reset(task='push', seed=3)
        expert = ScriptedExpert(env, seed=3)
        expert.reset(seed=3)
        samples = []
        for _ in range(15):
            obs = env.step(expert.act(obs))
            samples.append(obs)
        return env.urdf_xml, samples


def test_jacobian_velocity_matches_mujoco(trajectory):
    urdf, samples = trajectory
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    moving = 0
    for obs in samples:
        estimate = kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
        assert estimate.valid and estimate.source == 'jacobian'
        np.testing.assert_allclose(estimate.linear, obs.tcp_linear_velocity, atol=1e-6)
        np.testing.assert_allclose(estimate.angular, obs.tcp_angular_velocity, atol=1e-6)
        moving += estimate.linear_speed > 0.01
    assert moving >= 10     # the arm really moved, so the comparison means something


def test_joint_order_does_not_matter(trajectory):
    urdf, samples = trajectory
    obs = samples[5]
    order = np.random.default_rng(0).permutation(len(obs.joint_names))
    a = EndEffectorVelocity(urdf, 'tool0', ARM).update(obs.joint_names, obs.joint_positions, obs.joint_velocities, 0.0)
    b = EndEffectorVelocity(urdf, 'tool0', ARM).update([obs.joint_names[i] for i in order],
                                                       obs.joint_positions[order], obs.joint_velocities[order], 0.0)
    np.testing.assert_array_equal(a.linear, b.linear)
    np.testing.assert_array_equal(a.angular, b.angular)


def test_finite_difference_fallback_matches_the_jacobian_for_a_small_step(trajectory):
    urdf, samples = trajectory
    obs = samples[6]
    q, qdot = obs.joint_positions, obs.joint_velocities
    dt = 1e-4
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    first = kinematics.update(obs.joint_names, q, [], 1.0)
    assert not first.valid and 'second sample' in first.reason
    estimate = kinematics.update(obs.joint_names, q + qdot * dt, [], 1.0 + dt)
    assert estimate.valid and estimate.source == 'finite_difference'
    jacobian = EndEffectorVelocity(urdf, 'tool0', ARM).update(obs.joint_names, q, qdot, 1.0)
    np.testing.assert_allclose(estimate.linear, jacobian.linear, atol=2e-4)
    np.testing.assert_allclose(estimate.angular, jacobian.angular, atol=2e-3)


def test_nan_missing_and_unknown_joints(trajectory):
    urdf, samples = trajectory
    obs = samples[4]
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    positions = obs.joint_positions.copy()
    positions[2] = np.nan
    nan = kinematics.update(obs.joint_names, positions, obs.joint_velocities, 0.0)
    assert not nan.valid and 'NaN' in nan.reason and np.isnan(nan.linear_speed)
    missing = kinematics.update(obs.joint_names[1:], obs.joint_positions[1:], obs.joint_velocities[1:], 0.0)
    assert not missing.valid and "'joint1' missing" in missing.reason
    names = list(obs.joint_names) + ['conveyor_belt']
    extra = kinematics.update(names, np.append(obs.joint_positions, 0.3), np.append(obs.joint_velocities, 1.0), 0.0)
    assert extra.valid and 'conveyor_belt' in extra.reason
    np.testing.assert_allclose(extra.linear, obs.tcp_linear_velocity, atol=1e-6)


def test_smoothing_is_an_exponential_moving_average(trajectory):
    urdf, samples = trajectory
    raw = EndEffectorVelocity(urdf, 'tool0', ARM)
    smooth = EndEffectorVelocity(urdf, 'tool0', ARM, smoothing=0.6)
    expected = None
    for obs in samples[:6]:
        r = raw.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
        s = smooth.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
        expected = r.linear if expected is None else 0.6 * expected + 0.4 * r.linear
        np.testing.assert_allclose(s.linear, expected, atol=1e-12)


def test_bad_urdf_or_frame_is_a_clear_error(trajectory):
    urdf, _ = trajectory
    with pytest.raises(ValueError, match='URDF'):
        EndEffectorVelocity('<robot name="broken"><link name=', 'tool0')
    with pytest.raises(ValueError, match="'gripper_tip' is not a frame"):
        EndEffectorVelocity(urdf, 'gripper_tip')
    with pytest.raises(ValueError, match='not in the URDF'):
        EndEffectorVelocity(urdf, 'tool0', ['joint1', 'elbow'])
