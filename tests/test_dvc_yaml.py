"""dvc.yaml lists as deps every seam/ module each stage runs, so the cache never serves
a result of old code, and only the params the stage reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from conftest import REPO


def seam_imports(path: Path) -> set[str]:
    """seam/ module files imported by `path`, transitively."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                rel = name.replace(".", "/") + ".py"
                if (REPO / name.replace(".", "/") / "__init__.py").exists():  # a package
                    rel = name.replace(".", "/") + "/__init__.py"
                if name.startswith("seam") and (REPO / rel).exists() and rel not in seen and rel != "seam/__init__.py":
                    seen.add(rel)
                    todo.append(REPO / rel)
    return seen


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (stage["do"] if "foreach" in stage else stage) for name, stage in raw.items()}


def test_every_stage_depends_on_the_code_it_runs():
    for name, stage in stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        deps = set(stage["deps"])
        assert script in deps, f"{name}: {script} missing from deps"
        missing = seam_imports(REPO / script) - deps
        assert not missing, f"stage {name} runs {sorted(missing)} but does not list them as deps"
        extra = {d for d in deps if d.startswith("seam/")} - seam_imports(REPO / script)
        assert not extra, f"stage {name} lists {sorted(extra)} as deps but never imports them"


def test_stages_list_only_params_they_read():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        text = (REPO / script).read_text()
        for key in stage.get("params", []):
            top = key.split(".")[0]
            assert top in params, f"{name}: param {key} not in params.yaml"
            # The stage reads the section by name (get(params, "section...")).
            assert re.search(rf'"{top}[."]', text), f"{name} lists param {key} but {script} never reads it"


def test_stages_list_every_param_they_read():
    for name, stage in stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        read = set(re.findall(r'get\(params, f?"(\w+)', (REPO / script).read_text()))
        listed = {key.split(".")[0] for key in stage.get("params", [])}
        assert read <= listed, f"{name} reads params {sorted(read - listed)} that dvc.yaml does not list"
