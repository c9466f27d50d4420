"""Every option is declared once, as a dataclass field beside the code it configures
(``vla_prune_ros.options``); the node's parameters and descriptors are derived from those fields.
What cannot be derived at run time, the shipped ``config/<method>.yaml`` files and the README's
parameter table, is checked against the declarations here, by one generic test."""
from pathlib import Path

from vla_prune_ros import parameters

REPO = Path(__file__).resolve().parents[1]


def test_method_config_files_and_readme_table_are_the_declarations():
    for name in sorted({parameters.method_config_file(method) for method in parameters.METHOD_NAMES}):
        method = Path(name).stem
        values = parameters.load_params_file(REPO / 'config' / name)
        assert values.pop('method') == method, name
        prefix = parameters.METHOD_PREFIX[method]
        declared = {key: spec.default for key, spec in parameters.PARAMETERS.items()
                    if prefix and key.startswith(prefix + '.')}
        assert values == declared, name
    assert parameters.markdown_table() in (REPO / 'README.md').read_text(), \
        'README parameter table out of date: python -m vla_prune_ros.parameters README.md rewrites it'
