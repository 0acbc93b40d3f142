"""The folders are the architecture: layers import only downwards, and nothing imports in a circle."""

import ast
from pathlib import Path

import napari_flax_denoise

PACKAGE = Path(napari_flax_denoise.__file__).parent
# Each subpackage (or top-level module) and the layer it sits in: a module imports only from
# lower layers and from its own subpackage. training and inference share a layer: neither
# imports the other. runtime stands alone: it imports nothing else of the package.
LAYERS = {
    "_version": -1, "errors": 0, "_lazy": 0, "progress": 0, "config": 1, "axes": 1, "runtime": 0,
    "io": 2, "network": 2, "evaluation": 2, "noise": 2, "models": 3, "training": 4, "inference": 4,
    "cli": 5, "plugin": 5, "__init__": 6,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__") or "__init__", path


def _imports(name, path):
    """Modules of the package that ``name`` imports anywhere in its file (functions included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            module = base + (node.module.split(".") if node.module else [])
            targets = [module] if node.module else [
                module + [alias.name] if _is_module(module + [alias.name]) else module for alias in node.names]
            found.update(".".join(t) or "__init__" for t in targets)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_flax_denoise."):
            found.add(node.module.split(".", 1)[1])
    return found


def _is_module(parts):
    path = PACKAGE.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _owner(module):
    return module.split(".")[0]


def test_every_module_belongs_to_a_layer():
    assert {_owner(name) for name, _ in _modules()} <= set(LAYERS)


def test_layers_import_only_downwards_and_runtime_only_itself():
    wrong = []
    for name, path in _modules():
        for target in _imports(name, path):
            same = _owner(target) == _owner(name)
            if not same and (_owner(name) == "runtime" or LAYERS[_owner(target)] >= LAYERS[_owner(name)]):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_circle():
    graph = {name: {t for t in _imports(name, path) if t != name} for name, path in _modules()}
    known = set(graph)
    graph = {name: {t for t in targets if t in known} for name, targets in graph.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", " -> ".join(trail[trail.index(node):] + [node])
        state[node] = "open"
        for target in graph[node]:
            visit(target, trail + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_only_the_backend_profile_asks_for_the_device():
    mentions = [name for name, path in _modules() if "default_backend" in path.read_text()]
    assert mentions == ["runtime.backend"]


def test_the_checker_sees_a_real_upward_import(tmp_path):
    """The layer check reads relative imports the way Python resolves them."""
    path = tmp_path / "unet.py"
    path.write_text("from ..training.steps import loss_fn\nfrom .pooling import max_pool\n")
    assert _imports("network.unet", path) == {"training.steps", "network.pooling"}
