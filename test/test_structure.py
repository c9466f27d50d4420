"""Structure limits of the package, so they stay held: no class over 300 lines, no module over 500
lines, and no import cycle between its modules (a package's ``__init__`` counts as a module)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'vla_prune_ros'
MAX_CLASS_LINES, MAX_MODULE_LINES = 300, 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob('*.py')}


def imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports (at any depth of its code)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            candidates = [target] + [f'{target}.{alias.name}' for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def test_no_class_and_no_module_is_too_long():
    too_long = []
    for name, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f'{path}: {len(source.splitlines())} lines')
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f'{path}:{node.name}: {node.end_lineno - node.lineno + 1} lines')
    assert not too_long


def test_no_import_cycle():
    graph = {name: imports(name, path) for name, path in MODULES.items()}
    done, on_path, cycles = set(), [], []

    def visit(name):
        if name in on_path:
            cycles.append(on_path[on_path.index(name):] + [name])
            return
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert not cycles
