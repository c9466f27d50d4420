"""vla_prune_node end to end, over real DDS between real processes.

A publisher process streams two cameras and the arm's joint states (joint 1 turning at a
constant rate, so the tool centre circles the base axis at a speed the test can compute);
the node process runs a tiny checkpoint with config/sim_robot.yaml; this process is the
action client, the parameter client and the subscriber of everything the node publishes.
"""
import math
import statistics
import time

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticStatus

from ros_helpers import (ARM_JOINTS, FINGER_JOINTS, FINGER_POSITION, HOME_JOINTS, JOINT1_SPEED, SIM_ROBOT_YAML,
                         RosClient, command, domain_id, launch_params_file, make_checkpoint, start_node,
                         start_publisher, tracebacks)
from vla_prune_ros import parameters as node_config
from vla_prune_ros.model.checkpoint import load_config

DOMAIN = domain_id(__name__)
CONTROL_DT = 0.02
INSTRUCTION = 'touch the red cube'
ROBOT = node_config.load_params_file(SIM_ROBOT_YAML)


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    directory = tmp_path_factory.mktemp('e2e')
    checkpoint = make_checkpoint(directory / 'tiny')
    # The parameters as the launch file resolves them (none.yaml + sim_robot.yaml + arguments),
    # written as a params file the way a launch description hands them to the node.
    # Generous max_input_age: staleness is tested in test_node_bad_input; here a loaded CI
    # machine stalling the node for a moment must not abort the goal under test.
    params_file = launch_params_file(directory, 'none', {'checkpoint': str(checkpoint),
                                                         'control_dt': str(CONTROL_DT), 'max_input_age': '3.0'})
    publisher = start_publisher(DOMAIN, rate=30.0, size=64)
    node = start_node(DOMAIN, {'device': 'cpu', 'torch_threads': 1, 'publish_joint_trajectory': True},
                      params_files=[params_file])
    client = RosClient(DOMAIN)
    try:
        client.wait_ready(90)
        client.wait_inputs_flowing()
        assert node.wait_for('ready: method none', 30), node.lines
        yield client, publisher, node, load_config(checkpoint)
    finally:
        client.close()
        assert node.stop() == 0, node.lines[-20:]    # Ctrl-C is a clean exit
        publisher.stop()
        assert not tracebacks(node.lines), tracebacks(node.lines)


def expected_tcp_speed() -> float:
    """|v| of tool0 while only joint 1 turns: joint-1 rate times the TCP's distance from the base axis."""
    import pinocchio as pin
    model = pin.buildModelFromXML(node_config.resolve_urdf(ROBOT))
    data = model.createData()
    q = pin.neutral(model)
    for name, value in zip(ARM_JOINTS + FINGER_JOINTS, HOME_JOINTS + [FINGER_POSITION] * 2):
        q[model.joints[model.getJointId(name)].idx_q] = value
    pin.framesForwardKinematics(model, data, q)
    x, y, _ = data.oMf[model.getFrameId('tool0')].translation
    return JOINT1_SPEED * math.hypot(x, y)


