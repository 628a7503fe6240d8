"""Fail CI unless the pipeline's own metrics meet the quality bar of the offline default run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_RETENTION = 0.25  # weights kept on ResNet20 / cifar10-jpeg airplane-vs-rest

path = Path(sys.argv[1] if len(sys.argv) > 1 else "metrics/reengineering.json")
if not path.exists():
    sys.exit(f"quality bar: {path} is missing; the pipeline did not write its metrics")
metrics = json.loads(path.read_text())
failures = []
for name, t in metrics["targets"].items():
    print(f"{name}: acc original {t['acc_original']:.4f}, re-engineered {t['acc_reengineered']:.4f}, "
          f"weights kept {t['weight_retention']:.2%}")
    if t["weight_retention"] > MAX_RETENTION:
        failures.append(f"{name}: {t['weight_retention']:.2%} of the weights kept > {MAX_RETENTION:.0%}")
    if t["acc_reengineered"] < t["acc_original"]:
        failures.append(f"{name}: re-engineered accuracy {t['acc_reengineered']:.4f} < original {t['acc_original']:.4f}")
if failures:
    sys.exit("quality bar not met:\n  " + "\n  ".join(failures))
print("quality bar met")
