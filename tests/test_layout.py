"""The package layout: old import paths keep working, and no module imports in a circle."""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVED = {
    "distill.chunked_loss": "distill.losses.chunked",
    "distill.cached_loss": "distill.losses.cached",
    "distill.fused_head": "distill.losses.fused_head",
    "distill.teacher_cache": "distill.teacher.cache",
    "distill.corpus": "distill.data.corpus",
}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_public_names_import_where_they_did():
    from distill import DistillationConfig, DistillationTrainer, distillation_loss  # noqa: F401
    from distill.chunked_loss import chunked_distillation_loss, default_chunk_size  # noqa: F401
    from distill.data import DataArguments, build_datasets  # noqa: F401
    from distill.losses import KD_KINDS, distillation_loss as loss_fn, student_cross_entropy  # noqa: F401
    from distill.teacher_cache import TeacherCache, build_teacher_cache  # noqa: F401

    assert loss_fn is distillation_loss


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert {"distill", "scaling", "scaledown", "deploy"} <= set(packages), packages
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A module importing its own parent package is not a circle of the layout.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def test_no_import_circles():
    graph = _import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
