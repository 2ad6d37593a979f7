"""dev.py, the set-up behind the README's commands: a half-made, moved or outgrown environment is
noticed, and every failure is one line and a non-zero status. dev.py is copied into a scratch
repository (its ROOT is its own folder) and run there, or imported from there for its decisions."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pip
import pytest

ROOT = Path(__file__).resolve().parents[1]
BORROWED = Path(pip.__file__).resolve().parents[1]  # this environment's site-packages: pip, setuptools, pytest


def add_package(repo: Path, name: str, version: str = "0") -> Path:
    """A tiny package, buildable offline by this environment's setuptools."""
    package = repo / "packages" / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n\n[tool.setuptools]\npy-modules = []\n'
    )
    return package


def scratch_repository(folder: Path) -> Path:
    """A repository path with a space in it, holding dev.py and the two packages every environment gets."""
    repo = folder / "a repo"
    repo.mkdir()
    shutil.copy(ROOT / "dev.py", repo / "dev.py")
    for name in ("agl-core", "agl-instrument-openai"):
        add_package(repo, name)
    return repo


def load_dev(repo: Path) -> ModuleType:
    """The repository's dev.py as a module of its own (registered while it runs: its dataclass needs that)."""
    name = f"dev_of_{abs(hash(repo))}"
    spec = importlib.util.spec_from_file_location(name, repo / "dev.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def quick_venv(folder: Path, borrow_pip: bool = True) -> Path:
    """A venv in a fraction of a second: no ensurepip, this environment's pip and setuptools lent by a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    if borrow_pip:
        (site_packages,) = folder.glob("lib/python*/site-packages")
        (site_packages / "borrowed.pth").write_text(f"{BORROWED}\n")
    return folder / "bin" / "python"


def run_dev(repo: Path, *arguments: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """dev.py as a user runs it, from another folder, with no package index (as on a machine offline)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "AGL_"))}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(
        [python, str(repo / "dev.py"), *arguments],
        cwd=repo.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_usage_help_and_an_unknown_command() -> None:
    helped = run_dev(ROOT, "--help")
    assert helped.returncode == 0 and "python3 dev.py test" in helped.stdout
    bare = run_dev(ROOT)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: python3 dev.py {demo,test,bench}")
    unknown = run_dev(ROOT, "tset")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[0] == "dev.py: unknown command 'tset'"


def older_python() -> str | None:
    """An interpreter older than 3.11 on this machine, if any (pyenv's versions included)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (10, 9, 8)]
    candidates += sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.[89]*/bin/python"))
    candidates += sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.10*/bin/python"))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info < (3, 11))"], capture_output=True, text=True
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_an_older_python_gets_one_line_naming_the_version_needed() -> None:
    python = older_python()
    if python is None:
        pytest.skip("no Python older than 3.11 on this machine")
    result = run_dev(ROOT, "test", python=python)
    assert result.returncode == 1
    assert result.stderr.startswith("dev.py: needs Python 3.11 or newer;") and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A fresh clone's first `dev.py demo` on a machine whose pip cannot reach an index: the venv is made
    (ensurepip needs no network), then the install fails."""
    repo = scratch_repository(tmp_path_factory.mktemp("fresh"))
    return repo, run_dev(repo, "demo")


@pytest.mark.slow
def test_a_failed_install_is_one_line_and_leaves_no_stamp(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, result = first_run
    assert result.returncode == 1
    assert "creating .venv" in result.stdout
    assert result.stderr.splitlines()[-1].startswith("dev.py: pip install into .venv failed (status 1")
    assert "Traceback" not in result.stderr
    assert not (repo / ".venv" / ".agl-installed").exists()
    assert (repo / ".venv" / ".agl-location").read_text() == str(repo / ".venv")


@pytest.mark.slow
def test_the_next_run_finishes_the_environment_rather_than_trusting_or_remaking_it(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, _ = first_run
    again = run_dev(repo, "demo")
    assert again.returncode == 1 and "-m pip install" in again.stdout
    assert "creating" not in again.stdout and "remaking" not in again.stdout


@pytest.mark.slow
def test_a_copied_or_moved_repository_remakes_its_environment(
    first_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """Its scripts' shebangs and editable installs point into the old place: kept, they would run the old code."""
    repo, _ = first_run
    moved = tmp_path / "moved repo"
    shutil.copytree(repo, moved, symlinks=True)
    dev = load_dev(moved)
    reason = dev.remake_reason(moved / ".venv", [], current=True)
    assert reason is not None and f"made at {repo / '.venv'}" in reason


@pytest.mark.slow
def test_an_environment_whose_python_is_gone_is_remade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Python a venv links to was removed or upgraded (pyenv, Homebrew): a current stamp is no proof."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    python = quick_venv(repo / ".venv")
    installs: list[Path] = []
    packages = [repo / "packages" / "agl-core"]
    dev.installed("main", ["pins"], packages, installs.append)
    python.unlink()
    python.symlink_to(tmp_path / "removed" / "python3.11")
    assert dev.installed("main", ["pins"], packages, installs.append) == python
    assert len(installs) == 2, "remade, then installed into"
    assert "remaking .venv: its Python does not run" in capsys.readouterr().out
    assert subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode == 0
    assert (repo / ".venv" / ".agl-location").read_text() == str(repo / ".venv")


def test_an_environment_without_pip_is_remade_before_installing(tmp_path: Path) -> None:
    """A venv whose making was interrupted during ensurepip has a Python but no pip."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    quick_venv(repo / ".venv", borrow_pip=False)
    assert "no working pip" in (dev.remake_reason(repo / ".venv", [], current=False) or "")
    assert dev.remake_reason(repo / ".venv", [], current=True) is None


@pytest.mark.slow
def test_a_package_no_longer_meant_for_an_environment_remakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package removed from packages/ (or moved to an environment of its own) keeps its entry points and
    pins in the environment it left, which pip install alone never takes away. Real pip, offline, in a
    path with a space: the tiny packages build with this environment's setuptools."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    quick_venv(repo / ".venv")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's spelling of --no-build-isolation
    dev.TOOLS, dev.PINS, dev.WITHOUT_DEPS = [], {}, {}
    extra = add_package(repo, "agl-extra")
    dev.ensure("main", [extra])
    everything = sorted((repo / "packages").iterdir())
    assert (repo / ".venv" / ".agl-installed").exists()
    assert dev.strays(repo / ".venv", everything) == []
    assert dev.remake_reason(repo / ".venv", everything, current=False) is None
    shutil.rmtree(extra)
    left = sorted((repo / "packages").iterdir())
    assert dev.strays(repo / ".venv", left) == ["agl-extra"]
    assert "agl-extra, no longer meant for it" in (dev.remake_reason(repo / ".venv", left, current=False) or "")


def test_the_stamp_is_gone_while_an_install_runs(tmp_path: Path) -> None:
    """A refresh that failed must not leave the previous stamp: were the pyproject changed back, that
    stamp would match an environment left half-changed."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    quick_venv(repo / ".venv")
    packages = [repo / "packages" / "agl-core"]
    stamp = repo / ".venv" / ".agl-installed"
    installs: list[bool] = []

    def install(python: Path) -> None:
        installs.append(stamp.exists())

    def failing_install(python: Path) -> None:
        installs.append(stamp.exists())
        sys.exit(1)  # as dev.pip does when pip fails

    dev.installed("main", ["pins"], packages, install)
    pyproject = packages[0] / "pyproject.toml"
    first = pyproject.read_text()
    pyproject.write_text(first.replace('version = "0"', 'version = "1"'))
    with pytest.raises(SystemExit):
        dev.installed("main", ["pins"], packages, failing_install)
    pyproject.write_text(first)
    dev.installed("main", ["pins"], packages, install)
    assert installs == [False, False, False]
    dev.installed("main", ["pins"], packages, install)
    assert len(installs) == 3, "a current stamp needs no install"


def test_a_pin_or_package_changed_in_dev_py_refreshes(tmp_path: Path) -> None:
    """The stamp covers dev.py's own lists (PINS, TOOLS, WITHOUT_DEPS, TOOL_ENVIRONMENTS) and an environment's
    packages, not only the pyprojects."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    core = [repo / "packages" / "agl-core"]

    def stamp() -> str:
        return dev.digest_of(dev.stamped("main", core), core)

    seen = {stamp()}
    for change in (
        lambda: dev.PINS["main"].append("numpy==2.0.0"),
        lambda: dev.WITHOUT_DEPS["main"].append("another-model==1"),
        lambda: dev.TOOLS.append("mypy==1.0"),
        lambda: core.append(add_package(repo, "agl-new")),
    ):
        change()
        assert stamp() not in seen
        seen.add(stamp())
    tool = dev.TOOL_ENVIRONMENTS["verl"]
    assert dev.tool_stamped(tool) != dev.tool_stamped(dev.ToolEnvironment(tool.variable, ("verl==0.9.2",)))


def test_ctrl_c_is_one_line_and_status_130(tmp_path: Path) -> None:
    """Ctrl-C reaches dev.py and what it runs alike: dev.py says so in a line, not a traceback of its own."""
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    quick_venv(repo / ".venv")
    packages = [repo / "packages" / name for name in dev.SHARED]
    dev.installed("main", dev.stamped("main", packages), packages, lambda python: None)  # as if installed
    (repo / "examples").mkdir()
    (repo / "examples" / "train_sentiment.py").write_text(
        "import sys\ntry:\n    print('ready', flush=True)\n    sys.stdin.read()\nexcept KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    demo = subprocess.Popen(
        [sys.executable, str(repo / "dev.py"), "demo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert demo.stdout is not None
    assert any(line.strip() == "ready" for line in iter(demo.stdout.readline, "")), "the demo never started"
    os.killpg(demo.pid, signal.SIGINT)
    _, stderr = demo.communicate(timeout=60)
    assert demo.returncode == 130
    assert stderr.strip() == "dev.py: interrupted; the next run finishes any environment left half-made"


def write_tests(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"test_{name}.py").write_text(f"def test_{name}() -> None:\n    pass\n")
    return folder


def test_a_selection_may_match_nothing_in_one_environment_but_not_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python3 dev.py test -k store` must not fail because CrewAI's environment has no test named so."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # these pytest runs need none of this environment's
    repo = scratch_repository(tmp_path)
    dev = load_dev(repo)
    python = Path(sys.executable)
    runs = [(python, [str(write_tests(repo / "main_tests", "store"))]), (python, [str(write_tests(repo / "crew"))])]
    dev.pytest_in(runs, ["-q", "-k", "store"])
    with pytest.raises(SystemExit) as nowhere:
        dev.pytest_in(runs, ["-q", "-k", "nothing_is_called_so"])
    assert nowhere.value.code == 1
    with pytest.raises(SystemExit) as empty:
        dev.pytest_in(runs[1:], [])
    assert empty.value.code == 5, "without a selection, an environment with no test is a failure"


def test_a_test_path_runs_in_the_environment_whose_package_holds_it(tmp_path: Path) -> None:
    """`python3 dev.py test packages/agl-core/tests/test_cli.py` ran that file in CrewAI's environment
    too, beside CrewAI's whole suite; paths are routed, options go everywhere."""
    repo = scratch_repository(tmp_path)
    crew = add_package(repo, "agl-instrument-crewai")
    (crew / "tests").mkdir()
    (crew / "tests" / "test_crew.py").write_text("")
    (repo / "packages" / "agl-core" / "tests").mkdir()
    (repo / "packages" / "agl-core" / "tests" / "test_cli.py").write_text("")
    dev = load_dev(repo)
    envs = {"main": [repo / "packages" / "agl-core"], "crewai": [crew]}
    from_core = repo / "packages" / "agl-core"
    options, paths = dev.split_selection(
        ["-k", "cli", "tests/test_cli.py::test_x", "../agl-instrument-crewai/tests"], from_core
    )
    assert options == ["-k", "cli"]
    assert dev.owned_by(paths, None, envs) == ["packages/agl-core/tests/test_cli.py::test_x"]
    assert dev.owned_by(paths, "crewai", envs) == ["packages/agl-instrument-crewai/tests"]
    assert dev.split_selection(["-x", "nowhere.py"], repo) == (["-x", "nowhere.py"], [])