def test_goal_publishes_chunks_stats_feedback_and_ends_at_chunk_limit(system):
    client, _, _, config = system
    start = time.monotonic()
    accepted, result, status, feedback = client.run_goal(INSTRUCTION, max_chunks=3)
    assert accepted
    assert result.status == result.STATUS_CHUNK_LIMIT, result
    assert status == GoalStatus.STATUS_SUCCEEDED
    assert result.chunks_executed == 3 and 'max_chunks=3' in result.reason
    time.sleep(0.2)
    chunks, stats = client.since(client.chunks, start), client.since(client.stats, start)
    trajectories = client.since(client.trajectories, start)
    assert len(chunks) == len(stats) == len(trajectories) == len(feedback) == 3

    low, high = np.array(ROBOT['action_low']), np.array(ROBOT['action_high'])
    image_stamps = set(client.image_stamps)
    speed = expected_tcp_speed()
    for k, (chunk, stat, trajectory, fb) in enumerate(zip(chunks, stats, trajectories, feedback)):
        # The chunk: shape, names, bounds, and the stamp of the camera frames it was computed from.
        assert chunk.sequence == k and chunk.method == 'none' and chunk.dt == pytest.approx(CONTROL_DT)
        assert (chunk.chunk_length, chunk.action_dim) == (config.chunk_len, config.action_dim) == (8, 7)
        assert list(chunk.dimension_names) == ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
        actions = np.array(chunk.actions).reshape(8, 7)
        assert np.all(np.isfinite(actions)) and np.all(actions >= low) and np.all(actions <= high)
        assert chunk.header.frame_id == 'base_link'
        stamp = chunk.header.stamp.sec * 1_000_000_000 + chunk.header.stamp.nanosec
        assert stamp in image_stamps
        assert stat.header.stamp == chunk.header.stamp
        # Sync execution: the chunk is due at once, nothing dropped; the trajectory is stamped with its start.
        assert stat.execution == 'sync' and stat.dropped_steps == 0 and stat.blended_steps == 0
        assert trajectory.header.stamp == chunk.start_time == stat.start_time
        start_ns = chunk.start_time.sec * 1_000_000_000 + chunk.start_time.nanosec
        assert start_ns >= stamp + stat.total_time * 1e9 - 1e3
        # The stats of the same forward pass.
        assert stat.method == 'none' and stat.controller_mode == chunk.controller_mode == 'coarse'
        total = stat.tokens_total       # BOS + patches + proprio + prompt + action placeholders + stop
        assert stat.visual_tokens_total == config.num_visual_tokens
        assert total > config.num_visual_tokens + config.num_actions
        assert list(stat.layer_tokens) == [total] * config.llm['num_hidden_layers']
        assert stat.flops == stat.flops_unpruned > 0
        assert stat.total_time >= stat.vision_time + stat.llm_time + stat.head_time > 0
        # Measured end-effector velocity: the TCP circles the base axis.
        assert stat.ee_velocity_valid
        assert stat.ee_linear_speed == pytest.approx(speed, rel=0.02)
        assert stat.ee_angular_speed == pytest.approx(JOINT1_SPEED, rel=0.02)
        # Joint-space view of the same chunk.
        assert list(trajectory.joint_names) == list(chunk.dimension_names) and len(trajectory.points) == 8
        for step, point in enumerate(trajectory.points):
            assert point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 == pytest.approx(step * CONTROL_DT)
            np.testing.assert_allclose(point.positions, actions[step])
        assert fb.chunks_done == k + 1 and fb.tokens_kept == fb.tokens_total == total
        assert fb.controller_mode == 'coarse' and fb.ee_linear_speed == pytest.approx(speed, rel=0.02)
    assert result.mean_tokens_kept == stats[0].tokens_total
    assert result.mean_latency == pytest.approx(statistics.fmean(s.total_time for s in stats), rel=1e-6)


def test_live_method_switch_applies_at_the_next_inference(system):
    client = system[0]
    results = client.set_parameters({'method': 'specprune', 'specprune.dynamic_keep_ratio': 0.5})
    assert [r.successful for r in results] == [True, True], results
    assert client.get_parameters(['method', 'specprune.dynamic_keep_ratio']) == \
        {'method': 'specprune', 'specprune.dynamic_keep_ratio': 0.5}
    try:
        start = time.monotonic()
        accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=3)
        assert accepted and result.status == result.STATUS_CHUNK_LIMIT, result
        time.sleep(0.2)
        stats = client.since(client.stats, start)
        assert [s.method for s in stats] == ['specprune'] * 3
        for s in stats:
            assert s.stage_names and len(s.stage_names) == len(s.stage_tokens)
            assert all(n <= s.tokens_total for n in s.stage_tokens)
            assert s.flops <= s.flops_unpruned
        # Later inferences prune: fewer tokens than the unpruned sequence reach the LLM's last layer.
        assert min(s.layer_tokens[-1] for s in stats) < stats[0].tokens_total
        assert [c.method for c in client.since(client.chunks, start)] == ['specprune'] * 3
    finally:
        assert client.set_parameters({'method': 'none'})[0].successful
    start = time.monotonic()
    client.run_goal(INSTRUCTION, max_chunks=1)
    time.sleep(0.1)
    assert [s.method for s in client.since(client.stats, start)] == ['none']


