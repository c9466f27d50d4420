"""The MuJoCo tabletop suite and its scripted expert: determinism, frames, tasks, actions, IK."""
import re

import numpy as np
import pytest

from vla_prune_ros.sim.env import ACTION_NAMES, MAX_ROTATION_STEP, MAX_TRANSLATION_STEP, TabletopEnv
from vla_prune_ros.sim.scene import (CUBE_HALF, HOME_TCP_POSITION, HOME_TCP_ROTATION, rotation_matrix_from_vector,
                                     rotation_vector_from_matrix)
from vla_prune_ros.sim.tasks import START_OFFSET_RANGE, TASK_KINDS
from vla_prune_ros.sim.expert import ScriptedExpert


@pytest.fixture(scope='module')
def env():
    with TabletopEnv(image_size=128) as environment:
        yield environment


def rollout(env, task, seed, steps, noise_std=0.002):
    """Expert rollout with seeded noise; returns the observations."""
    obs = env.reset(task=task, seed=seed)
    expert = ScriptedExpert(env, noise_std=noise_std, seed=seed)
    observations = [obs]
    for _ in range(steps):
        obs = env.step(expert.act(obs))
        observations.append(obs)
    return observations


def test_same_seed_gives_identical_scenes_images_and_trajectories(env):
    first = rollout(env, 'push', seed=7, steps=12)
    second = rollout(env, 'push', seed=7, steps=12)
    for a, b in zip(first, second):
        assert a.instruction == b.instruction
        np.testing.assert_array_equal(a.joint_positions, b.joint_positions)
        np.testing.assert_array_equal(a.joint_velocities, b.joint_velocities)
        np.testing.assert_array_equal(a.proprio, b.proprio)
        for camera in ('primary', 'wrist'):
            np.testing.assert_array_equal(a.images[camera], b.images[camera])
    # A different seed is a different scene.
    other = env.reset(task='push', seed=8)
    assert not np.array_equal(other.images['primary'], first[0].images['primary'])
    # And the arm really moved during the rollout, so equality above means something.
    assert np.linalg.norm(first[-1].proprio[:3] - first[0].proprio[:3]) > 0.05


def test_a_second_env_with_the_same_seed_matches(env):
    obs = env.reset(task='touch', seed=11)
    with TabletopEnv(image_size=128, render_images=True) as other:
        twin = other.reset(task='touch', seed=11)
        np.testing.assert_array_equal(obs.images['primary'], twin.images['primary'])
        np.testing.assert_array_equal(obs.images['wrist'], twin.images['wrist'])
        np.testing.assert_array_equal(env.task.cube_positions, other.task.cube_positions)


def test_frames_are_sane(env):
    obs = env.reset(task='push', seed=2)
    assert set(obs.images) == {'primary', 'wrist'}
    for image in obs.images.values():
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 40 < image.mean() < 230                     # neither black nor blown out
        assert image.reshape(-1, 3).std(axis=0).min() > 10  # has content in every channel
        # Not noise: neighbouring pixels are mostly alike.
        assert np.abs(np.diff(image.astype(int), axis=1)).mean() < 20
    assert np.abs(obs.images['primary'].astype(int) - obs.images['wrist'].astype(int)).mean() > 20
    # The target cube's colour is visible from the third-person camera.
    red = obs.images['primary'].astype(int)
    colour = {'red': (200, 30, 25), 'green': (40, 160, 50), 'blue': (30, 70, 215),
              'yellow': (240, 205, 20)}[env.task.target_cube]
    assert (np.abs(red - colour).sum(axis=-1) < 120).sum() >= 10
    big = env.render_rgb('primary', 256)
    assert big.shape == (256, 256, 3) and big.mean() > 40


