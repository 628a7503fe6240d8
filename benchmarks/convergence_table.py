"""Epochs to each retention level, per DVC experiment: the table of a convergence study.

    dvc exp run --queue -S 'reengineer.lr_mask=0.05,0.1,0.2' reengineer@airplane
    OMP_NUM_THREADS=1 dvc queue start -j 2          # two searches side by side on 2 cores
    uv run python benchmarks/convergence_table.py airplane --levels 0.2,0.15,0.12

For every finished experiment that ran `reengineer@<target>`, it reads the search's log
(`plots/reengineer/<target>.csv`) and artifact at that experiment's commit through
`dvc.api`, and prints the params that differ between the experiments, then the first epoch
that reached each retention level at an accuracy the stopping rule accepts (the selection
split's accuracy >= the original model's), the epochs run (the early stop may end a run),
the epoch the search kept, its retention and accuracies, and seconds per epoch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import tempfile

import dvc.api
from dvc.exceptions import DvcException

from seam.reengineer.artifact import load_artifact

KNOBS = ("alpha", "reengineer.")   # the params a search study varies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a target name from params.yaml (the reengineer@<target> stage)")
    parser.add_argument("--levels", default="0.2,0.15,0.12", help="comma-separated retention levels")
    parser.add_argument("experiments", nargs="*", help="experiment names (default: every finished one)")
    args = parser.parse_args()
    levels = [float(x) for x in args.levels.split(",")]

    runs = []
    for exp in dvc.api.exp_show():
        name = exp["Experiment"]
        if not name or exp["State"] not in (None, "Success") or (args.experiments and name not in args.experiments):
            continue
        run = read_run(exp, args.target)
        if run is not None:
            runs.append(run)
    if not runs:
        raise SystemExit(f"no finished experiment ran reengineer@{args.target} (dvc exp show lists them)")

    knobs = sorted({k for r in runs for k in r["params"] if k.startswith(KNOBS)
                    and len({json.dumps(x["params"].get(k)) for x in runs}) > 1})
    select_ons = {r["select_on"] for r in runs}
    select_on = select_ons.pop() if len(select_ons) == 1 else "selection"   # run experiments apart to compare
    head = ["experiment", *[k.removeprefix("reengineer.") for k in knobs], *[f"to {lv:.0%}" for lv in levels],
            "epochs", "kept ep", "retention", f"{select_on} acc", "test acc", "orig test", "s/epoch"]
    table = [head]
    for r in sorted(runs, key=lambda r: r["name"]):
        table.append([r["name"], *[show(r["params"].get(k)) for k in knobs],
                      *[str(e) if (e := first_epoch(r, lv)) is not None else "-" for lv in levels],
                      str(len(r["rows"])), str(r["selected"]) + ("" if r["reached"] else "*"),
                      f"{r['rows'][r['selected']]['retention']:.4f}",
                      f"{r['rows'][r['selected']][r['select_on'] + '_acc']:.4f}", f"{r['rows'][r['selected']]['test_acc']:.4f}",
                      f"{r['acc_original'].get('test', float('nan')):.4f}", f"{r['s_per_epoch']:.1f}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    originals = sorted({f"{r['acc_original'][r['select_on']]:.4f}" for r in runs})
    print(f"reengineer@{args.target}: first epoch with retention <= level and {select_on} acc >= the original's "
          f"({', '.join(originals)})")
    for row in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if not all(r["reached"] for r in runs):
        print(f"* no epoch reached the original's {select_on} accuracy: the rule kept the best accuracy - retention")


def read_run(exp: dict, target: str) -> dict | None:
    """One experiment's search on ``target``: params, log rows, artifact metadata; None if it has none."""
    rev = exp["rev"]
    try:
        log = dvc.api.read(f"plots/reengineer/{target}.csv", rev=rev)
        timing = json.loads(dvc.api.read(f"results/reengineer/{target}.json", rev=rev))
        blob = dvc.api.read(f"models/reengineered/{target}.pt", rev=rev, mode="rb")
    except (DvcException, FileNotFoundError):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "artifact.pt")
        with open(path, "wb") as f:
            f.write(blob)
        meta = load_artifact(path)["meta"]
    rows = [{k: (v if k == "phase" else v == "True" if k == "selected" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(log))]
    return {"name": exp["Experiment"], "params": {k: v for k, v in exp.items() if "." in k or k == "alpha"},
            "rows": rows, "selected": meta["selected_epoch"], "reached": meta["reached_target"],
            "select_on": meta["search"]["select_on"], "acc_original": meta["acc_original"], "s_per_epoch": timing["seconds"] / max(timing["epochs_run"], 1)}


def show(value) -> str:
    """A param as written in params.yaml (`dvc exp show` gives every number as a float)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def first_epoch(run: dict, level: float) -> int | None:
    """The first epoch at or below ``level`` retention whose selection accuracy reaches the original's."""
    target = run["acc_original"][run["select_on"]]
    for row in run["rows"]:
        if row["retention"] <= level and row[run["select_on"] + "_acc"] >= target:
            return int(row["epoch"])
    return None


if __name__ == "__main__":
    main()
