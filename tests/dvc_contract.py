"""What dvc.yaml must declare, found from the code: each stage's Python dependencies (its script and every
`hatetune` / `stages` module it imports, transitively, found statically with `ast`; imports inside functions
count too) and the project paths the `paths` module defines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hatetune", "stages")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """`hatetune.x` -> hatetune/x.py (a package -> its __init__.py); None for third-party modules."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Project modules `path` imports anywhere in its body (`from . import x` resolved against its package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {m for m in found if module_file(m, root) is not None}


def python_deps(script_module: str, root: Path = ROOT) -> set[str]:
    """The files (relative, posix) a stage script needs: itself and every project module it imports,
    transitively, with the package `__init__.py` files importing them runs."""
    todo, seen = [script_module], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += sorted(imported_modules(module_file(module, root), root))
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages' __init__.py
    return {module_file(m, root).relative_to(root).as_posix() for m in seen}


def stage_script(cmd: str) -> str:
    """`python -m stages.evaluate eval.adapter=false` -> `stages.evaluate`."""
    match = re.search(r"python\S* -m (\S+)", cmd)
    if not match:
        raise ValueError(f"not a `python -m <module>` stage command: {cmd!r}")
    return match.group(1)


def declared_python_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}


def python_dep_problems(dvc: dict, root: Path = ROOT) -> list[str]:
    """Per stage, the Python files dvc.yaml should list but does not, and those it lists but the stage does not
    run. Package `__init__.py` files are left out of both (tests check they hold no code)."""
    problems = []
    for name, stage in dvc["stages"].items():
        needed = {p for p in python_deps(stage_script(stage["cmd"]), root) if not p.endswith("__init__.py")}
        declared = declared_python_deps(stage)
        problems += [f"stage {name}: missing dep {p}" for p in sorted(needed - declared)]
        problems += [f"stage {name}: dep {p} is not imported" for p in sorted(declared - needed)]
    return problems


def fill_templates(text: str, params: dict) -> str:
    """`data/raw/${task.name}` -> `data/raw/dynahate` (DVC's templating of dvc.yaml from params.yaml)."""
    def value(match):
        node = params
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", value, text)


def data_paths(dvc: dict, params: dict) -> set[str]:
    """Every non-Python path dvc.yaml names (deps, outs, metrics, plots), templates filled in."""
    found = set()

    def add(entry):
        path = entry if isinstance(entry, str) else next(iter(entry))
        if not path.endswith(".py"):
            found.add(fill_templates(path, params))

    for stage in dvc["stages"].values():
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                add(entry)
    for entry in dvc.get("plots", []):
        add(entry)
    return found
