"""vla_prune_node against a hostile robot, over real DDS between real processes (issue 10).

Goal bursts, stamps from the future or zero, silent topics, use_sim_time with a /clock publisher,
unbounded instructions, cancel and timeout latency, per-camera list lengths, type mismatches,
non-physical joint velocities, CompressedImage cameras, duplicate joint names and what an empty
Result means. Every check waits on something observable, never on a fixed sleep alone.
"""
import math
import re
import threading
import time
import uuid

import pytest
from action_msgs.msg import GoalStatus

from ros_helpers import (CAMERA_TOPICS, RosClient, command, domain_id, make_checkpoint, start_node,
                         start_publisher, tracebacks)

DOMAIN = domain_id(__name__)
INSTRUCTION = 'touch the red cube'
PRIMARY, WRIST, JOINTS = '/camera/primary/image_raw', '/camera/wrist/image_raw', '/joint_states'
MAX_INPUT_AGE = 0.5
NODE_PARAMS = {'device': 'cpu', 'control_dt': 0.02, 'max_input_age': MAX_INPUT_AGE, 'torch_threads': 1}
# A second node: sim time from the test's /clock, the primary camera as JPEG, a duplicated joint name.
EXTRA_PARAMS = {**NODE_PARAMS, 'use_sim_time': True, 'max_input_age': 2.0,
                'camera_topics': [PRIMARY + '/compressed', WRIST], 'camera_transports': ['compressed', 'raw'],
                'joint_states_topic': JOINTS, 'proprio_joint_names': ['finger_left_joint', 'finger_left_joint']}


