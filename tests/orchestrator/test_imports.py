"""Where names live: the modules that say "no Ray" import no Ray (nor torch, for the types of the work)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


def imported(modules: str, watched=("ray", "torch", "timm")) -> list:
    """Which of ``watched`` a fresh interpreter holds after ``import <modules>``."""
    code = f"import sys, {modules}; print(sorted(m for m in {tuple(watched)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())  # noqa: S307 - our own print of a list of names


@pytest.mark.parametrize(
    "module",
    [
        "orchestrator.points",
        "orchestrator.spool",
        "orchestrator.prepare",
        "orchestrator.results",
        "orchestrator.gpucheck",
        "orchestrator.lease",
    ],
)
def test_the_driver_side_of_a_point_imports_no_ray(module):
    assert "ray" not in imported(module)


def test_the_types_that_travel_to_the_actors_import_neither_ray_nor_torch():
    assert imported("orchestrator.work, orchestrator.errors, orchestrator.grid") == []


def test_the_grid_file_and_the_calibration_search_import_neither_ray_nor_torch():
    assert imported("orchestrator.gridfile, orchestrator.calibrate") == []


# --------------------------------------------------------------------------- the house's arrows, read from the source

PACKAGES = ("shards", "tomecis", "orchestrator", "clipattern")


def module_imports(package_root=REPO) -> dict:
    """``{module: {modules of the house it imports}}`` from every ``import`` statement in the source,
    lazy ones inside functions included (a lazy import is still an arrow)."""
    import ast

    graph = {}
    for package in PACKAGES:
        for path in sorted((package_root / package).rglob("*.py")):
            parts = list(path.relative_to(package_root).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_init else parts)
            here = parts[:-1]  # the package a relative import starts from
            targets = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = here[: len(here) - node.level + 1] if node.level else []
                    stem = ".".join(base + ([node.module] if node.module else []))
                    targets.add(stem)
                    targets.update(f"{stem}.{alias.name}" for alias in node.names)
            graph[name] = targets
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def find_cycle(graph: dict):
    """One import circle as a list of modules (first == last), or None."""
    state = {}  # module -> 1 while on the stack, 2 when done

    def visit(module, stack):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target, stack + [target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_the_house_has_no_import_circle():
    """No module of the house reaches itself through imports, lazy ones included (a package's
    ``__init__`` re-exporting its own modules is the one arrow that goes down and is not counted back)."""
    graph = module_imports()
    assert "shards.sources" in graph and "shards.hf_parquet" in graph["shards.sources"]
    # a module importing from a package above it (its __init__) goes up; the __init__ importing it goes down
    without_up = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycle = find_cycle(without_up)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_shards_sources_and_hf_parquet_import_one_way():
    graph = module_imports()
    assert "shards.hf_parquet" in graph["shards.sources"]
    assert "shards.sources" not in graph["shards.hf_parquet"]


def test_the_cycle_finder_finds_a_lazy_circle(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "__init__.py").write_text("")
    (tmp_path / "shards" / "a.py").write_text("from .b import f\n")
    (tmp_path / "shards" / "b.py").write_text("def f():\n    from .a import g\n")
    for package in PACKAGES[1:]:
        (tmp_path / package).mkdir()
    graph = module_imports(tmp_path)
    assert graph["shards.a"] == {"shards.b"} and graph["shards.b"] == {"shards.a"}
    assert find_cycle(graph) in (["shards.a", "shards.b", "shards.a"], ["shards.b", "shards.a", "shards.b"])
