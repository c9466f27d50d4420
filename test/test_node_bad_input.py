"""vla_prune_node under bad input, over real DDS between real processes.

Broken images are dropped with a warning naming the topic; unknown velocity sends the
controller to fine; stale or missing cameras abort the goal with a reason (or are waited
for); empty instructions are rejected; goal storms and cancels leave exactly one goal; a
model producing NaN never gets a chunk published; a missing or corrupt checkpoint ends
the process with one clear line.

The publisher starts with the wrist camera off, so the first test sees a camera that never
published; later tests turn it on and change what the publisher sends through its stdin.
"""
import math
import shutil
import time

import pytest
from action_msgs.msg import GoalStatus

from ros_helpers import (RosClient, Process, command, domain_id, make_checkpoint, ros_env, start_node,
                         start_publisher, tracebacks)

DOMAIN = domain_id(__name__)
INSTRUCTION = 'touch the red cube'
PRIMARY, WRIST, JOINTS = '/camera/primary/image_raw', '/camera/wrist/image_raw', '/joint_states'
MAX_INPUT_AGE = 0.5
NODE_PARAMS = {'device': 'cpu', 'control_dt': 0.02, 'max_input_age': MAX_INPUT_AGE, 'torch_threads': 1}


def bad_checkpoint_process(checkpoint) -> Process:
    import sys
    return Process([sys.executable, '-m', 'vla_prune_ros.node', '--ros-args', '-p', f'checkpoint:={checkpoint}'],
                   ros_env(DOMAIN))


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_input')
    good = make_checkpoint(root / 'tiny')
    nan = make_checkpoint(root / 'nan_head', nan_head=True)
    corrupt = root / 'corrupt'
    shutil.copytree(good, corrupt)
    weights = corrupt / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    bad_json = root / 'bad_json'
    shutil.copytree(good, bad_json)
    (bad_json / 'config.json').write_text('{"camera_names": [')
    failing = {'missing': bad_checkpoint_process(root / 'does_not_exist'),
               'corrupt': bad_checkpoint_process(corrupt), 'bad_json': bad_checkpoint_process(bad_json)}
    # config.json of the wrong shape or types: one line naming the file and the field, never a traceback.
    import json
    damaged = {'null_config': b'null', 'binary_config': bytes(range(256)) * 4,
               'vision_string': json.dumps({**json.loads((good / 'config.json').read_text()),
                                            'vision': 'siglip'}).encode()}
    for case, content in damaged.items():
        shutil.copytree(good, root / case)
        (root / case / 'config.json').write_bytes(content)
        failing[case] = bad_checkpoint_process(root / case)

    publisher = start_publisher(DOMAIN, rate=30.0, size=64, wrist=False)
    node = start_node(DOMAIN, {'checkpoint': str(good), **NODE_PARAMS})
    # The NaN model runs in namespace /nan on the same (absolute) sensor topics.
    nan_node = start_node(DOMAIN, {'checkpoint': str(nan), **NODE_PARAMS, 'camera_topics': [PRIMARY, WRIST],
                                   'joint_states_topic': JOINTS}, ros_args=['-r', '__ns:=/nan'])
    client = RosClient(DOMAIN)
    nan_client = RosClient(DOMAIN, 'test_nan_client', namespace='nan')
    try:
        client.wait_ready(90)
        nan_client.wait_ready(90)
        # The wrist camera is off on purpose; the first test needs the primary frames and joint states in.
        client.wait_topics_flowing([PRIMARY, JOINTS])
        yield client, publisher, node, nan_client, failing
    finally:
        client.close()
        nan_client.close()
        codes = node.stop(), nan_node.stop()
        publisher.stop()
        for process in failing.values():
            process.stop()
        # A joined string: pytest prints it whole, where a list's repr is cut short.
        assert codes == (0, 0), '\n'.join([f'exit codes (node, nan node) {codes}', '--- node:', *node.lines[-40:],
                                            '--- nan node:', *nan_node.lines[-40:]])
        for process in (node, nan_node):
            assert not tracebacks(process.lines), tracebacks(process.lines)


def restore(client, publisher):
    """Back to good input: both cameras on, good frames with current stamps, the arm moving; returns
    once frames sent after the change have arrived (a loaded machine may delay them)."""
    for line in ('camera 1 on', 'image 0 good', 'age 0', 'joints moving'):
        command(publisher, line)
    client.settle()


def failed_goal(client, **goal):
    accepted, result, status, _ = client.run_goal(INSTRUCTION, **goal)
    assert accepted
    assert result.status == result.STATUS_FAILED and status == GoalStatus.STATUS_ABORTED, result
    return result


def good_goal(client, chunks=1):
    accepted, result, _, _ = client.run_goal(INSTRUCTION, max_chunks=chunks)
    assert accepted and result.status == result.STATUS_CHUNK_LIMIT, result
    return result


