"""The fast tier (`pytest -m "not slow"`) still touches every module: each module under src/mugpt, and each name
src/train.py takes from the package, is imported by a test file that holds at least one test not marked slow.
A static check (the files' imports and markers read with ast), so it costs no import of torch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mugpt"


def _is_slow_mark(node: ast.expr) -> bool:
    """`pytest.mark.slow`, `mark.slow` or a list of marks that holds one."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_is_slow_mark(e) for e in node.elts)
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "slow"


def has_fast_test(tree: ast.Module) -> bool:
    """Whether a test file holds a test function (or test method) that is not marked slow, itself or through
    the module's or its class's `pytestmark`."""
    def marked(body: list[ast.stmt]) -> bool:
        return any(isinstance(s, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in s.targets)
                   and _is_slow_mark(s.value) for s in body)

    def fast_in(body: list[ast.stmt]) -> bool:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                if not any(_is_slow_mark(d) for d in node.decorator_list):
                    return True
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                if not any(_is_slow_mark(d) for d in node.decorator_list) and not marked(node.body) \
                        and fast_in(node.body):
                    return True
        return False

    return not marked(tree.body) and fast_in(tree.body)


def imported_names(tree: ast.Module) -> set[str]:
    """Every dotted name a file imports, anywhere in it: `import a.b` gives a.b; `from a.b import c` gives a.b and
    a.b.c (c may be a submodule)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def whole_modules(tree: ast.Module) -> set[str]:
    """The names a file imports as module objects (`import a.b`, `from a import b`), whose every attribute the
    file may use; `from a.b import c` is not one for a.b."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_modules(package: Path) -> dict[str, ast.Module]:
    """{dotted module name: its syntax tree} for every .py file under the package, packages' __init__ included."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def only_reexports(tree: ast.Module) -> bool:
    """An __init__ that only imports (a docstring, imports, __all__ and __version__ besides): nothing of its own
    to test."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(getattr(t, "id", "").startswith("__") for t in node.targets):
            continue
        return False
    return True


def reexported_from(package: str, tree: ast.Module) -> dict[str, str]:
    """{name: the submodule it comes from} for a package __init__'s `from .sub import name` lines, so that
    `from mugpt.pkg import name` counts as importing mugpt.pkg.sub."""
    sources = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                sources[alias.asname or alias.name] = module
    return sources


def uncovered_modules(modules: dict[str, ast.Module], test_files: dict[str, ast.Module],
                      packages: set[str] = frozenset()) -> list[str]:
    """The modules no test file with a fast test imports, directly or through a package that re-exports from it;
    packages whose __init__ only re-exports are left out."""
    imported, whole = set(), set()
    for tree in test_files.values():
        if has_fast_test(tree):
            imported |= imported_names(tree)
            whole |= whole_modules(tree)
    # a package imported as a module object brings every submodule its __init__ imports from
    for name in whole & packages:
        imported |= {source for source in reexported_from(name, modules[name]).values() if source in modules}
    reexports = {name: reexported_from(name, tree) for name, tree in modules.items()
                 if name in imported or any(i.startswith(name + ".") for i in imported)}
    for name in list(imported):
        package, _, attr = name.rpartition(".")
        # a chain of packages re-exporting each other: follow it to the module that defines the name
        for _ in range(5):
            source = reexports.get(package, {}).get(attr)
            if source is None or source not in modules:
                break
            imported.add(source)
            package = source
    return sorted(name for name, tree in modules.items()
                  if name not in imported and not (name in packages and only_reexports(tree)))


def packages(package: Path) -> set[str]:
    """The dotted names of the package and its subpackages (their __init__ files)."""
    return {".".join(p.parent.relative_to(package.parent).parts) for p in package.rglob("__init__.py")}


def read_test_files() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), filename=str(p)) for p in sorted((ROOT / "tests").glob("test_*.py"))}


