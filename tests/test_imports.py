"""The house's import rules, read from the source: imports flow tasks -> ops/cloud/stages ->
executors/engines -> foundation, and no two modules import each other (directly or round a loop)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lower numbers sit lower in the house; a module imports its own floor or the floors below it.
FLOORS = {
    "foundation": 0,  # layout, atomic, events, olmocr_format, pdf, isolation, faults, samples
    "pipeline.engines": 1,
    "pipeline.executors": 1,
    "pipeline.stages": 2,
    "pipeline.cloud": 2,
    "pipeline.ops": 2,
    # Read the settings and start runs: luigi.cfg, start-up checks, the command-line entry points.
    "pipeline.config": 3,
    "pipeline.startup_checks": 3,
    "pipeline.run_control": 3,
    "pipeline.demo": 3,
    "pipeline.chunk_job": 3,
    "pipeline.sharding": 3,
    "pipeline.__main__": 3,
    "tasks": 4,
}


def module_files() -> dict[str, Path]:
    found = {}
    for top in ("pipeline", "tasks"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def floor(module: str) -> int:
    for prefix, level in sorted(FLOORS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return FLOORS["foundation"]


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(module: str) -> list[tuple[str, bool]]:
    """(imported module of this project, imported at module level) for every import run at run time."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
            continue
        top_level = parents.get(node) is tree
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([source] if source else []))
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                     for alias in node.names]
        found += [(name, top_level) for name in names if name in MODULES and name != module]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for module in MODULES:
        if module == "pipeline":  # the package's door: `luigi --module pipeline` finds the tasks through it
            continue
        for imported, top_level in imports_of(module):
            # A Luigi target or a command-line main may read its own luigi.cfg section when called.
            if not top_level and imported == "pipeline.config":
                continue
            if floor(imported) > floor(module):
                wrong.append(f"{module} (floor {floor(module)}) imports {imported} (floor {floor(imported)})")
    return wrong


def import_cycles() -> list[str]:
    graph = {module: {name for name, _ in imports_of(module)} for module in MODULES if module != "pipeline"}
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_imports_never_go_up_a_floor() -> None:
    assert upward_imports() == []


def test_no_import_cycles() -> None:
    assert import_cycles() == []


def test_the_checks_see_imports_that_break_the_rules(tmp_path: Path) -> None:
    """A foundation module importing a stage, and two modules importing each other, are reported."""
    probe, stage = tmp_path / "layout_probe.py", tmp_path / "probe.py"
    probe.write_text("from pipeline.stages import probe\n", encoding="utf-8")
    stage.write_text("if True:\n    from pipeline import layout_probe\n", encoding="utf-8")
    MODULES.update({"pipeline.layout_probe": probe, "pipeline.stages.probe": stage})
    try:
        assert upward_imports() == ["pipeline.layout_probe (floor 0) imports pipeline.stages.probe (floor 2)"]
        assert import_cycles() == ["pipeline.layout_probe -> pipeline.stages.probe -> pipeline.layout_probe"]
    finally:
        del MODULES["pipeline.layout_probe"], MODULES["pipeline.stages.probe"]
