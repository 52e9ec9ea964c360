"""The package's modules import one another without a circle (function-level
imports included), and what runs on a device never reaches what runs on the
server (tflite_edge.DEVICE and SERVER): a device-side module can be read,
and shipped, on its own."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "tflite_edge")


def _imports():
    graph = {}
    for name in sorted(os.listdir(PACKAGE)):
        if not name.endswith(".py"):
            continue
        module = name[:-3]
        tree = ast.parse(open(os.path.join(PACKAGE, name)).read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "tflite_edge":
                    found |= {alias.name for alias in node.names}
                elif node.module.startswith("tflite_edge."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {alias.name.split(".")[1] for alias in node.names
                          if alias.name.startswith("tflite_edge.")}
        graph[module] = found - {module}
    return graph


def test_no_module_of_tflite_edge_imports_itself_through_others():
    graph = _imports()
    assert {"apply", "signing", "device_state", "files"} <= set(graph)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
                   for n in graph.get(start, ()))
    circles = sorted(m for m in graph if reaches(m, m))
    assert not circles, {m: sorted(graph[m]) for m in circles}


def _third_party(module):
    tree = ast.parse(open(os.path.join(PACKAGE, module + ".py")).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_device_modules_never_reach_server_modules_or_tensorflow():
    import tflite_edge  # pylint: disable=import-outside-toplevel
    graph = _imports()
    listed = set(tflite_edge.DEVICE) | set(tflite_edge.SERVER) | {"patch", "cli", "__init__"}
    assert set(graph) == listed, set(graph) ^ listed   # every module is placed
    for module in tflite_edge.DEVICE:
        reached, todo = set(), [module]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in reached:
                    reached.add(n)
                    todo.append(n)
        assert not reached & set(tflite_edge.SERVER), (module, reached & set(tflite_edge.SERVER))
        for m in reached | {module}:
            assert not _third_party(m) & {"tensorflow", "tf_keras", "tf_dpu", "keras"}, m
