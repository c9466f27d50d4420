"""The bundled default policy loads, is small, and completes easy episodes of the simulated suite."""
import numpy as np
import pytest

from vla_prune_ros.control.controller import CoarseFineController
from vla_prune_ros.evaluation import run_episode, sim_controller_config
from vla_prune_ros.paths import DEFAULT_POLICY, LIGHTVLA_POLICY
from vla_prune_ros.control.kinematics import EndEffectorVelocity
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv

EASY_TOUCH_SEEDS = (6, 16)    # seeds of `vla-prune eval` (seed 0) that the shipped policy solves


@pytest.mark.parametrize('directory', [DEFAULT_POLICY, LIGHTVLA_POLICY])
def test_bundled_policy_is_a_small_self_contained_checkpoint(directory):
    files = {p.name for p in directory.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'dataset_statistics.json'} <= files
    assert sum(p.stat().st_size for p in directory.iterdir()) < 20 * 2**20
    policy = VLAPolicy.from_checkpoint(directory)
    config = policy.config
    assert config.camera_names == ['primary', 'wrist'] and (config.chunk_len, config.action_dim) == (8, 7)
    frames = [np.zeros((128, 128, 3), np.uint8)] * 2
    out = policy.infer(frames, np.zeros(8), 'touch the red cube')
    assert out.actions.shape == (8, 7) and np.all(np.isfinite(out.actions))


def test_default_policy_completes_an_easy_episode():
    policy = VLAPolicy.from_checkpoint(DEFAULT_POLICY)
    with TabletopEnv() as env:
        kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, [f'joint{i}' for i in range(1, 7)])
        results = [run_episode(env, policy, kinematics, CoarseFineController(sim_controller_config()),
                               'touch', seed, execute_steps=8) for seed in EASY_TOUCH_SEEDS]
    assert any(r.success for r in results), [(r.seed, r.steps) for r in results]
