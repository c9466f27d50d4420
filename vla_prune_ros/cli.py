"""``vla-prune``: the user's command line.

    vla-prune demo      the simulated arm driven by the node, over DDS (README command 1)
    vla-prune bench     same-run latency / tokens / FLOPs of every method against ``none``
    vla-prune eval      closed-loop success per method on seeded simulated episodes
    vla-prune collect   scripted-expert demonstrations
    vla-prune train     fine-tune with LightVLA in the loop (accelerate; LoRA optional)
    vla-prune record    record live topics to a rosbag2 (MCAP) without the ROS CLI
    vla-prune replay    run every method over a recorded bag and compare with ``none``
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    'demo': ('vla_prune_ros.sim.ros_episodes', 'main'),
    'bench': ('vla_prune_ros.benchmark', 'main'),
    'eval': ('vla_prune_ros.evaluation', 'main'),
    'collect': ('vla_prune_ros.sim.collect', 'main'),
    'train': ('vla_prune_ros.training', 'main'),
    'record': ('vla_prune_ros.data.rosbag', 'record_main'),
    'replay': ('vla_prune_ros.replay', 'main'),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vla-prune: unknown command '{command}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, function = COMMANDS[command]
    module = importlib.import_module(module_name)
    return int(getattr(module, function)(rest) or 0)


if __name__ == '__main__':
    sys.exit(main())
