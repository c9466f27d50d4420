"""Measured end-effector velocity: pinocchio on the shipped URDF against MuJoCo's own TCP velocity."""
import numpy as np
import pytest

from vla_prune_ros.control.kinematics import EndEffectorVelocity
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


def test_forward_kinematics_matches_the_mujoco_tcp_pose(trajectory):
    """The URDF pinocchio reads and the simulated arm are the same chain: same TCP pose."""
    urdf, samples = trajectory
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    for obs in samples[::3]:
        pose = kinematics.forward_kinematics(obs.joint_positions[:6])
        np.testing.assert_allclose(pose.translation, obs.proprio[:3], atol=1e-9)
        angle = np.linalg.norm(obs.proprio[3:6])
        axis = obs.proprio[3:6] / angle
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        np.testing.assert_allclose(pose.rotation, rotation, atol=1e-9)


def test_default_joints_are_all_movable_joints_and_the_chain_is_reported(trajectory):
    urdf, samples = trajectory
    obs = samples[8]
    kinematics = EndEffectorVelocity(urdf, 'tool0')
    assert kinematics.joint_names == ARM + ['finger_left_joint', 'finger_right_joint']
    assert kinematics.chain_joint_names == ARM
    full = kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time)
    assert full.valid and full.reason == ''
    np.testing.assert_allclose(full.linear, obs.tcp_linear_velocity, atol=1e-6)
    arm_only = kinematics.update(obs.joint_names[:6], obs.joint_positions[:6], obs.joint_velocities[:6], obs.time)
    assert not arm_only.valid and "'finger_left_joint' missing" in arm_only.reason


def test_inconsistent_lengths_and_stamps_are_invalid(trajectory):
    urdf, samples = trajectory
    obs = samples[5]
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    short = kinematics.update(obs.joint_names, obs.joint_positions[:-1], obs.joint_velocities, 0.0)
    assert not short.valid and 'positions' in short.reason
    bad_velocity = kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities[:3], 0.0)
    assert not bad_velocity.valid and 'velocities' in bad_velocity.reason
    inf_velocity = kinematics.update(obs.joint_names, obs.joint_positions, np.full(8, np.inf), 0.0)
    assert not inf_velocity.valid and 'Inf' in inf_velocity.reason and 'NaN' not in inf_velocity.reason
    # Finite differences need increasing stamps.
    kinematics.reset()
    assert not kinematics.update(obs.joint_names, obs.joint_positions, [], 2.0).valid
    same_time = kinematics.update(obs.joint_names, obs.joint_positions, [], 2.0)
    assert not same_time.valid and 'stamp' in same_time.reason
    later = kinematics.update(obs.joint_names, obs.joint_positions, [], 2.1)
    assert later.valid and later.linear_speed == pytest.approx(0.0, abs=1e-12)


def test_finite_differences_follow_a_real_trajectory(trajectory):
    """Across a 0.1 s control step the pose difference gives the mean TCP velocity over the step."""
    urdf, samples = trajectory
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM)
    kinematics.update(samples[5].joint_names, samples[5].joint_positions, [], samples[5].time)
    estimate = kinematics.update(samples[6].joint_names, samples[6].joint_positions, [], samples[6].time)
    expected = (samples[6].proprio[:3] - samples[5].proprio[:3]) / (samples[6].time - samples[5].time)
    assert estimate.valid and np.linalg.norm(expected) > 0.01
    np.testing.assert_allclose(estimate.linear, expected, atol=1e-9)


def test_smoothing_restarts_after_an_invalid_sample(trajectory):
    urdf, samples = trajectory
    smooth = EndEffectorVelocity(urdf, 'tool0', ARM, smoothing=0.9)
    a, b = samples[6], samples[7]
    smooth.update(a.joint_names, a.joint_positions, a.joint_velocities, a.time)
    nan = smooth.update(a.joint_names, np.full(8, np.nan), a.joint_velocities, a.time)
    assert not nan.valid
    restarted = smooth.update(b.joint_names, b.joint_positions, b.joint_velocities, b.time)
    np.testing.assert_allclose(restarted.linear, b.tcp_linear_velocity, atol=1e-6)   # no memory of a
    with pytest.raises(ValueError, match='smoothing'):
        EndEffectorVelocity(urdf, 'tool0', ARM, smoothing=1.0)


def test_from_file_and_continuous_joints(tmp_path):
    from vla_prune_ros.paths import URDF_PATH
    assert EndEffectorVelocity.from_file(URDF_PATH, 'tool0').chain_joint_names == ARM
    # A continuous joint is (cos, sin) in pinocchio; a tip 0.5 m out spins at 0.5 * omega.
    path = tmp_path / 'spinner.urdf'
    path.write_text('<robot name="spinner"><link name="base"/><link name="arm"/><link name="tip"/>'
                    '<joint name="spin" type="continuous"><parent link="base"/><child link="arm"/>'
                    '<axis xyz="0 0 1"/></joint>'
                    '<joint name="tip_joint" type="fixed"><parent link="arm"/><child link="tip"/>'
                    '<origin xyz="0.5 0 0"/></joint></robot>')
    spinner = EndEffectorVelocity.from_file(path, 'tip')
    angle = 4.0   # beyond pi
    estimate = spinner.update(['spin'], [angle], [2.0], 0.0)
    np.testing.assert_allclose(estimate.linear, [-np.sin(angle), np.cos(angle), 0.0], atol=1e-12)
    np.testing.assert_allclose(estimate.angular, [0.0, 0.0, 2.0], atol=1e-12)


def test_non_physical_joint_velocities_are_unknown_like_nan(trajectory):
    urdf, samples = trajectory
    obs = samples[5]
    kinematics = EndEffectorVelocity(urdf, 'tool0', ARM, max_joint_velocity=50.0)
    assert kinematics.update(obs.joint_names, obs.joint_positions, obs.joint_velocities, obs.time).valid
    for value in (1e9, -1e200):
        velocities = np.array(obs.joint_velocities, dtype=float)
        velocities[0] = value
        estimate = kinematics.update(obs.joint_names, obs.joint_positions, velocities, obs.time)
        assert not estimate.valid and np.all(np.isnan(estimate.linear))
        assert 'non-physical joint velocities beyond max_joint_velocity 50' in estimate.reason
        assert 'joint1' in estimate.reason
    # Beyond float range in the product: still unknown, never an overflow or an inf twist.
    huge = EndEffectorVelocity(urdf, 'tool0', ARM, max_joint_velocity=float('inf'))
    estimate = huge.update(obs.joint_names, obs.joint_positions, np.full(8, 1e308), obs.time)
    assert not estimate.valid
