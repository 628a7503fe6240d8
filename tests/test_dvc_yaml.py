"""dvc.yaml lists as deps every seam/ package each stage runs, so the cache never serves
a result of old code, and only the params the stage reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml
from conftest import REPO


def seam_packages(path: Path) -> set[str]:
    """The seam/ package folders `path` imports, transitively (a DVC dep on a folder covers
    every file in it)."""
    seen_files: set[Path] = set()
    packages: set[str] = set()
    todo = [path]
    while todo:
        file = todo.pop()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "seam" or len(parts) < 2:
                    continue
                packages.add(f"seam/{parts[1]}" if (REPO / "seam" / parts[1]).is_dir() else f"seam/{parts[1]}.py")
                rel = REPO / Path(*parts)
                for candidate in (rel.with_suffix(".py"), rel / "__init__.py"):
                    if candidate.is_file() and candidate not in seen_files:
                        seen_files.add(candidate)
                        todo.append(candidate)
                if (REPO / Path(*parts[:-1]) / "__init__.py").is_file():  # a package's __init__ runs too
                    init = REPO / Path(*parts[:-1]) / "__init__.py"
                    if init not in seen_files:
                        seen_files.add(init)
                        todo.append(init)
    return packages


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (stage["do"] if "foreach" in stage else stage) for name, stage in raw.items()}


def test_every_stage_depends_on_the_code_it_runs():
    for name, stage in stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        deps = set(stage["deps"])
        assert script in deps, f"{name}: {script} missing from deps"
        missing = seam_packages(REPO / script) - deps
        assert not missing, f"stage {name} runs {sorted(missing)} but does not list them as deps"
        extra = {d for d in deps if d.startswith("seam/")} - seam_packages(REPO / script)
        assert not extra, f"stage {name} lists {sorted(extra)} as deps but never imports them"


# what the Params methods a stage may call read
METHOD_READS = {"search_settings": {"alpha", "reengineer", "targets"}, "headline_targets": {"targets"}}


def params_read(script: Path) -> set[str]:
    """Key paths a stage reads from the params object: ``params.a.b`` -> ``a.b`` (a method call ends a path;
    ``params.method(...)`` reads what METHOD_READS says)."""
    text = script.read_text()
    read = set()
    for m in re.finditer(r"\bparams((?:\.(?!yaml\b)\w+)+)", text):
        parts = m.group(1).lstrip(".").split(".")
        if text[m.end():m.end() + 1] == "(":
            if len(parts) == 1:
                read |= METHOD_READS[parts[0]]
                continue
            parts = parts[:-1]
        read.add(".".join(parts))
    return read


def covers(listed: str, read: str) -> bool:
    return read == listed or read.startswith(listed + ".")


def test_stages_list_exactly_the_params_they_read():
    # Stages that run one script with different arguments (finetune standard|seam) read only
    # their branch's params: there the script's reads must be listed by one of them.
    listed_by_script: dict[str, set[str]] = {}
    for name, stage in stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        listed = stage.get("params", [])
        if name == "validate":  # the one stage that reads the whole file
            assert listed == [{"params.yaml": None}], listed
            continue
        listed_by_script.setdefault(script, set()).update(listed)
        read = params_read(REPO / script)
        for key in listed:
            assert any(covers(key, r) or key == "targets.${key}" for r in read), \
                f"{name} lists param {key} but {script} never reads it"
    for script, listed in listed_by_script.items():
        for key in params_read(REPO / script):
            # `targets.${key}`: a foreach stage reads its own target (and the names of all).
            assert any(covers(l, key) or (key == "targets" and l == "targets.${key}") for l in listed), \
                f"{script} reads params {key} that no stage running it lists in dvc.yaml"


def test_stage_paths_are_on_the_command_line():
    """Every data input and output of a stage is named in its cmd (the stage holds no project paths)."""
    for name, stage in stages().items():
        # results/params.ok orders a stage after `validate`; nothing reads it
        paths = [d for d in stage["deps"] if not d.startswith(("seam/", "stages/")) and d != "results/params.ok"]
        paths += [next(iter(p)) for p in stage.get("params", []) if isinstance(p, dict)]  # a params file
        for key in ("outs", "metrics", "plots"):
            paths += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(key, [])]
        args = stage["cmd"].split()
        for path in paths:
            assert path in args, f"{name}: {path} is not on its command line"
    for script in (REPO / "stages").glob("*.py"):
        assert not re.search(r'Path\("(data|models|metrics|plots|results)/', script.read_text()), script
    assert not re.search(r'"models/', (REPO / "seam" / "models" / "pretrained.py").read_text())


def test_every_stage_runs_after_validate():
    """A bad params file stops a run at `validate`, before DVC deletes another stage's outputs."""
    all_stages = stages()
    producer = {}
    for name, stage in all_stages.items():
        for key in ("outs", "metrics", "plots"):
            for o in stage.get(key, []):
                producer[next(iter(o)) if isinstance(o, dict) else o] = name

    def upstream(name: str, seen: set) -> set:
        for dep in all_stages[name]["deps"]:
            for out, stage in producer.items():
                if (dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")) and stage not in seen:
                    seen.add(stage)
                    upstream(stage, seen)
        return seen

    for name in all_stages:
        if name != "validate":
            assert "validate" in upstream(name, set()), f"{name} can run before validate"


def test_every_output_is_cached():
    """After a failed run, `dvc checkout` brings every previous result back (DVC deletes a
    stage's outputs before running it; an uncached one would be lost)."""
    for name, stage in stages().items():
        for key in ("outs", "metrics", "plots"):
            for o in stage.get(key, []):
                if isinstance(o, dict):
                    assert next(iter(o.values())).get("cache", True), f"{name}: {next(iter(o))} is not cached"