class ClockPublisher:
    """Publishes rosgraph_msgs/Clock at 100 Hz from the test's client node: ``offset`` s from the wall clock."""

    def __init__(self, client: RosClient, topic: str, offset: float):
        from rosgraph_msgs.msg import Clock
        self._clock, self.offset = Clock, offset
        self._publisher = client.node.create_publisher(Clock, topic, 10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.time() + self.offset

    def _loop(self):
        while not self._stop.wait(0.01):
            t = self.now()
            msg = self._clock()
            msg.clock.sec, msg.clock.nanosec = int(t), int((t - int(t)) * 1e9)
            self._publisher.publish(msg)

    def close(self):
        self._stop.set()
        self._thread.join(2.0)


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    checkpoint = make_checkpoint(tmp_path_factory.mktemp('robustness') / 'tiny')
    publisher = start_publisher(DOMAIN, rate=30.0, size=64, compressed=True)
    node = start_node(DOMAIN, {'checkpoint': str(checkpoint), **NODE_PARAMS})
    # The extra node's /clock is remapped, so the live use_sim_time test of the main node cannot move it.
    extra = start_node(DOMAIN, {'checkpoint': str(checkpoint), **EXTRA_PARAMS},
                       ros_args=['-r', '__ns:=/extra', '-r', '/clock:=/extra/clock'])
    client = RosClient(DOMAIN)
    extra_client = RosClient(DOMAIN, 'test_extra_client', namespace='extra')
    clock = ClockPublisher(client, '/clock', offset=-1000.0)           # 1000 s behind the wall clock
    extra_clock = ClockPublisher(client, '/extra/clock', offset=0.0)
    try:
        client.wait_ready(120)
        extra_client.wait_ready(120)
        # Each client keeps only its own node's /diagnostics: the extra node reads the compressed camera.
        client.wait_topics_flowing([PRIMARY, WRIST, JOINTS])
        extra_client.wait_topics_flowing([PRIMARY + '/compressed', WRIST, JOINTS])
        yield client, publisher, node, extra_client, extra, (clock, extra_clock)
    finally:
        clock.close()
        extra_clock.close()
        client.close()
        extra_client.close()
        codes = node.stop(), extra.stop()
        publisher.stop()
        # A joined string: pytest prints it whole, where a list's repr is cut short.
        assert codes == (0, 0), '\n'.join([f'exit codes (node, extra) {codes}', '--- node:', *node.lines[-40:],
                                            '--- extra:', *extra.lines[-40:]])
        for process in (node, extra):
            assert not tracebacks(process.lines), tracebacks(process.lines)


def restore(publisher):
    for line in ('camera 1 on', 'image 0 good', 'age 0', 'stamp normal', 'joints moving'):
        command(publisher, line)


def send(client, publisher, line: str) -> None:
    """A publisher command, then a few frames, so the node has the messages sent after it."""
    command(publisher, line)
    client.settle()


def run(client, **goal):
    accepted, result, status, _ = client.run_goal(INSTRUCTION, **goal)
    assert accepted
    return result, status


def diagnostics_stamp(client, since: float) -> float:
    """The header stamp (s) of the first /diagnostics message received after ``since`` (monotonic)."""
    message = client.wait_for_message(client.diagnostics, since, timeout=10.0)
    assert message is not None, 'no /diagnostics'
    return message.header.stamp.sec + message.header.stamp.nanosec * 1e-9


# --- goals -----------------------------------------------------------------------------------------

def test_fifty_goal_burst_every_goal_answered_last_one_survives(system):
    client, publisher = system[:2]
    restore(publisher)
    futures = [client.send_goal(f'{INSTRUCTION} {i}') for i in range(50)]
    handles = [client.wait_future(future, 30.0) for future in futures]      # every request answered
    assert all(handle.accepted for handle in handles)
    results = [handle.get_result_async() for handle in handles]
    deadline = time.monotonic() + 30.0
    while sum(result.done() for result in results[:-1]) < 49 and time.monotonic() < deadline:
        time.sleep(0.01)
    for result in results[:-1]:        # every accepted goal ends with a result, in order: the last survives
        assert result.done(), 'an accepted goal never delivered its result'
        response = result.result()
        assert response.status == GoalStatus.STATUS_ABORTED
        assert response.result.status == response.result.STATUS_PREEMPTED, response.result
    survivor = handles[-1]
    assert client.wait_for_message(client.chunks, time.monotonic() - 0.5, timeout=10.0), 'the last goal does not run'
    client.wait_future(survivor.cancel_goal_async(), 10.0)
    response = client.wait_future(results[-1], 10.0)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.status == response.result.STATUS_CANCELED


def test_an_instruction_longer_than_the_model_takes_is_rejected_with_the_limit(system):
    client, node = system[0], system[2]
    before = node.count('rejected goal: instruction too long')
    started = time.monotonic()
    accepted, _, _, _ = client.run_goal('x ' * 50_000, max_chunks=1)     # 100 kB
    assert not accepted and time.monotonic() - started < 10.0
    line = node.wait_for('rejected goal: instruction too long', 5.0, start=before)
    assert line and 'the limit is' in line and 'tokens' in line, line
    # A tighter limit by parameter, named in the reason.
    assert client.set_parameters({'max_instruction_tokens': 3})[0].successful
    try:
        accepted, _, _, _ = client.run_goal('pick up the red cube and put it in the bowl', max_chunks=1)
        assert not accepted
        line = node.wait_for('rejected goal: instruction too long', 5.0, start=before + 1)
        assert line and 'the limit is 3 tokens (max_instruction_tokens' in line, line
    finally:
        assert client.set_parameters({'max_instruction_tokens': 0})[0].successful
    result, _ = run(client, max_chunks=1)
    assert result.status == result.STATUS_CHUNK_LIMIT


def test_timeout_and_cancel_take_effect_within_one_inference(system):
    client, publisher = system[:2]
    restore(publisher)
    # control_dt 1 s: each chunk is consumed for 8 s, so only the poll loop can end the goal early.
    assert client.set_parameters({'control_dt': 1.0})[0].successful
    try:
        started = time.monotonic()
        result, _ = run(client, timeout=0.5)
        took = time.monotonic() - started
        assert result.status == result.STATUS_TIMEOUT, result
        # timeout + one inference + 0.1 s, plus the goal and result round trips of a loaded machine
        assert took <= 0.5 + result.mean_latency + 0.1 + 1.0, (took, result.mean_latency)

        handle = client.wait_future(client.send_goal(INSTRUCTION), 10.0)
        assert client.wait_for_message(client.chunks, started + took, timeout=10.0)
        cancel_sent = time.monotonic()
        client.wait_future(handle.cancel_goal_async(), 10.0)
        response = client.wait_future(handle.get_result_async(), 10.0)
        took = time.monotonic() - cancel_sent
        assert response.result.status == response.result.STATUS_CANCELED
        assert took <= response.result.mean_latency + 0.1 + 1.0, (took, response.result.mean_latency)
    finally:
        assert client.set_parameters({'control_dt': 0.02})[0].successful


def test_an_empty_result_reads_unknown_never_success(system):
    from rclpy.action.client import ClientGoalHandle
    from unique_identifier_msgs.msg import UUID
    client = system[0]
    Result = client.RunInstruction.Result
    assert Result().status == Result.STATUS_UNKNOWN == 0
    assert 0 not in [Result.STATUS_SUCCEEDED, Result.STATUS_CHUNK_LIMIT, Result.STATUS_TIMEOUT,
                     Result.STATUS_CANCELED, Result.STATUS_PREEMPTED, Result.STATUS_FAILED]
    # The result of a goal the server does not know (forgotten after its result timeout) is empty.
    response_type = client.RunInstruction.Impl.SendGoalService.Response
    handle = ClientGoalHandle(client.action, UUID(uuid=list(uuid.uuid4().bytes)), response_type(accepted=True))
    response = client.wait_future(handle.get_result_async(), 10.0)
    assert response.status == GoalStatus.STATUS_UNKNOWN
    assert response.result.status == Result.STATUS_UNKNOWN != Result.STATUS_SUCCEEDED


# --- stamps and clocks -----------------------------------------------------------------------------

def test_a_future_stamp_warns_naming_the_topic_and_is_stale(system):
    client, publisher, node = system[:3]
    restore(publisher)
    before = node.count(f'{PRIMARY}: header stamp is .* ahead of the node clock')
    send(client, publisher, 'age -3600')
    try:
        result, _ = run(client, max_chunks=1)
        assert result.status == result.STATUS_FAILED, (result, node.lines[-10:], publisher.lines[-5:])
        # The frame is up to one publish period old, so its lead prints as 3599.9x, or 3600.00 within 5 ms.
        assert re.search(rf'{PRIMARY}: latest image is stamped (3599\.9\d|3600\.00) s in the future', result.reason), \
            result.reason
        line = node.wait_for(f'{PRIMARY}: header stamp is .* ahead of the node clock', 5.0, start=before)
        assert line and '[WARN]' in line and 'treated as stale' in line, line
    finally:
        command(publisher, 'age 0')


def test_a_silent_topic_goes_stale_by_arrival_time_whatever_its_stamps(system):
    """Stamps 2 s ahead (tolerated here) never age; the arrival clock still sees the camera fall silent."""
    client, publisher = system[:2]
    restore(publisher)
    assert client.set_parameters({'future_stamp_tolerance': 5.0})[0].successful
    send(client, publisher, 'age -2.0')
    try:
        command(publisher, 'camera 1 off')
        time.sleep(MAX_INPUT_AGE + 0.2)
        result, _ = run(client, max_chunks=1)
        assert result.status == result.STATUS_FAILED
        assert f'{WRIST}: latest image arrived ' in result.reason and 'ago (max_input_age 0.5 s)' in result.reason
    finally:
        command(publisher, 'camera 1 on')
        command(publisher, 'age 0')
        assert client.set_parameters({'future_stamp_tolerance': 0.1})[0].successful


def test_a_tolerated_future_stamp_never_puts_a_chunk_ahead_of_the_node_clock(system):
    client, publisher = system[:2]
    restore(publisher)
    send(client, publisher, 'age -0.08')      # inside future_stamp_tolerance 0.1 s
    try:
        start = time.monotonic()
        result, _ = run(client, max_chunks=3)
        assert result.status == result.STATUS_CHUNK_LIMIT, result
        chunks = client.since(client.chunks, start)
        assert len(chunks) == 3
        received_wall = time.time()
        for chunk in chunks:      # the node's clock is this machine's clock: a stamp cannot be later than now
            assert chunk.header.stamp.sec + chunk.header.stamp.nanosec * 1e-9 <= received_wall
    finally:
        command(publisher, 'age 0')


def test_a_zero_stamp_warns_and_the_arrival_time_is_used(system):
    client, publisher, node = system[:3]
    restore(publisher)
    before = node.count(f'{PRIMARY}: header stamp is zero; using the arrival time')
    send(client, publisher, 'stamp zero')
    try:
        start, wall = time.monotonic(), time.time()
        result, _ = run(client, max_chunks=1)
        assert result.status == result.STATUS_CHUNK_LIMIT, result
        [chunk] = client.since(client.chunks, start)
        assert abs(chunk.header.stamp.sec + chunk.header.stamp.nanosec * 1e-9 - wall) < 30.0
        line = node.wait_for(f'{PRIMARY}: header stamp is zero; using the arrival time', 5.0, start=before)
        assert line and '[WARN]' in line
    finally:
        command(publisher, 'stamp normal')


def wait_for_clock(client, expected, timeout: float = 20.0) -> float:
    """Until the node's /diagnostics stamps are within 5 s of ``expected()``; returns the last stamp."""
    deadline = time.monotonic() + timeout
    stamp = math.nan
    while time.monotonic() < deadline:
        stamp = diagnostics_stamp(client, time.monotonic())
        if abs(stamp - expected()) < 5.0:
            return stamp
    raise AssertionError(f'node clock {stamp} never followed the expected {expected()}')


def test_use_sim_time_is_accepted_live_and_the_clock_follows_clock(system):
    client, (clock, _) = system[0], system[5]
    [result] = client.set_parameters({'use_sim_time': True})
    assert result.successful, result.reason
    try:
        wait_for_clock(client, clock.now)          # /clock runs 1000 s behind the wall clock
    finally:
        assert client.set_parameters({'use_sim_time': False})[0].successful
    wait_for_clock(client, time.time)


def test_use_sim_time_at_launch_follows_clock_and_a_compressed_camera_runs_a_goal(system):
    extra_client, extra, (_, extra_clock) = system[3], system[4], system[5]
    # /extra/clock at the wall time: the publisher's stamps are fresh, the JPEG primary camera feeds the policy.
    result, _ = run(extra_client, max_chunks=2)
    assert result.status == result.STATUS_CHUNK_LIMIT, result
    wait_for_clock(extra_client, time.time)
    extra_clock.offset = -500.0
    try:
        wait_for_clock(extra_client, extra_clock.now)
    finally:
        extra_clock.offset = 0.0
    wait_for_clock(extra_client, time.time)
    assert extra.alive()


def test_duplicate_joint_names_warn(system):
    client, publisher, node, _, extra, _ = system
    line = extra.wait_for('proprio_joint_names: duplicate joint names', 5.0)
    assert line and '[WARN]' in line and 'finger_left_joint' in line, extra.lines[-10:]
    restore(publisher)
    before = node.count(f'{JOINTS}: duplicate joint names')
    send(client, publisher, 'joints duplicate')
    try:
        result, _ = run(client, max_chunks=1)
        assert result.status == result.STATUS_CHUNK_LIMIT
        line = node.wait_for(f"{JOINTS}: duplicate joint names \\['joint1'\\]", 5.0, start=before)
        assert line and '[WARN]' in line
    finally:
        command(publisher, 'joints moving')


# --- parameters and joint states -----------------------------------------------------------------

@pytest.mark.parametrize('values, words', [
    ({'specprune.topk_coarse': [16]}, ['specprune.topk_coarse: 1 values', '2 cameras', 'one value per camera']),
    ({'specprune.topk_fine': [25, 19, 12]}, ['specprune.topk_fine: 3 values', '2 cameras']),
    ({'control_dt': 1}, ['control_dt: wrong type: expected double, got integer 1']),
    ({'execute_steps': 0.5}, ['execute_steps: wrong type: expected integer, got double 0.5']),
    ({'method': 3}, ['method: wrong type: expected string, got integer 3']),
    ({'action_low': ['a']}, ['action_low: wrong type: expected double_array, got string_array']),
    ({'max_input_age': math.inf}, ['max_input_age', 'inf']),
])
def test_bad_values_are_refused_naming_parameter_and_types(system, values, words):
    client = system[0]
    before = client.get_parameters(list(values))
    [result] = client.set_parameters(values)
    assert not result.successful
    for word in words:
        assert word in result.reason, result.reason
    assert client.get_parameters(list(values)) == before
    assert 'nan' not in result.reason.lower().replace('nanos', '')


def test_non_physical_joint_velocities_mean_velocity_unknown(system):
    client, publisher, node = system[:3]
    restore(publisher)
    before = node.count(f'{JOINTS}: end-effector velocity unknown .*non-physical')
    send(client, publisher, 'joints huge')
    try:
        start = time.monotonic()
        result, _ = run(client, max_chunks=2)
        assert result.status == result.STATUS_CHUNK_LIMIT, result
        stats = client.since(client.stats, start)
        assert len(stats) == 2
        for s in stats:
            assert s.controller_mode == 'fine' and not s.ee_velocity_valid and math.isnan(s.ee_linear_speed)
        line = node.wait_for(f'{JOINTS}: end-effector velocity unknown .*non-physical', 5.0, start=before)
        assert line and '[WARN]' in line and 'max_joint_velocity 50' in line, line
    finally:
        command(publisher, 'joints moving')


def test_camera_transports_must_match_the_cameras():
    from vla_prune_ros.parameters import ParameterError, defaults, validate
    values = {**defaults(), 'camera_transports': ['compressed']}
    with pytest.raises(ParameterError, match='camera_transports: 1 entries for 2 camera_topics'):
        validate(values)
    validate({**defaults(), 'camera_transports': ['compressed', 'raw']})
    with pytest.raises(ParameterError, match="camera_transports: 'jpeg' not one of"):
        validate({**defaults(), 'camera_transports': ['jpeg', 'raw']})
    assert CAMERA_TOPICS      # the publisher's compressed topics are <camera topic>/compressed
