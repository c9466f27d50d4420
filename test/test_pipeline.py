"""collect -> train -> load -> closed-loop episode, and replay of a bag recorded from the live simulator."""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from vla_prune_ros.data.demonstrations import load_episodes, read_meta
from vla_prune_ros.commands.train import add_arguments as train_arguments
from vla_prune_ros.sim.collect import collect
from vla_prune_ros.training import native_bf16, train


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp('demos')
    summary = collect(out, episodes=2, seed=7)
    return out, summary


def test_collect_writes_the_documented_format(demos):
    out, summary = demos
    meta = read_meta(out)
    assert meta['camera_names'] == ['primary', 'wrist'] and len(meta['action_names']) == 7
    _, episodes = load_episodes(out, successful_only=False)
    assert len(episodes) == 2 and summary['successes'] == sum(e.success for e in episodes)
    for episode in episodes:
        steps = len(episode)
        assert episode.frames['primary'].shape == (steps, 128, 128, 3) and episode.frames['primary'].dtype == np.uint8
        assert episode.proprio.shape == (steps, 8) and episode.actions.shape == (steps, 7)
        assert episode.instruction.startswith(('touch the', 'push the'))


def test_frames_resized_while_loading_equal_those_resized_after(demos):
    """Training reads demonstrations at the model's size (the raw frames never all sit in memory);
    what it gets must be exactly what resizing the loaded frames gives."""
    from vla_prune_ros.model.processing import prepare_image
    out, _ = demos
    _, raw = load_episodes(out, successful_only=False)
    _, small = load_episodes(out, successful_only=False, frame_size=56)
    for before, after in zip(raw, small):
        for name, frames in before.frames.items():
            assert after.frames[name].shape == (len(frames), 56, 56, 3)
            expected = np.stack([prepare_image(frame, 56, center_crop=False) for frame in frames])
            assert np.array_equal(after.frames[name], expected)


def small_batches(demos):
    """Batches over the fixture's demonstrations at 56 px, for the sampling tests."""
    from vla_prune_ros.data.demonstrations import dataset_statistics
    from vla_prune_ros.model.configuration_vla import OFT_PROMPT
    from vla_prune_ros.model.tokenizer import build_word_tokenizer, prompt_words
    from vla_prune_ros.training import Batches, sim_small_config
    out, _ = demos
    meta, episodes = load_episodes(out, successful_only=False, frame_size=56)
    tokenizer = build_word_tokenizer(prompt_words(OFT_PROMPT, sorted({e.instruction for e in episodes})))
    config = sim_small_config(len(tokenizer), dataset_statistics(episodes), meta['camera_names'],
                              meta['action_names'], image_size=56)
    return Batches(episodes, config, tokenizer, seed=0)


def test_batches_draw_by_their_sample_weights(demos):
    """With ``sample_weights`` all on one frame, every sample is that frame (its proprio); uniform
    sampling over the same data gives several."""
    batches = small_batches(demos)
    assert len({tuple(row) for row in batches.sample(16, 'cpu')['proprio'].tolist()}) > 1
    chosen = len(batches) // 2
    weights = np.zeros(len(batches))
    weights[chosen] = 1.0
    batches.sample_weights = weights
    episode, t = batches.index[chosen]
    proprio = batches.sample(16, 'cpu')['proprio'].numpy()
    assert np.array_equal(proprio, np.repeat(batches.proprio[episode][t][None], 16, axis=0))


def test_far_target_weighting_draws_far_samples_that_much_more_often(demos):
    """``weight_far_targets(w)``: the probability mass on far samples is w times their uniform share,
    relative to the near ones; the far set is the targets over FAR_TARGET_MM from the TCP."""
    from vla_prune_ros.data.demonstrations import FAR_TARGET_MM
    batches = small_batches(demos)
    far = np.array([np.linalg.norm(batches.privileged[e][t][:2]) * 1000 > FAR_TARGET_MM for e, t in batches.index])
    assert 0 < far.sum() < len(far)
    batches.weight_far_targets(4.0)
    weights = batches.sample_weights
    assert np.isclose(weights.sum(), 1.0)
    assert np.allclose(weights[far] / weights[~far].max(), 4.0) and np.allclose(weights[~far], weights[~far][0])


def test_a_time_capped_lightvla_run_still_anneals_its_noise_to_zero(demos, tmp_path):
    out, _ = demos
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parser.parse_args(['--data', str(out), '--out', str(tmp_path / 'capped'), '--steps', '100000',
                              '--batch-size', '2', '--method', 'lightvla', '--image-size', '56',
                              '--max-minutes', '0.05'])
    train(args)
    record = json.loads((tmp_path / 'capped' / 'training_args.json').read_text())
    assert record['steps_done'] < 100000
    assert record['noise_scale_first_last'] == [1.0, 0.0]


