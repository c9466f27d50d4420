"""Joint states are pulled, not executor-driven (vla_prune_ros.node.inputs): the executor never takes
them, a batch take keeps every message's own arrival time, and the steady drain timer keeps the rates
and layouts current while no goal reads the joints. Real rclpy nodes over DDS in one process."""
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from vla_prune_ros.control.kinematics import ProprioBuilder
from vla_prune_ros.node.inputs import LatestInputs, StaleInput
from ros_helpers import domain_id, wait_until

JOINTS = ['a', 'b']


@pytest.fixture
def ros():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__))
    node = rclpy.create_node('pulled_inputs', context=context)
    sender = rclpy.create_node('pulled_sender', context=context)
    inputs = LatestInputs(node, ['camera'], 'joint_states', 'success', velocity=None,
                          proprio=ProprioBuilder('joint_positions', 2, extra_joints=JOINTS), wants_proprio=True)
    joints = sender.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
    camera = sender.create_publisher(Image, 'camera', qos_profile_sensor_data)
    wait_until(lambda: joints.get_subscription_count() and camera.get_subscription_count(), 20.0, 'discovery')
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield executor, sender, inputs, joints, camera
    executor.shutdown(timeout_sec=1.0)
    rclpy.try_shutdown(context=context)
    sender.destroy_node()
    node.destroy_node()


def joint_state(sender, value: float) -> JointState:
    msg = JointState(name=JOINTS, position=[value, -value])
    msg.header.stamp = sender.get_clock().now().to_msg()
    return msg


def deliver_frame(executor, sender, camera, inputs) -> None:
    camera.publish(frame(sender))
    wait_until(lambda: inputs._latest[0] is not None or executor.spin_once(timeout_sec=0.05), 20.0, 'the frame')


def frame(sender) -> Image:
    msg = Image(height=4, width=4, encoding='rgb8', step=12, data=np.zeros(48, np.uint8).tobytes())
    msg.header.stamp = sender.get_clock().now().to_msg()
    return msg


def test_a_batch_take_keeps_every_message_and_the_newest_wins(ros):
    executor, sender, inputs, joints, camera = ros
    for value in range(30):
        joints.publish(joint_state(sender, float(value)))
    taken = []
    # No executor spins here: only drain_joint_states() can take them (DDS keeps all 30 meanwhile).
    wait_until(lambda: taken.append(inputs.drain_joint_states()) or sum(taken) >= 30, 20.0, 'all 30 joint states')
    assert sum(taken) == 30
    deliver_frame(executor, sender, camera, inputs)
    observation = inputs.observe(max_age=5.0)
    assert observation.proprio.tolist() == [29.0, -29.0]


def test_an_old_joint_state_taken_now_is_stale_by_its_arrival_time(ros):
    """The batch must not restamp arrivals with the time of the take: a joint state that arrived 0.4 s
    before it was taken is 0.4 s old, though its header stamp is zero (the arrival time stands in)."""
    executor, sender, inputs, joints, camera = ros
    msg = JointState(name=JOINTS, position=[1.0, -1.0])     # zero stamp: the arrival time is used
    joints.publish(msg)
    published = time.monotonic()
    wait_until(lambda: time.monotonic() - published > 0.4, 5.0, 'the joint state to age')
    deliver_frame(executor, sender, camera, inputs)
    with pytest.raises(StaleInput, match='joint_states'):
        inputs.observe(max_age=0.3)
    assert inputs.observe(max_age=5.0).proprio.tolist() == [1.0, -1.0]


def test_the_steady_timer_drains_while_no_goal_reads(ros):
    """Nothing calls drain_joint_states() here: the timer alone keeps the layouts and the rate current."""
    executor, sender, inputs, joints, camera = ros
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    published = []

    def publish():
        for value in range(100):
            joints.publish(joint_state(sender, float(value)))
            published.append(float(value))
            time.sleep(0.005)
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    wait_until(lambda: inputs.rates()[-1].rate_hz > 0, 20.0, 'the drain timer to count joint states')
    publisher.join()
    layouts = inputs._joint_layouts
    wait_until(lambda: tuple(JOINTS) in layouts and layouts[tuple(JOINTS)].msg.position[0] == published[-1],
               20.0, 'the timer to take the last joint state')
    # Each message keeps its own arrival time: the period is the publisher's (~5 ms), not 0 from a batch.
    assert layouts[tuple(JOINTS)].period_ns > 0
    executor.shutdown(timeout_sec=1.0)
    spinner.join(timeout=5.0)
