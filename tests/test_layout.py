"""The package's modules import one another without a circle (function-level
imports included): a device-side module can be read, and shipped, on its own."""

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