def test_every_module_has_a_fast_test():
    missing = uncovered_modules(package_modules(PACKAGE), read_test_files(), packages(PACKAGE))
    assert not missing, f"modules no test file of the fast tier imports: {missing}"


def test_what_train_py_calls_has_a_fast_test():
    """src/train.py is the command line most users run (itself run by the slow tier): every module it imports
    from the package, and the two calls its path goes through (the launch's checks, then training), are imported
    by a test file of the fast tier."""
    tree = ast.parse((ROOT / "src" / "train.py").read_text())
    wanted = {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mugpt")}
    wanted |= {"mugpt.studies.sweep.check_launch", "mugpt.training.train.train"}
    imported = set()
    for test_file in read_test_files().values():
        if has_fast_test(test_file):
            imported |= imported_names(test_file)
    assert len(wanted) > 2 and not wanted - imported, sorted(wanted - imported)


def test_the_check_finds_a_module_only_slow_tests_import():
    """The check can fail: on a made-up package and made-up test files it names the module that only a
    slow-marked test imports, and counts one imported through its package's re-export."""
    def parse(text: str) -> ast.Module:
        return ast.parse(text)

    modules = {
        "mugpt.alpha": parse("def f(): pass"),
        "mugpt.beta": parse("def g(): pass"),
        "mugpt.pkg.gamma": parse("def h(): pass"),
        "mugpt.delta": parse("def k(): pass"),
    }
    tests = {
        "test_a.py": parse("from mugpt.alpha import f\ndef test_a(): f()"),
        "test_b.py": parse("import pytest\nfrom mugpt.beta import g\n@pytest.mark.slow\ndef test_b(): g()"),
        "test_c.py": parse("import pytest\npytestmark = [pytest.mark.slow]\nimport mugpt.delta\ndef test_c(): pass"),
        "test_d.py": parse("def test_d():\n    from mugpt.pkg.gamma import h\n    h()"),
    }
    assert uncovered_modules(modules, tests) == ["mugpt.beta", "mugpt.delta"]
    tests["test_b.py"] = parse("import pytest\nfrom mugpt.beta import g\n@pytest.mark.slow\ndef test_b(): g()\n"
                               "def test_b_fast(): g()")
    assert uncovered_modules(modules, tests) == ["mugpt.delta"]
    # a package that re-exports from its submodule: importing the name through the package covers the submodule
    modules["mugpt.pkg"] = parse("from .gamma import h\n__all__ = ['h']")
    tests["test_d.py"] = parse("from mugpt.pkg import h\ndef test_d(): h()")
    tests["test_c.py"] = parse("import mugpt.delta\nclass TestC:\n    def test_c(self): pass")
    assert uncovered_modules(modules, tests, {"mugpt.pkg"}) == []
    # an __init__ that only re-exports needs no test of its own; one with code of its own does
    tests["test_d.py"] = parse("from mugpt.pkg.gamma import h\ndef test_d(): h()")
    assert uncovered_modules(modules, tests, {"mugpt.pkg"}) == []
    modules["mugpt.pkg"] = parse("from .gamma import h\ndef helper(): pass")
    assert uncovered_modules(modules, tests, {"mugpt.pkg"}) == ["mugpt.pkg"]


def test_slow_marks_are_read_from_functions_classes_and_modules():
    fast = "def test_x(): pass"
    assert has_fast_test(ast.parse(fast))
    assert not has_fast_test(ast.parse("import pytest\n@pytest.mark.slow\n" + fast))
    assert not has_fast_test(ast.parse("import pytest\npytestmark = pytest.mark.slow\n" + fast))
    assert not has_fast_test(ast.parse("import pytest\n@pytest.mark.slow\nclass TestX:\n    def test_x(self): pass"))
    assert not has_fast_test(ast.parse("def helper(): pass"))
    assert has_fast_test(ast.parse("import pytest\n@pytest.mark.gpu\n" + fast))