def test_bf16_is_used_only_where_the_cpu_computes_it_natively():
    """Emulated bf16 made a step ~10x slower on an AVX2-only EPYC, so --bf16 needs the CPU's bf16 flags."""
    avx2_only = 'flags\t\t: fpu sse sse2 avx avx2 fma f16c\n'
    assert not native_bf16(False, avx2_only)
    assert not native_bf16(False, avx2_only.replace('avx2', 'avx2 avx512f avx512bw'))
    assert native_bf16(False, avx2_only.replace('avx2', 'avx2 avx512f avx512_bf16'))
    assert native_bf16(False, avx2_only.replace('avx2', 'avx2 amx_bf16 amx_tile'))


def test_collect_train_load_and_run_an_episode(demos, tmp_path):
    out, _ = demos
    checkpoint = tmp_path / 'policy'
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parser.parse_args(['--data', str(out), '--out', str(checkpoint), '--steps', '3',
                                      '--batch-size', '4', '--method', 'lightvla', '--image-size', '56'])
    train(args)
    record = json.loads((checkpoint / 'training_args.json').read_text())
    assert np.isfinite(record['final_loss']) and record['episodes'] == 2
    assert record['noise_scale_first_last'] == [1.0, 0.0]     # LightVLA's selection noise annealed 1 -> 0

    from vla_prune_ros.control.controller import CoarseFineController
    from vla_prune_ros.evaluation import run_episode
    from vla_prune_ros.control.kinematics import EndEffectorVelocity
    from vla_prune_ros.policy import VLAPolicy
    from vla_prune_ros.sim.env import TabletopEnv
    policy = VLAPolicy.from_checkpoint(checkpoint, method='lightvla')
    assert policy.config.vision.image_size == 56
    with TabletopEnv() as env:
        kinematics = EndEffectorVelocity(env.urdf_xml, 'tool0', [f'joint{i}' for i in range(1, 7)])
        result = run_episode(env, policy, kinematics, CoarseFineController(), 'touch', 5, execute_steps=8)
    assert result.inferences >= 1 and result.steps >= 1
    assert all(0 < t <= policy.config.num_visual_tokens + 100 for t in result.tokens)


def test_replay_of_a_bag_recorded_from_the_simulator(tmp_path):
    """The simulator node publishes; this process records a real MCAP bag; replay compares methods."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from vla_prune_ros.data.rosbag import BagRecorder
    import argparse
    from vla_prune_ros.commands.replay import add_arguments as replay_arguments
    from vla_prune_ros.replay import replay
    from model_fixtures import tiny_model_and_tokenizer
    from vla_prune_ros.model.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_and_tokenizer(instructions=['touch the red cube'])
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / 'tiny')
    sim = subprocess.Popen([sys.executable, '-m', 'vla_prune_ros.sim.sim_node'], env=dict(os.environ),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bag = tmp_path / 'bag'
    rclpy.init()
    try:
        node = rclpy.create_node('replay_test_recorder')
        recorder = BagRecorder(node, bag, topics=['/camera/primary/image_raw', '/camera/wrist/image_raw',
                                                  '/joint_states', '/robot_description'], discovery_timeout=30)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        assert recorder.start() == []          # waits for the simulator's topics to appear
        end = time.time() + 3.0
        while time.time() < end:
            executor.spin_once(timeout_sec=0.05)
        counts = recorder.stop()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        sim.terminate()
        sim.wait(timeout=10)
    assert counts['/camera/primary/image_raw'] >= 10 and counts['/joint_states'] >= 10

    replay_parser = argparse.ArgumentParser()
    replay_arguments(replay_parser)
    args = replay_parser.parse_args([str(bag), '--methods', 'none,specprune,lightvla', '--checkpoint',
                                       str(checkpoint), '--instruction', 'touch the red cube', '--every', '4'])
    args.command = 'vla-prune replay'
    report = replay(args)
    rows = report['methods']
    assert report['meta']['observations'] >= 2
    assert rows['none']['action_deviation_mean'] == 0.0 and rows['none']['flops_ratio'] == 1.0
    assert rows['lightvla']['flops_ratio'] < 1.0 and rows['lightvla']['tokens_kept'] < rows['none']['tokens_kept']
    for row in rows.values():
        assert np.isfinite(row['action_deviation_mean']) and len(row['action_deviation']) == 7
