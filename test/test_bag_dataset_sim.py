"""From the robot's own recording to a running fine-tuned policy, over real DDS.

``vla_prune_sim`` runs as a process; this test drives it with the scripted expert: for each
episode it resets the scene over ``reset_episode``, announces the instruction on
``/instruction`` and publishes the expert's whole episode as one ``ActionChunk``, which the
simulator executes step by step at its ``dt`` (the expert's actions come from an identical
simulator in this process, reset to the same task and seed). ``vla-prune record`` records it
all into a real MCAP bag.

* The derived actions are checked against the expert's logged ones. The simulator does not move
  the TCP exactly as commanded: each step solves IK (damped least squares, few iterations) and
  servos track a ramp, so the measured motion differs from the command by the simulator's own
  tracking error. That error is measured here on the same episodes (MuJoCo's TCP pose before
  and after each step of the in-process simulator); the derived actions must agree with the
  commands within it, plus 1e-4 (m or rad) for what the DDS run adds: float32 storage,
  pinocchio's FK against MuJoCo's, and the few hold steps the DDS simulator runs before a chunk
  arrives. They must also agree with that measured motion itself within 1e-4.
* The loop: the same bag converted, a tiny checkpoint fine-tuned with LightVLA for a few steps,
  loaded by ``vla_prune_node``, one goal over DDS.
"""
import sys
import time

import numpy as np
import pinocchio as pin
import pytest
from std_msgs.msg import Bool, String

from ros_helpers import Process, RosClient, domain_id, make_checkpoint, ros_env, start_node, wait_until
from vla_prune_ros.bag_dataset import RecordingConfig, convert_bags
from vla_prune_ros.bag_dataset.convert import DELTA_POSE_ACTION_NAMES
from vla_prune_ros.data.demonstrations import load_episodes
from vla_prune_ros.data.rosbag import read_bag
from vla_prune_ros.paths import SIM_ROBOT_CONFIG
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert

DOMAIN = domain_id(__name__)
CONFIG = RecordingConfig.load(SIM_ROBOT_CONFIG)
EPISODES = (('touch', 3), ('push', 4))
IMAGE_SIZE = 64
DT = 0.1
HOLD_AFTER_SUCCESS = 3
TRANSPORT_MARGIN = 1e-4
# The simulator's steps are stamped when its timer fires; a starved simulator on a loaded machine fires
# late, so its stamps are allowed nearly half a step off the grid (a robot's sensors keep better time).
TOLERANCE = 0.45 * DT
MIN_COVERAGE = 0.6   # of a chunk's steps converted (late ticks beyond the tolerance are dropped, not filled)


def gripper_value(finger_positions) -> float:
    opening = (CONFIG.gripper_open_position - float(np.mean(finger_positions))) / \
        (CONFIG.gripper_open_position - CONFIG.gripper_closed_position)
    # the documented range: fingers pressed a hair past closed (contact) still read +1
    return float(np.clip(2.0 * opening - 1.0, -1.0, 1.0))


def expert_episode(env: TabletopEnv, expert: ScriptedExpert, task: str, seed: int):
    """(instruction, commanded actions, measured TCP motion per step) of the expert in ``env``."""
    obs = env.reset(task=task, seed=seed)
    expert.reset(seed=seed)
    commanded, measured, hold = [], [], HOLD_AFTER_SUCCESS
    for _ in range(env.max_steps):
        action = env.clip_action(expert.act(obs))
        position, rotation = env.tcp_pose()
        obs = env.step(action)
        new_position, new_rotation = env.tcp_pose()
        measured.append(np.concatenate([new_position - position, pin.log3(new_rotation @ rotation.T),
                                        [gripper_value(obs.joint_positions[6:8])]]))
        commanded.append(action)
        if obs.success:
            hold -= 1
            if hold < 0:
                break
    return env.instruction, np.array(commanded), np.array(measured)


