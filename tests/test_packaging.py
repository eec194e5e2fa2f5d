"""The distribution: one import name (`llmreel`), an addon users can find, and a layered package.

`pip install llmreel` used to put two generic top-level packages, `proxy` and `addons`, into
site-packages; the popular `proxy.py` package also installs `proxy`, so one overwrote the other.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
UV = os.environ.get("UV") or "uv"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([UV, "build", "--wheel", "--offline", "-q", "-o", str(out)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    (built,) = out.glob("llmreel-*.whl")
    return built


def test_the_wheel_claims_only_the_llmreel_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"llmreel", next(t for t in tops if t.endswith(".dist-info"))}
    assert "llmreel/addons/recorder.py" in names and "llmreel/py.typed" in names
    shipped = {n.removeprefix("llmreel/").removesuffix(".py") for n in names if n.endswith(".py")}
    for source in _sources():
        assert _module_path(source) in shipped, f"{source} is not in the wheel"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {"llmreel" + _dotted(init.parent) for init in _sources() if init.name == "__init__.py"}
    assert found == listed, "add new subpackages to [tool.setuptools] packages"


def test_installed_beside_proxy_py_both_work(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([UV, "venv", "-q", "--offline", "-p", sys._base_executable, str(venv)],  # type: ignore[attr-defined]
                   check=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    # The locked versions (from uv's cache: no network), proxy.py among them (a dev dependency).
    pins = tmp_path / "pins.txt"
    subprocess.run([UV, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev", "-q",
                    "-o", str(pins)], check=True, cwd=REPO, timeout=120)  # fmt: skip
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    proxy_py = next(p["version"] for p in lock["package"] if p["name"] == "proxy-py")
    pins.write_text(pins.read_text() + f"proxy.py=={proxy_py}\n")
    subprocess.run([UV, "pip", "install", "-q", "--offline", "--no-deps", "-r", str(pins), str(wheel)], check=True,
                   env={**env, "VIRTUAL_ENV": str(venv)}, cwd=tmp_path, timeout=300)  # fmt: skip
    python, llmreel = str(venv / "bin" / "python"), str(venv / "bin" / "llmreel")
    probe = (
        "import proxy, llmreel.cli.main, llmreel.addons.recorder\n"
        "from proxy.proxy import Proxy\n"  # proxy.py's own module is intact
        "print(proxy.__file__)\n"
    )
    out = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "site-packages/proxy/" in out.stdout
    helped = subprocess.run(
        [llmreel, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert helped.returncode == 0 and "record, replay" in helped.stdout, helped.stderr
    found = subprocess.run(
        [llmreel, "addon-path"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    addon = Path(found.stdout.strip())
    assert addon.is_file() and str(addon).startswith(str(venv)), found.stdout + found.stderr
    # mitmproxy's own script loader (what `mitmdump -s` uses) loads the installed addon.
    load = (
        "import sys\nfrom mitmproxy.addons.script import load_script\n"
        "module = load_script(sys.argv[1])\nprint(type(module.addons[0]).__name__)\n"
    )
    loaded = subprocess.run([python, "-c", load, str(addon)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)  # fmt: skip
    assert loaded.stdout.strip() == "Recorder", loaded.stderr


# --- layering -----------------------------------------------------------------------------

#: Lower layers never import higher ones: request -> key -> store -> response -> usage -> log.
LAYERS = ["core", "providers", "storage", "log", "metering", "lab", "engine", "ui", "addons", "cli", "testing"]


def test_no_package_imports_a_higher_layer_and_there_are_no_cycles() -> None:
    graph = {_module_path(s).replace("/", "."): _imports(s) for s in _sources()}
    for module, imported in graph.items():
        mine = module.split(".", 1)[0]
        for target in imported:
            theirs = target.split(".", 1)[0]
            if theirs in LAYERS and mine in LAYERS:
                assert LAYERS.index(theirs) <= LAYERS.index(mine), f"{module} imports {target}"
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def _sources() -> Iterator[Path]:
    yield from sorted((REPO / "proxy").rglob("*.py"))
    yield from sorted((REPO / "addons").rglob("*.py"))


def _dotted(folder: Path) -> str:
    if folder.is_relative_to(REPO / "addons"):
        return ".addons" + "".join(f".{p}" for p in folder.relative_to(REPO / "addons").parts)
    return "".join(f".{p}" for p in folder.relative_to(REPO / "proxy").parts)


def _module_path(source: Path) -> str:
    base = "addons/" + source.relative_to(REPO / "addons").as_posix() if source.is_relative_to(
        REPO / "addons") else source.relative_to(REPO / "proxy").as_posix()  # fmt: skip
    return base.removesuffix(".py")


def _imports(source: Path) -> set[str]:
    """llmreel modules imported at run time (type-only imports cannot form a cycle)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmreel."):
            found.add(node.module.removeprefix("llmreel."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("llmreel.") for a in node.names if a.name.startswith("llmreel.")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    def resolve(name: str) -> str | None:
        return (
            name if name in graph else (f"{name}.__init__" if f"{name}.__init__" in graph else None)
        )

    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in graph[node]:
            nxt = resolve(target)
            if nxt is None or nxt.endswith("__init__"):
                continue  # package __init__ re-exports are facades, not dependencies
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in graph:
        if start not in state and (found := walk(start)):
            return found
    return None