def test_camera_that_never_published_aborts_the_goal(system):
    client, publisher, _, _, _ = system
    result = failed_goal(client, max_chunks=1)
    assert result.reason == f'stale or missing input: {WRIST}: no valid image received yet'
    assert result.chunks_executed == 0
    command(publisher, 'camera 1 on')
    client.settle()
    good_goal(client)


@pytest.mark.parametrize('mode, error', [
    ('bad_encoding', "unsupported image encoding '32FC1'"),
    ('zero_size', 'image size must be positive'),
    ('truncated', 'image data has 6144 bytes, expected at least step*height = 192*64 = 12288'),
    ('bad_step', 'step 191 is smaller than width*channels = 64*3 = 192'),
])
def test_broken_frames_are_dropped_with_a_warning_naming_the_topic(system, mode, error):
    client, publisher, node, _, _ = system
    restore(client, publisher)
    warnings = node.count(f'{PRIMARY}: dropped frame: ')
    command(publisher, f'image 0 {mode}')
    try:
        line = node.wait_for(f'{PRIMARY}: dropped frame: ', timeout=5.0, start=warnings)
        assert line is not None and '[WARN]' in line and error in line, node.lines[-5:]
        time.sleep(MAX_INPUT_AGE + 0.1)      # the last good frame is now stale
        result = failed_goal(client, max_chunks=1)
        assert result.reason.startswith(f'stale or missing input: {PRIMARY}: latest image is '), result.reason
        assert node.alive()
    finally:
        command(publisher, 'image 0 good')
    client.settle()
    good_goal(client)


def test_old_stamps_abort_with_the_age_in_the_reason(system):
    client, publisher, _, _, _ = system
    restore(client, publisher)
    command(publisher, 'age 2.0')
    try:
        client.settle()
        result = failed_goal(client, max_chunks=1)
        assert 'latest image is 2.' in result.reason and f'(max_input_age {MAX_INPUT_AGE} s)' in result.reason
    finally:
        command(publisher, 'age 0')


def test_wait_policy_waits_for_fresh_input_then_gives_up(system):
    client, publisher, _, _, _ = system
    restore(client, publisher)
    assert all(r.successful for r in client.set_parameters({'stale_input_policy': 'wait', 'wait_timeout': 5.0}))
    try:
        command(publisher, 'camera 1 off')
        time.sleep(MAX_INPUT_AGE + 0.1)
        started = time.monotonic()
        future = client.send_goal(INSTRUCTION, max_chunks=1)
        handle = client.wait_future(future, 10.0)
        time.sleep(1.0)
        command(publisher, 'camera 1 on')
        response = client.wait_future(handle.get_result_async(), 10.0)
        assert response.result.status == response.result.STATUS_CHUNK_LIMIT, response.result
        assert 1.0 <= time.monotonic() - started < 5.0
        # Never fresh within wait_timeout: FAILED, and the reason says it waited.
        assert client.set_parameters({'wait_timeout': 0.5})[0].successful
        command(publisher, 'camera 1 off')
        time.sleep(MAX_INPUT_AGE + 0.1)
        started = time.monotonic()
        result = failed_goal(client, max_chunks=1)
        assert 0.5 <= time.monotonic() - started < 3.0
        assert WRIST in result.reason and '(waited wait_timeout 0.5 s)' in result.reason
    finally:
        command(publisher, 'camera 1 on')
        client.set_parameters({'stale_input_policy': 'abort', 'wait_timeout': 2.0})


@pytest.mark.parametrize('mode, why', [
    ('nan', 'NaN'),
    ('renamed', "'joint1' missing"),   # names of another robot
    ('missing', 'missing'),            # joint6 comes in a message of its own
])
def test_unknown_velocity_sends_the_controller_to_fine(system, mode, why):
    client, publisher, node, _, _ = system
    restore(client, publisher)
    warnings = node.count(f'{JOINTS}: end-effector velocity unknown')
    # The proprio keeps the last good joint positions while they are younger than max_input_age.
    assert client.set_parameters({'max_input_age': 5.0})[0].successful
    command(publisher, f'joints {mode}')
    try:
        client.settle()
        start = time.monotonic()
        good_goal(client, chunks=2)
        time.sleep(0.1)
        stats = client.since(client.stats, start)
        assert len(stats) == 2
        for s in stats:
            assert s.controller_mode == 'fine' and not s.ee_velocity_valid and math.isnan(s.ee_linear_speed)
        line = node.wait_for(f'{JOINTS}: end-effector velocity unknown', timeout=5.0, start=warnings)
        assert line is not None and '[WARN]' in line and why in line and 'falls to fine' in line, line
    finally:
        command(publisher, 'joints moving')
        client.set_parameters({'max_input_age': MAX_INPUT_AGE})


def test_extra_unknown_joint_is_ignored_with_a_warning(system):
    client, publisher, node, _, _ = system
    restore(client, publisher)
    warnings = node.count(f'{JOINTS}: unknown joints ignored: .*conveyor_joint')
    command(publisher, 'joints extra')
    try:
        client.settle()
        start = time.monotonic()
        good_goal(client, chunks=1)
        time.sleep(0.1)
        [stats] = client.since(client.stats, start)
        assert stats.ee_velocity_valid and stats.controller_mode == 'coarse' and stats.ee_linear_speed > 0.05
        assert node.wait_for(f'{JOINTS}: unknown joints ignored: .*conveyor_joint', 5.0, start=warnings)
    finally:
        command(publisher, 'joints moving')


