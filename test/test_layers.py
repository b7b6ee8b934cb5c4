"""The package's import graph: layers import one way, and no module imports itself back.

Layers, lowest first (a module may import from its own layer and the ones its rule lists):
  base        mffseg_ros/*.py utilities (errors, paths, sizes, topics, scalars)
  model       pure PyTorch network and weights
  data        readers, bags, synthetic scenes          training    mffseg train
  inference   Segmenter, post-processing, stereo       visualize   overlays and pictures
  evaluation  metrics, scores, mffseg evaluate
  ros         the thin rclpy layer                     tools       bags CLI, bench, demo, export
  cli         the `mffseg` entry point
Function-local imports count too: hiding an import in a function does not change the dependency.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'mffseg_ros'
BASE = {'errors', 'paths', 'sizes', 'topics', 'scalars'}
ALLOWED = {
    'base': {'base'},
    'model': {'base', 'model'},
    'data': {'base', 'model', 'data'},
    'training': {'base', 'model', 'data', 'training'},
    'inference': {'base', 'model', 'inference'},
    'visualize': {'base', 'model', 'visualize'},
    'evaluation': {'base', 'model', 'data', 'inference', 'visualize', 'evaluation'},
    'ros': {'base', 'model', 'data', 'inference', 'visualize', 'ros'},
    'tools': {'base', 'model', 'data', 'training', 'inference', 'visualize', 'evaluation', 'ros', 'tools'},
    'package': {'inference'},  # mffseg_ros/__init__.py: the lazy Segmenter export
}
ALLOWED['cli'] = set(ALLOWED) | {'cli'}


def layer(module):
    """'mffseg_ros.inference.stereo' -> 'inference'."""
    parts = module.split('.')
    if len(parts) == 1:
        return 'package'
    top = parts[1]
    if top in BASE:
        return 'base'
    if top == '__main__':
        return 'cli'
    return top


def modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE.parent).with_suffix('')
        name = '.'.join(rel.parts)
        yield name.removesuffix('.__init__'), path


def imports(name, path):
    """(imported module, line, top level?) for every import of the package's own modules."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:  # relative: up from this module's package
                parent = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parent + ([base] if base else []))
            targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in KNOWN else base for a in node.names]
        for target in targets:
            if target.split('.')[0] == 'mffseg_ros':
                found.append((target, node.lineno, id(node) in top_level))
    return found


KNOWN = {name for name, _ in modules()}


def owner(target):
    """The module a dotted import resolves to (a name imported from a package resolves to it)."""
    while target not in KNOWN and '.' in target:
        target = target.rsplit('.', 1)[0]
    return target


GRAPH = {name: [(owner(t), line, top) for t, line, top in imports(name, path)] for name, path in modules()}


@pytest.mark.parametrize('name', sorted(GRAPH))
def test_imports_go_down_the_layers(name):
    mine = layer(name)
    bad = [f'{name}:{line} imports {target} ({layer(target)})' for target, line, _ in GRAPH[name]
           if layer(target) not in ALLOWED[mine]]
    assert not bad, '\n'.join(bad)


def test_no_import_cycles():
    edges = {name: {t for t, _, _ in deps if t != name and not t == 'mffseg_ros'} for name, deps in GRAPH.items()}
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 'open':
                cycles.append(' -> '.join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, '\n'.join(cycles)
