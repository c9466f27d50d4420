"""``python -m vla_prune_ros.parameters [README.md]``: rewrite the README's parameter table from the table."""
import sys

from .table import rewrite_readme_table

rewrite_readme_table(sys.argv[1] if len(sys.argv) > 1 else 'README.md')