@pytest.mark.parametrize('values, words', [
    ({'control_dt': -1.0}, ['control_dt', 'out of range']),
    ({'control_dt': 'fast'}, ['type']),
    ({'execute_steps': 0.5}, ['type']),
    ({'specprune.dynamic_keep_ratio': 0.0}, ['specprune.dynamic_keep_ratio', '(0, 1]']),
    ({'controller.fine_exit_speed': 0.01}, ['fine_exit_speed', 'hysteresis']),
    ({'action_low': [-1.0, -1.0]}, ['same length']),
    ({'execute_steps': 9}, ['chunk length 8']),
    ({'method': 'fastv'}, ['method', 'not one of']),
    ({'checkpoint': '/elsewhere'}, ['read-only']),
])
def test_bad_parameter_values_are_refused_with_a_reason(system, values, words):
    client = system[0]
    before = client.get_parameters(list(values))
    [result] = client.set_parameters(values)
    assert not result.successful
    for word in words:
        assert word in result.reason, result.reason
    assert client.get_parameters(list(values)) == before


def test_success_topic_ends_the_goal_succeeded(system):
    client, publisher = system[:2]
    start = time.monotonic()
    future = client.send_goal(INSTRUCTION)
    handle = client.wait_future(future, 10.0)
    assert handle.accepted
    assert client.wait_for_message(client.chunks, start, lambda c: c.sequence == 1), 'no second chunk'
    command(publisher, 'success')
    response = client.wait_future(handle.get_result_async(), 10.0)
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert response.result.status == response.result.STATUS_SUCCEEDED
    assert 'task_done' in response.result.reason and response.result.chunks_executed >= 2


def test_timeout_ends_the_goal(system):
    client = system[0]
    started = time.monotonic()
    accepted, result, status, _ = client.run_goal(INSTRUCTION, timeout=1.0)    # ~6 chunk periods
    elapsed = time.monotonic() - started
    assert accepted and result.status == result.STATUS_TIMEOUT and status == GoalStatus.STATUS_ABORTED
    assert 'timeout of 1' in result.reason and result.chunks_executed >= 1
    assert 1.0 <= elapsed < 4.0


def test_still_arm_switches_the_controller_to_fine(system):
    client, publisher = system[:2]
    command(publisher, 'joints still')
    try:
        time.sleep(0.2)
        start = time.monotonic()
        accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=5)
        assert accepted and result.status == result.STATUS_CHUNK_LIMIT
        time.sleep(0.1)
        stats = client.since(client.stats, start)
        # The first inference is coarse (the reset mode); once the arm has been still for
        # min_dwell_time the controller switches to fine, flushing the queued chunk.
        assert stats[0].controller_mode == 'coarse' and stats[-1].controller_mode == 'fine'
        assert all(s.ee_velocity_valid and s.ee_linear_speed < 1e-9 for s in stats)
    finally:
        command(publisher, 'joints moving')


