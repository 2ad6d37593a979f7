"""Repository-wide rules that no single package can check on its own."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def test_agl_is_a_namespace_in_every_package() -> None:
    """One stray agl/__init__.py would hide every other agl package installed in editable mode."""
    for package in PACKAGES:
        for namespace in (package / "src" / "agl", package / "src" / "agl" / "instrument"):
            assert not (namespace / "__init__.py").exists(), f"{namespace}/__init__.py breaks the agl namespace"


def test_every_package_has_its_own_readme_and_tests() -> None:
    assert PACKAGES, "no packages found"
    for package in PACKAGES:
        meta = tomllib.loads((package / "pyproject.toml").read_text())["project"]
        assert meta["name"] == package.name
        assert (package / "README.md").is_file(), f"{package.name} has no README.md"
        assert any((package / "tests").glob("test_*.py")), f"{package.name} has no tests"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 dev.py test" in readme and "python3 dev.py demo" in readme
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()


def test_each_instrumentor_declares_its_framework_range_once() -> None:
    """The `instruments` extra must equal `instrumentation_dependencies()`: the auto-loader trusts
    the extra, so a drift silently disables the instrumentor."""
    import ast

    for package in PACKAGES:
        if not package.name.startswith("agl-instrument-"):
            continue
        project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
        module = package.name.removeprefix("agl-instrument-").replace("-", "_")
        # Read, not imported: a package may live in a test environment of its own.
        source = (package / "src" / "agl" / "instrument" / module / "package.py").read_text()
        (declared,) = (
            ast.literal_eval(node.value)
            for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_instruments" for t in node.targets)
        )
        assert tuple(project["optional-dependencies"]["instruments"]) == tuple(declared), package.name
        (entry_point,) = project["entry-points"]["opentelemetry_instrumentor"].items()
        assert entry_point[0] == f"agl_{module}", package.name
