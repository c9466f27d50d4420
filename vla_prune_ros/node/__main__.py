"""``python -m vla_prune_ros.node``: the same as the ``vla_prune_node`` console script."""
import sys

from .server import main

sys.exit(main())
