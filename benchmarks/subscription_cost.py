"""Where an idle node's intake CPU goes (issue 10): a bare subscriber process, not vla_prune_node, against
benchmarks/sensor_load.py's publisher, one load at a time, per way of taking the messages:

  none      rclpy initialised, a node, no subscriptions (the floor)
  dds       the subscriptions exist, nothing takes their messages (DDS's own receive cost)
  executor  a SingleThreadedExecutor runs one callback per message (how the node took joint states)
  raw       the same with raw=True (no deserialisation into a Python message)
  pulled    joint states only: vla_prune_ros.node.inputs' PulledGroup and JOINT_STATE_QOS, taken in a
            batch every JOINT_DRAIN_PERIOD by a steady timer (how the node takes them now)

Loads: joint_states at 500 Hz alone; 3 cameras 640x480 rgb8 at 30 Hz alone.

    flock /work/cpu.lock .venv/bin/python benchmarks/subscription_cost.py   # writes subscription_cost.{json,md}
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import sensor_load as load

HERE = Path(__file__).resolve().parent
WARM_UP, MEASURE = 6.0, 10.0
LOADS = {'joint_states 500 Hz': (500.0, 0.2, ['none', 'dds', 'executor', 'raw', 'pulled']),
         '3 cameras 30 Hz': (0.2, 30.0, ['none', 'dds', 'executor', 'raw'])}


def _subscriber_main(variant: str) -> None:
    import rclpy
    from rclpy.clock import Clock, ClockType
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from vla_prune_ros.node.inputs import JOINT_DRAIN_PERIOD, JOINT_STATE_QOS, PulledGroup
    rclpy.init()
    node = rclpy.create_node('subscription_cost')
    latest = {}
    if variant != 'none':
        for topic in load.camera_topics(3):
            node.create_subscription(Image, topic, lambda msg, t=topic: latest.__setitem__(t, msg),
                                     qos_profile_sensor_data, raw=variant == 'raw')
        if variant == 'pulled':
            joints = node.create_subscription(JointState, 'joint_states', lambda msg: None, JOINT_STATE_QOS,
                                              callback_group=PulledGroup())

            def drain():
                with joints.handle:
                    while (sample := joints.handle.take_message(JointState, False)) is not None:
                        latest['joint_states'] = sample[0]
            node.create_timer(JOINT_DRAIN_PERIOD, drain, clock=Clock(clock_type=ClockType.STEADY_TIME))
        else:
            node.create_subscription(JointState, 'joint_states', lambda msg: latest.__setitem__('joints', msg),
                                     qos_profile_sensor_data, raw=variant == 'raw')
    print('subscribed', flush=True)
    if variant in ('none', 'dds'):
        time.sleep(3600)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.spin()


def measure(variant: str, joint_rate: float, camera_rate: float, directory: Path, domain: int) -> float:
    publisher = load.start_publisher(domain, 3, camera_rate, joint_rate, 640, 480, directory / 'publisher.log')
    subscriber = load.Process([sys.executable, __file__, 'subscribe', variant], load.environment(domain),
                              directory / f'{variant}.log')
    try:
        time.sleep(WARM_UP)          # discovery and the first frames
        cpu0, start = load.cpu_seconds(subscriber.pid), time.monotonic()
        time.sleep(MEASURE)
        cpu1, end = load.cpu_seconds(subscriber.pid), time.monotonic()
    finally:
        subscriber.stop()
        publisher.stop()
    return 100.0 * (cpu1 - cpu0) / (end - start)


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for load_name, (joint_rate, camera_rate, variants) in LOADS.items():
            for variant in variants:
                results.setdefault(load_name, {})[variant] = cpu = measure(variant, joint_rate, camera_rate,
                                                                           Path(tmp), 83)
                print(f'{load_name}, {variant}: {cpu:.1f} % of a core', flush=True)
    all_variants = list(LOADS['joint_states 500 Hz'][2])
    header = '| load | ' + ' | '.join(all_variants) + ' |\n|---|' + '---|' * len(all_variants)
    rows = '\n'.join(f'| {name} | ' + ' | '.join(f'{cpus[v]:.1f}' if v in cpus else '' for v in all_variants) + ' |'
                     for name, cpus in results.items())
    markdown = f"""# Subscription cost (issue 10)

`flock /work/cpu.lock .venv/bin/python benchmarks/subscription_cost.py` — {time.strftime('%Y-%m-%d %H:%M:%S')}.
A bare subscriber process's CPU (% of one core, {MEASURE:.0f} s after {WARM_UP:.0f} s of warm-up), by way of
taking the messages (see the script's docstring), one load at a time, Fast DDS profile
`config/fastdds_large_frames.xml`.

{header}
{rows}
"""
    load.write_results(HERE / 'subscription_cost', {'cpu_percent': results, 'measure_s': MEASURE}, markdown)


if __name__ == '__main__':
    sys.path.insert(0, str(load.REPO))
    if sys.argv[1:2] == ['subscribe']:
        _subscriber_main(sys.argv[2])
    else:
        main()
