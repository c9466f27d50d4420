"""The bundled policies load, are small, and solve closed-loop episodes of the simulated suite."""
import numpy as np
import pytest

from vla_prune_ros.control.controller import CoarseFineController
from vla_prune_ros.evaluation import episode_plan, run_episode, sim_controller_config
from vla_prune_ros.paths import DEFAULT_POLICY, LIGHTVLA_POLICY
from vla_prune_ros.control.kinematics import EndEffectorVelocity
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.sim.env import TabletopEnv

# Ten fixed touch scenes, chosen before the policies were trained and never tuned on. The bundled
# policies are still weak (about 58 % of touch episodes, almost no push; benchmarks/eval_sim.md), so this
# guards what they do today, not the 8-of-10 target, which they do not reach.
SHIPPED_EPISODES = episode_plan(['touch'], 10, 5150)
SHIPPED_MIN_SOLVED = 2   # measured (DAgger bundle): default 4 of 10, lightvla 3 of 10


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


@pytest.mark.parametrize('directory, method', [(DEFAULT_POLICY, 'none'), (LIGHTVLA_POLICY, 'lightvla')])
def test_shipped_policy_solves_fixed_touch_episodes(directory, method):
    policy = VLAPolicy.from_checkpoint(directory, method=method)
    with TabletopEnv() as env:
        kinematics = EndEffectorVelocity(env.urdf_xml, env.tcp_frame, [f'joint{i}' for i in range(1, 7)])
        results = [run_episode(env, policy, kinematics, CoarseFineController(sim_controller_config()),
                               task, seed, execute_steps=8) for task, seed in SHIPPED_EPISODES]
    solved = [(r.task, r.seed) for r in results if r.success]
    assert len(solved) >= SHIPPED_MIN_SOLVED, f'{method}: solved only {solved}'