@pytest.fixture(scope='module')
def recording(tmp_path_factory):
    from vla_prune_interfaces.msg import ActionChunk
    from vla_prune_interfaces.srv import ResetEpisode

    directory = tmp_path_factory.mktemp('from_bag')
    bag = directory / 'expert_bag'
    sim = Process([sys.executable, '-m', 'vla_prune_ros.sim.sim_node', '--ros-args', '-p',
                   f'image_size:={IMAGE_SIZE}', '-p', f'control_dt:={DT}'], ros_env(DOMAIN))
    client = RosClient(DOMAIN, name='expert_driver')
    recorder = None
    try:
        assert sim.wait_for('simulated arm ready', 120), sim.lines[-20:]
        instruction_publisher = client.node.create_publisher(String, 'instruction', 10)
        chunk_publisher = client.node.create_publisher(ActionChunk, 'action_chunk', 10)
        reset = client.node.create_client(ResetEpisode, 'reset_episode')
        ticks = []   # the simulator publishes task_done once per control step
        client.node.create_subscription(Bool, 'task_done', lambda msg: ticks.append(time.monotonic()), 100)
        topics = [*CONFIG.topics, '/action_chunk']
        recorder = Process([sys.executable, '-m', 'vla_prune_ros.cli', 'record', str(bag), '--topics', *topics,
                            '--discovery-timeout', '60'], ros_env(DOMAIN))
        assert recorder.wait_for(f'subscribed to {len(topics)} topic', 120), recorder.lines[-20:]
        # The recorder (and the simulator, and this client's own subscription) matched before anything is sent.
        wait_until(lambda: instruction_publisher.get_subscription_count() >= 1
                   and chunk_publisher.get_subscription_count() >= 3, 60, 'the recorder to match')
        assert reset.wait_for_service(timeout_sec=60)

        env = TabletopEnv(image_size=IMAGE_SIZE, control_dt=DT, render_images=False)
        expert = ScriptedExpert(env)
        episodes = []
        for task, seed in EPISODES:
            instruction, commanded, measured = expert_episode(env, expert, task, seed)
            response = client.wait_future(reset.call_async(ResetEpisode.Request(task=task, seed=seed)), 60)
            assert response.success and response.instruction == instruction
            instruction_publisher.publish(String(data=instruction))
            after_reset = len(ticks)
            wait_until(lambda: len(ticks) >= after_reset + 2, 30, 'the simulator to step the new scene')
            chunk = ActionChunk(dt=DT, dimension_names=list(DELTA_POSE_ACTION_NAMES), chunk_length=len(commanded),
                                action_dim=7, actions=commanded.reshape(-1).tolist(), method='expert')
            chunk.header.stamp = client.node.get_clock().now().to_msg()
            chunk_publisher.publish(chunk)
            published = len(ticks)
            wait_until(lambda: len(ticks) >= published + len(commanded) + 3, 30 + 2 * DT * len(commanded),
                       'the simulator to execute the chunk')
            episodes.append({'instruction': instruction, 'commanded': commanded, 'measured': measured})
        env.close()
        assert recorder.stop() == 0 and recorder.wait_for('^total: ', 30), recorder.lines[-20:]
        chunks = [(stamp * 1e-9, msg) for _, _, stamp, msg in read_bag(bag, topics=['/action_chunk'])]
        assert len(chunks) == len(EPISODES)
        for episode, (stamp, msg) in zip(episodes, chunks):
            np.testing.assert_allclose(np.array(msg.actions).reshape(-1, 7), episode['commanded'])
            episode['received'] = stamp
        data = directory / 'data'
        report = convert_bags([bag], data, CONFIG, tolerance=TOLERANCE)
        yield {'client': client, 'sim': sim, 'bag': bag, 'data': data, 'report': report, 'episodes': episodes,
               'directory': directory, 'reset': lambda task, seed: client.wait_future(
                   reset.call_async(ResetEpisode.Request(task=task, seed=seed)), 60)}
    finally:
        if recorder is not None:
            recorder.stop()
        client.close()
        sim.stop()


def derived_steps(report: dict, data) -> dict[str, list[tuple[float, np.ndarray]]]:
    """Instruction -> (grid time, derived action) of every converted step."""
    _, episodes = load_episodes(data)
    steps = {}
    for entry, episode in zip(report['episode_index'], episodes):
        for k, action in enumerate(episode.actions):
            steps.setdefault(entry['instruction'], []).append((entry['start_stamp'] + k * DT, action))
    return steps


