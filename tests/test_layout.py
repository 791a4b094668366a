"""The package layout: old import paths keep working, and no module imports in a circle."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "scaling", "scaledown", "deploy")
# Which package may import which (shared/DESIGN.md section 1): the pipeline uses everything, deploy is a
# library over distill, scaling is pure fitting, distill imports none of the others.
ALLOWED = {
    "scaledown": {"deploy", "scaling", "distill"},
    "deploy": {"distill"},
    "scaling": set(),
    "distill": set(),
}
# What distill's top level holds: its entry points, and everything else in a subpackage.
DISTILL_TOP = {"__init__.py", "__main__.py", "cli.py", "config.py", "train.py"}


def test_public_names_import_where_they_did():
    from distill import DistillationConfig, DistillationTrainer, distillation_loss  # noqa: F401
    from distill.data import DataArguments, build_datasets  # noqa: F401
    from distill.losses import KD_KINDS, student_cross_entropy  # noqa: F401
    from distill.losses import distillation_loss as loss_fn
    from distill.losses.chunked import chunked_distillation_loss, default_chunk_size  # noqa: F401
    from distill.teacher.cache import TeacherCache, build_teacher_cache  # noqa: F401
    from distill.trainer import DistillationTrainer as trainer_class

    assert loss_fn is distillation_loss
    assert trainer_class is DistillationTrainer


def test_distill_top_level_holds_only_entry_points_and_subpackages():
    loose = {p.name for p in (ROOT / "distill").glob("*.py")} - DISTILL_TOP
    assert not loose, f"move these into a subpackage of distill/: {sorted(loose)}"
    for sub in ("trainer", "tune", "losses", "data", "teacher", "students"):
        assert (ROOT / "distill" / sub / "__init__.py").is_file(), sub


def _package_imports() -> tuple[dict[str, set[str]], list[str]]:
    """Top-level package -> the other project packages it imports; and private names crossing a package."""
    edges = {p: set() for p in PACKAGES}
    private = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in PACKAGES and top != package:
                        edges[package].add(top)
                        if isinstance(node, ast.ImportFrom) and any(
                            a.name.startswith("_") for a in node.names
                        ):
                            private.append(
                                f"{path.relative_to(ROOT)}:{node.lineno} imports a private name from {module}"
                            )
                        if any(
                            part.startswith("_") and not part.startswith("__") for part in module.split(".")
                        ):
                            private.append(
                                f"{path.relative_to(ROOT)}:{node.lineno} imports private module {module}"
                            )
    return edges, private


def test_packages_import_one_way():
    edges, _ = _package_imports()
    wrong = {p: sorted(edges[p] - ALLOWED[p]) for p in PACKAGES if edges[p] - ALLOWED[p]}
    assert not wrong, f"package imports against the layout (allowed: {ALLOWED}): {wrong}"


def test_no_private_name_crosses_a_package():
    _, private = _package_imports()
    assert not private, "\n".join(private)


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
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
