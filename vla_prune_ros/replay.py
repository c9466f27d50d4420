"""Replay (``vla-prune replay BAG``): every method over the camera and joint-state messages of a recorded bag.

Offline and in-process: at every ``--every``-th frame of the first camera the latest frame of
each camera and the latest joint state make one observation; the measured end-effector
velocity steps the coarse/fine controller as on the robot; each method infers on exactly the
same observations. Topics, URDF frame, proprio layout and controller thresholds come from the
robot config (default: the simulated arm's ``config/sim_robot.yaml``). Reported per method against ``none``: action deviation (mean absolute, per
dimension and overall, in the action's own units), tokens kept, FLOPs and latency. Run it on
your own robot's bags before turning a method on.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .parameters import controller_config, load_params_file


def absolute(topic: str) -> str:
    return '/' + topic.lstrip('/')


def observations(bag: Path, camera_topics: list[str], joint_topic: str, every: int):
    """Yield (stamp_s, [rgb per camera], joint name->position, joint name->velocity, infer) at every frame
    of the first camera once all inputs are known; ``infer`` is True at every ``every``-th."""
    from .data.images import image_fields_to_rgb
    from .data.rosbag import read_bag
    latest: dict[str, np.ndarray] = {}
    joints = None
    primary_count = 0
    for topic, _, timestamp, msg in read_bag(bag, topics=camera_topics + [joint_topic]):
        if topic == joint_topic:
            joints = ({n: float(p) for n, p in zip(msg.name, msg.position)},
                      {n: float(v) for n, v in zip(msg.name, msg.velocity)})
            continue
        latest[topic] = image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                                            msg.data)
        if topic == camera_topics[0]:
            primary_count += 1
            if joints is not None and len(latest) == len(camera_topics):
                yield (timestamp / 1e9, [latest[t] for t in camera_topics], joints[0], joints[1],
                       primary_count % every == 0)


def recorded_urdf(bag: Path) -> str | None:
    from .data.rosbag import read_bag
    for _, _, _, msg in read_bag(bag, topics=['/robot_description']):
        return msg.data
    return None


def replay(args) -> dict:
    from .control.controller import CoarseFineController
    from .control.kinematics import EndEffectorVelocity, ProprioBuilder
    from .paths import URDF_PATH
    from .policy import VLAPolicy
    robot = load_params_file(args.robot_config)
    bag = Path(args.bag)
    cameras = args.camera_topics.split(',') if args.camera_topics else [absolute(t) for t in robot['camera_topics']]
    joint_topic = args.joint_states_topic or absolute(robot['joint_states_topic'])
    ee_frame = args.ee_frame or robot['ee_frame']
    urdf = Path(args.urdf).read_text() if args.urdf else (recorded_urdf(bag) or URDF_PATH.read_text())
    samples = list(observations(bag, cameras, joint_topic, args.every))
    if not any(sample[-1] for sample in samples):
        raise SystemExit(f'{bag}: no observations with all of {cameras} and {joint_topic}')
    methods = args.methods.split(',')
    if 'none' not in methods:
        methods.insert(0, 'none')
    base = VLAPolicy.from_checkpoint(args.checkpoint, device=args.device)
    proprio = ProprioBuilder(robot['proprio_source'], base.config.proprio_dim, urdf, ee_frame,
                             robot['proprio_joint_names'], robot['proprio_reference_rotvec'])
    velocity = EndEffectorVelocity(urdf, ee_frame)
    controller = CoarseFineController(controller_config(robot))
    inputs = []
    for stamp, frames, positions, velocities, infer in samples:
        names = list(positions)
        estimate = velocity.update(names, [positions[n] for n in names],
                                   [velocities.get(n, float('nan')) for n in names] if velocities else [], stamp)
        decision = controller.step(estimate.linear if estimate.valid else None,
                                   estimate.angular if estimate.valid else None, False, stamp)
        inputs.append((frames, proprio.build(positions) if base.config.proprio_dim and infer else None, decision.mode,
                       estimate.linear_speed if estimate.valid else None, infer))
    policies = {m: base if m == 'none' else VLAPolicy(base.model, base.tokenizer, m) for m in methods}
    outputs = {m: [] for m in methods}
    for frames, state, mode, speed, infer in tqdm(inputs, desc='replay', dynamic_ncols=True):
        for method, policy in policies.items():
            policy.observe_frames(frames)          # every frame: the ring SpecPrune's Δ reads
            if infer:
                outputs[method].append(policy.infer(frames, state, args.instruction, mode=mode, ee_speed=speed))
    reference = np.stack([o.actions for o in outputs['none']])
    names = base.config.action_names
    report = {'methods': {}, 'meta': {'command': args.command, 'bag': str(bag),
                                      'observations': len(outputs['none']), 'instruction': args.instruction,
                                      'date': time.strftime('%Y-%m-%d')}}
    for method, outs in outputs.items():
        actions = np.stack([o.actions for o in outs])
        deviation = np.abs(actions - reference).mean(axis=(0, 1))
        report['methods'][method] = {
            'action_deviation': dict(zip(names, deviation.tolist())), 'action_deviation_mean': float(deviation.mean()),
            'tokens_kept': float(np.mean([o.record.tokens_kept for o in outs])),
            'flops_ratio': float(np.mean([o.record.flops / o.record.flops_unpruned for o in outs])),
            'latency_ms': 1000 * float(np.median([o.record.timings['total'] for o in outs]))}
    return report


def table(report: dict) -> str:
    rows = report['methods']
    names = list(next(iter(rows.values()))['action_deviation'])
    lines = ['| method | tokens kept | FLOPs ratio | latency ms | mean |action − none| | ' +
             ' | '.join(names) + ' |', '|' + '---|' * (5 + len(names))]
    for method, row in rows.items():
        lines.append(f"| {method} | {row['tokens_kept']:.0f} | {row['flops_ratio']:.2f} | {row['latency_ms']:.1f} | "
                     f"{row['action_deviation_mean']:.2e} | " +
                     ' | '.join(f"{row['action_deviation'][n]:.1e}" for n in names) + ' |')
    return '\n'.join(lines)