def test_observation_contents(env):
    obs = env.reset(task='touch', seed=4)
    assert obs.joint_names == [f'joint{i}' for i in range(1, 7)] + ['finger_left_joint', 'finger_right_joint']
    assert obs.joint_positions.shape == obs.joint_velocities.shape == (8,)
    assert obs.proprio.shape == (8,) and obs.proprio.dtype == np.float64
    # The TCP starts at the scene's seeded offset from home, within the documented range.
    np.testing.assert_allclose(obs.proprio[:3], HOME_TCP_POSITION + env.task.start_offset, atol=1e-4)
    assert np.all(np.abs(env.task.start_offset) <= START_OFFSET_RANGE)
    assert np.linalg.norm(env.task.start_offset) > 1e-3
    # Tool pointing down: a half turn about y, reported continuously (not flipping to -pi).
    np.testing.assert_allclose(obs.proprio[3:6], [0.0, np.pi, 0.0], atol=1e-4)
    assert obs.time == 0.0 and not obs.success
    assert re.fullmatch(r'touch the (red|green|blue|yellow) cube', obs.instruction)
    push = env.reset(task='push', seed=4)
    assert re.fullmatch(r'push the (red|green|blue|yellow) cube onto the (red|green|blue|yellow) pad',
                        push.instruction)
    assert env.max_steps == 120 and env.max_steps_for('touch') == 60
    obs = env.step([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert obs.time == pytest.approx(0.1) and obs.step == 1


def test_rotation_vector_stays_continuous_around_the_tool_down_pose(env):
    env.reset(task='touch', seed=0)
    previous = env.proprio()[3:6]
    for yaw in (0.1, -0.1, -0.1, 0.05):       # wobble across the half-turn
        obs = env.step([0, 0, 0, 0.08, 0.0, yaw, 1])
        assert np.linalg.norm(obs.proprio[3:6] - previous) < 0.3
        previous = obs.proprio[3:6]


def test_actions_are_clipped_to_documented_bounds(env):
    assert env.action_low.shape == env.action_high.shape == (7,)
    np.testing.assert_array_equal(env.action_high, [MAX_TRANSLATION_STEP] * 3 + [MAX_ROTATION_STEP] * 3 + [1.0])
    np.testing.assert_array_equal(env.action_low, -env.action_high)
    assert len(ACTION_NAMES) == 7
    clipped = env.clip_action([1.0, -1.0, 0.01, 2.0, -2.0, 0.05, 5.0])
    np.testing.assert_allclose(clipped, [0.03, -0.03, 0.01, 0.15, -0.15, 0.05, 1.0])
    with pytest.raises(ValueError):
        env.clip_action([0.0] * 6)
    with pytest.raises(ValueError):
        env.clip_action([np.nan] * 7)
    env.reset(task='touch', seed=1)
    before = env.tcp_pose()[0]
    env.step([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])          # asks for a metre, gets 3 cm
    moved = env.tcp_pose()[0] - before
    assert moved[0] == pytest.approx(MAX_TRANSLATION_STEP, abs=0.002)


def test_ik_tracks_small_translation_and_rotation_deltas(env):
    env.reset(task='touch', seed=5)
    for delta in ([0.01, -0.005, 0.008], [-0.004, 0.012, -0.01], [0.0, 0.0, 0.002]):
        before = env.tcp_pose()[0]
        env.step([*delta, 0, 0, 0, 1])
        np.testing.assert_allclose(env.tcp_pose()[0] - before, delta, atol=1e-3)
    position, rotation = env.tcp_pose()
    env.step([0, 0, 0, 0.0, 0.0, 0.1, 1])                  # yaw about world z at the TCP
    new_position, new_rotation = env.tcp_pose()
    np.testing.assert_allclose(new_position, position, atol=1e-3)
    achieved = rotation_vector_from_matrix(new_rotation @ rotation.T)
    np.testing.assert_allclose(achieved, [0, 0, 0.1], atol=5e-3)
    # Holding still stays still.
    env.step([0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(env.tcp_pose()[0], new_position, atol=5e-4)


def test_gripper_opens_and_closes(env):
    env.reset(task='touch', seed=6)
    obs = env.step([0, 0, 0, 0, 0, 0, -1.0])
    obs = env.step([0, 0, 0, 0, 0, 0, -1.0])
    assert obs.proprio[6] == pytest.approx(0.04, abs=3e-3) and obs.proprio[7] == pytest.approx(0.04, abs=3e-3)
    obs = env.step([0, 0, 0, 0, 0, 0, 1.0])
    obs = env.step([0, 0, 0, 0, 0, 0, 1.0])
    assert obs.proprio[6] < 3e-3 and obs.proprio[7] < 3e-3


@pytest.mark.parametrize('task', TASK_KINDS)
def test_expert_succeeds(task):
    with TabletopEnv(render_images=False) as env:
        expert = ScriptedExpert(env)
        for seed in (0, 1, 2):
            obs = env.reset(task=task, seed=seed)
            expert.reset(seed=seed)
            speeds = []
            for _ in range(env.max_steps):
                obs = env.step(expert.act(obs))
                speeds.append(np.linalg.norm(obs.tcp_linear_velocity))
                if obs.success:
                    break
            assert obs.success, f'{task} seed {seed}: {obs.instruction}'
            # Fast far away, slow at the end.
            assert max(speeds) > 0.12 and speeds[-1] < 0.035


def test_success_is_judged_from_the_simulator_state(env):
    env.render_images = False
    try:
        obs = env.reset(task='push', seed=3)
        assert not obs.success and not env.cube_on_pad(env.task.target_cube, env.task.target_pad)
        # Teleporting the cube onto the pad (at rest) is a success; the state decides.
        slot = env.task.cube_colours.index(env.task.target_cube)
        address = env._cube_qpos[slot]
        env.data.qpos[address:address + 2] = env.target_pad_position()[:2] + [0.01, -0.01]
        env.data.qvel[:] = 0.0
        obs = env.step([0, 0, 0, 0, 0, 0, 1])
        assert obs.success
    finally:
        env.render_images = True


def test_a_fast_jab_fails_the_touch_but_a_slow_approach_succeeds():
    with TabletopEnv(render_images=False) as env:
        for gentle in (False, True):
            obs = env.reset(task='touch', seed=9)
            expert = ScriptedExpert(env)
            for _ in range(env.max_steps):
                action = expert.act(obs)
                if expert.phase == 'descend' and not gentle:
                    # Straight down at full speed to 1 cm below the top face.
                    cube, tcp = env.target_cube_position(), env.tcp_pose()[0]
                    goal = np.array([cube[0], cube[1], cube[2] + CUBE_HALF - 0.01])
                    action[:3] = np.clip(goal - tcp, -0.025, 0.025)
                obs = env.step(action)
                if obs.success:
                    break
            assert obs.success == gentle
            assert env.hard_hit == (not gentle)


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        vector = rng.normal(size=3)
        vector *= rng.uniform(0.0, 3.0) / np.linalg.norm(vector)
        np.testing.assert_allclose(rotation_vector_from_matrix(rotation_matrix_from_vector(vector)), vector,
                                   atol=1e-9)
    np.testing.assert_allclose(rotation_matrix_from_vector([0, np.pi, 0]), HOME_TCP_ROTATION, atol=1e-12)