def test_diagnostics_report_model_method_and_input_rates(system):
    client = system[0]
    # Published at 30 Hz; on a loaded 2-core machine the publisher or the node may briefly manage
    # less, so the node's figure is compared with the rate this client receives the same camera
    # at, over the next few diagnostics messages (1 Hz, 2 s windows), until they agree.
    deadline = time.monotonic() + 8.0
    while True:
        start = time.monotonic()
        message = client.wait_for_message(client.diagnostics, start, timeout=3.0)
        assert message is not None
        received = sum(1 for arrival in list(client.image_stamps.values()) if arrival > time.monotonic() - 2.0) / 2.0
        statuses = {s.name: s for s in message.status}
        inputs = {kv.key: kv.value for kv in statuses['/vla_prune_node: inputs'].values}
        reported = float(inputs['/camera/primary/image_raw rate_hz'])
        if reported == pytest.approx(received, rel=0.35) or time.monotonic() > deadline:
            break
    assert received > 5.0
    assert reported == pytest.approx(received, rel=0.35), inputs
    for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw', '/joint_states'):
        assert 5.0 < float(inputs[f'{topic} rate_hz']) < 45.0, inputs
    policy = {kv.key: kv.value for kv in statuses['/vla_prune_node: policy'].values}
    assert policy['model_loaded'] == 'true' and policy['method'] == 'none'
    assert float(policy['chunk_period_ms']) == pytest.approx(system[3].chunk_len * CONTROL_DT * 1e3)
    # An inference slower than the chunk it must cover is a warning.
    assert client.set_parameters({'control_dt': 0.001, 'execute_steps': 1}, atomically=True)[0].successful
    try:
        client.run_goal(INSTRUCTION, max_chunks=2)
        start = time.monotonic()
        slow = client.wait_for_message(client.diagnostics, start,
                                       lambda m: m.status[0].level == DiagnosticStatus.WARN, timeout=3.0)
        assert slow is not None and 'exceeds the chunk period 1.0 ms' in slow.status[0].message
    finally:
        assert client.set_parameters({'control_dt': CONTROL_DT, 'execute_steps': 0}, atomically=True)[0].successful


def test_node_overhead(system):
    """Image arrival -> chunk published, minus the model call, reported by the lead.

    Inside the node (from /diagnostics): frame conversion + (chunk published - inputs taken) - model
    call. Seen from outside (this process): chunk received - the same frame received - model call;
    this also holds the frame's wait for the next inference (up to a frame period, 33 ms) and two
    DDS hops.
    """
    client = system[0]
    assert client.set_parameters({'execute_steps': 1})[0].successful   # infer back to back
    try:
        start = time.monotonic()
        accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=40)
        assert accepted and result.status == result.STATUS_CHUNK_LIMIT
        time.sleep(0.2)
    finally:
        assert client.set_parameters({'execute_steps': 0})[0].successful
    chunks = [(t, c) for t, c in client.chunks if t >= start]
    stats = {(s.header.stamp.sec, s.header.stamp.nanosec): s for s in client.since(client.stats, start)}
    outside, seen = [], set()
    for received, chunk in chunks:
        stamp = chunk.header.stamp.sec * 1_000_000_000 + chunk.header.stamp.nanosec
        if stamp in seen:      # back-to-back inferences may reuse a frame; count its first chunk only
            continue
        seen.add(stamp)
        arrived = client.image_stamps.get(stamp)
        stat = stats.get((chunk.header.stamp.sec, chunk.header.stamp.nanosec))
        if arrived is not None and stat is not None:
            outside.append(received - arrived - stat.total_time)
    assert len(outside) >= 20
    diagnostics = client.wait_for_message(client.diagnostics, time.monotonic(), timeout=3.0)
    policy = {kv.key: kv.value for kv in diagnostics.status[0].values}
    inside_p50, inside_p95 = float(policy['node_overhead_p50_ms']), float(policy['node_overhead_p95_ms'])
    outside_ms = np.array(outside) * 1e3
    print(f'\nnode overhead (inside the node, image conversion + publish path, excluding the model call): '
          f'p50 {inside_p50:.2f} ms, p95 {inside_p95:.2f} ms')
    print(f'image arrival -> chunk received, minus the model call, seen from another process: '
          f'p50 {np.percentile(outside_ms, 50):.2f} ms, p95 {np.percentile(outside_ms, 95):.2f} ms '
          f'({len(outside)} chunks; includes up to one frame period of 33 ms waiting for the next inference)')
    # Reported and consistent; how fast is a benchmark's question (benchmarks/intake.*), not a test's:
    # on a loaded machine the same code measured 29 ms here against 2-5 ms idle.
    assert 0.0 < inside_p50 <= inside_p95 and np.isfinite(inside_p95)
    # A model time in the wrong unit or from the wrong inference turns most of these negative. One may be
    # negative legitimately: under load this process can take the frame in after the node has used it.
    assert np.all(np.isfinite(outside_ms)) and np.median(outside_ms) > 0.0
