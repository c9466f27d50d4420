"""The ``vla-prune`` verbs, one module each with ``add_arguments(parser)`` and ``main(args) -> int``.

``VERBS`` lists them with their one-line help, so ``vla-prune --help`` imports none of them.
"""
VERBS = {
    'demo': 'the simulated arm driven by the node over DDS (README command 1)',
    'bench': 'same-run latency / tokens / FLOPs of every method against `none`',
    'eval': 'closed-loop success per method on seeded simulated episodes',
    'collect': 'scripted-expert demonstrations',
    'dataset': 'training data from recordings: `dataset from-bag BAG... --out DIR`',
    'train': 'fine-tune with LightVLA in the loop (accelerate; LoRA optional)',
    'record': 'record live topics to a rosbag2 (MCAP) without the ROS CLI',
    'replay': 'run every method over a recorded bag and compare with `none`',
}