def aligned(steps: list[tuple[float, np.ndarray]], received: float, commanded: np.ndarray):
    """(chunk step indices, derived actions) of the grid steps that executed the chunk.

    The simulator starts a chunk at its first control step after the chunk arrived; which grid
    step that is depends on where in its tick it arrived, so every grid step within two steps of
    the arrival is tried as the start and the one whose steps agree best is taken (a wrong start
    is off by a whole step of motion, centimetres; a right one by the tracking error).
    """
    best, best_error = None, np.inf
    for start, _ in steps:
        if not received - 2 * DT <= start <= received + 2 * DT:
            continue
        pairs = [(int(round((t - start) / DT)), action) for t, action in steps]
        pairs = [(j, action) for j, action in pairs if 0 <= j < len(commanded)]
        indices, derived = np.array([j for j, _ in pairs]), np.stack([action for _, action in pairs])
        enough = len(pairs) >= MIN_COVERAGE * len(commanded)
        error = np.abs(derived[:, :3] - commanded[indices, :3]).max() if enough else np.inf
        if error < best_error:
            best, best_error = (indices, derived), error
    return best


def test_derived_actions_match_the_experts_within_the_simulators_tracking_error(recording):
    steps = derived_steps(recording['report'], recording['data'])
    print('\nper-dimension |derived - commanded| (max, mean) and the allowance (simulator tracking error + '
          f'{TRANSPORT_MARGIN:g}):')
    for episode in recording['episodes']:
        commanded, measured = episode['commanded'], episode['measured']
        best = aligned(steps[episode['instruction']], episode['received'], commanded)
        assert best is not None, (f'fewer than {MIN_COVERAGE:.0%} of the {len(commanded)} chunk steps converted: '
                                  f"{recording['report']['bags'][0]}")
        indices, derived = best
        error = np.abs(derived - commanded[indices])
        tracking = np.abs(measured - commanded).max(axis=0)
        allowance = tracking + TRANSPORT_MARGIN
        print(f"  {episode['instruction']!r}: {len(indices)}/{len(commanded)} steps")
        for name, worst, mean, allowed in zip(DELTA_POSE_ACTION_NAMES, error.max(0), error.mean(0), allowance):
            print(f'    {name:<8} max {worst:.2e}  mean {mean:.2e}  allowed {allowed:.2e}')
        assert np.all(error.max(axis=0) <= allowance), (error.max(axis=0), allowance)
        np.testing.assert_allclose(derived, measured[indices], atol=TRANSPORT_MARGIN)


def test_record_convert_finetune_lightvla_and_run_one_goal(recording):
    directory, client = recording['directory'], recording['client']
    tiny = make_checkpoint(directory / 'tiny')
    checkpoint = directory / 'finetuned'
    train = Process([sys.executable, '-m', 'vla_prune_ros.cli', 'train', '--data', str(recording['data']),
                     '--init', str(tiny), '--method', 'lightvla', '--steps', '3', '--batch-size', '2', '--cpu',
                     '--threads', '1', '--checkpoint-minutes', '0', '--out', str(checkpoint)], ros_env(DOMAIN))
    assert train.wait(timeout=600) == 0, train.lines[-20:]
    assert (checkpoint / 'model.safetensors').is_file()
    node = start_node(DOMAIN, {'checkpoint': str(checkpoint), 'method': 'lightvla', 'device': 'cpu',
                               'torch_threads': 1, 'max_input_age': 3.0, 'stale_input_policy': 'wait'})
    try:
        client.wait_ready(120)
        client.wait_inputs_flowing(60)
        assert node.wait_for('ready: method lightvla', 60), node.lines[-20:]
        # A fresh scene: the last recorded one ended in success, which task_done would report at once.
        task, seed = EPISODES[0]
        assert recording['reset'](task, seed).success
        start = time.monotonic()
        accepted, result, _, _ = client.run_goal(recording['episodes'][0]['instruction'], max_chunks=1, wait=120)
        assert accepted and result.status == result.STATUS_CHUNK_LIMIT and result.chunks_executed == 1, result
        chunk = client.wait_for_message(client.chunks, start, lambda msg: msg.method == 'lightvla', timeout=10)
        assert chunk is not None and chunk.chunk_length * chunk.action_dim == len(chunk.actions)
    finally:
        assert node.stop() == 0, node.lines[-20:]