def test_joint_states_under_other_names_abort_for_want_of_proprio(system):
    """With the simulator's ee_pose proprio the node needs the arm's joint positions; joint states
    of another robot leave them missing, and once the last good ones are stale the goal fails."""
    client, publisher, _, _, _ = system
    restore(client, publisher)
    command(publisher, 'joints renamed')
    try:
        time.sleep(MAX_INPUT_AGE + 0.1)
        result = failed_goal(client, max_chunks=1)
        assert result.reason.startswith(f"stale or missing input: {JOINTS}: position of joint 'joint1' is "), \
            result.reason
    finally:
        command(publisher, 'joints moving')


def test_empty_instruction_is_rejected(system):
    client = system[0]
    for instruction in ('', '   '):
        accepted, _, _, _ = client.run_goal(instruction, max_chunks=1)
        assert not accepted


def test_goal_storm_leaves_exactly_one_goal_then_cancel(system):
    """Ten goals in a burst: each accepted goal preempts the one before it, so all but one end
    PREEMPTED (goal state aborted) with a reason. Which one survives is the last the node
    accepted: the action server's reentrant group may accept a burst slightly out of order."""
    client, publisher, node, _, _ = system
    restore(client, publisher)
    futures = [client.send_goal(f'{INSTRUCTION} {i}') for i in range(10)]
    handles = [client.wait_future(future, 10.0) for future in futures]
    assert all(handle.accepted for handle in handles)
    results = [handle.get_result_async() for handle in handles]
    deadline = time.monotonic() + 10.0
    while sum(result.done() for result in results) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    finished = [(handle, result.result()) for handle, result in zip(handles, results) if result.done()]
    running = [handle for handle, result in zip(handles, results) if not result.done()]
    assert len(finished) == 9 and len(running) == 1
    for _, response in finished:
        assert response.status == GoalStatus.STATUS_ABORTED
        assert response.result.status == response.result.STATUS_PREEMPTED
        assert response.result.reason == 'preempted by a newer goal'
    [survivor] = running
    start = time.monotonic()
    assert client.wait_for_message(client.chunks, start, timeout=5.0), 'the surviving goal does not run'
    # The client learns the goal's state from the status topic, which may lag under load.
    deadline = time.monotonic() + 5.0
    while survivor.status != GoalStatus.STATUS_EXECUTING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert survivor.status == GoalStatus.STATUS_EXECUTING
    # Cancel it while it runs.
    client.wait_future(survivor.cancel_goal_async(), 5.0)
    response = client.wait_future(survivor.get_result_async(), 10.0)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.status == response.result.STATUS_CANCELED and response.result.chunks_executed >= 1
    assert node.alive()
    good_goal(client)


def test_cancel_right_after_accept_stops_publishing(system):
    client, publisher = system[:2]
    restore(client, publisher)
    for _ in range(3):
        handle = client.wait_future(client.send_goal(INSTRUCTION), 10.0)
        client.wait_future(handle.cancel_goal_async(), 5.0)     # lands in or before the first inference
        response = client.wait_future(handle.get_result_async(), 10.0)
        assert response.status == GoalStatus.STATUS_CANCELED
        assert response.result.status == response.result.STATUS_CANCELED
        ended = time.monotonic()
        time.sleep(0.3)
        assert client.since(client.chunks, ended) == []


def test_non_finite_actions_are_never_published(system):
    client, publisher, _, nan_client, _ = system
    restore(client, publisher)
    accepted, result, status, feedback = nan_client.run_goal(INSTRUCTION, max_chunks=2)
    assert accepted and result.status == result.STATUS_FAILED and status == GoalStatus.STATUS_ABORTED
    assert 'non-finite action values (NaN/Inf) in chunk 0; nothing was published' in result.reason
    time.sleep(0.2)
    assert nan_client.chunks == [] and nan_client.stats == [] and feedback == []


@pytest.mark.parametrize('case, message', [
    ('missing', 'does_not_exist: checkpoint directory does not exist'),
    ('corrupt', 'model.safetensors: corrupt or unreadable'),
    ('bad_json', 'config.json: not valid JSON'),
    ('null_config', 'null_config/config.json: expected a JSON object, got null'),
    ('binary_config', 'binary_config/config.json: not valid JSON (binary data'),
    ('vision_string', 'vision_string/config.json: bad config: vision: must be an object, got a string'),
])
def test_bad_checkpoint_exits_non_zero_with_one_clear_line(system, case, message):
    process = system[4][case]
    assert process.wait(60) == 1
    assert len(process.stderr) == 1 and process.stdout == [], process.lines
    [line] = process.stderr
    assert line.startswith('[ERROR]') and '[vla_prune_node]: cannot load checkpoint: ' in line and message in line
