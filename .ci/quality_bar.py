"""Fail CI unless the pipeline's own metrics meet the quality bars of the offline default run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_RETENTION = 0.25        # RQ1: weights kept on ResNet20 / cifar10-jpeg airplane-vs-rest
MIN_FLOPS_REDUCTION = 0.60  # RQ2: fvcore FLOPs, non-zero weights only
MIN_DEEPSPARSE_REDUCTION = 0.40  # RQ2: median of interleaved pairs


def load(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        sys.exit(f"quality bar: {p} is missing; the pipeline did not write it")
    return json.loads(p.read_text())


failures = []
rq1 = load("metrics/reengineering.json")
for name, t in rq1["targets"].items():
    print(f"{name}: acc original {t['acc_original']:.4f}, re-engineered {t['acc_reengineered']:.4f}, "
          f"weights kept {t['weight_retention']:.2%}")
    if t["weight_retention"] > MAX_RETENTION:
        failures.append(f"{name}: {t['weight_retention']:.2%} of the weights kept > {MAX_RETENTION:.0%}")
    if t["acc_reengineered"] < t["acc_original"]:
        failures.append(f"{name}: re-engineered accuracy {t['acc_reengineered']:.4f} < original {t['acc_original']:.4f}")

rq2 = load("metrics/overhead.json")
export = load("results/export.json")
for name, t in rq2["targets"].items():
    ds = t.get("latency_reduction", t.get("latency"))
    print(f"{name}: FLOPs {-t['flops_reduction']:+.1%}, DeepSparse latency "
          f"{ds if isinstance(ds, str) else f'{-ds:+.1%}'}, onnxruntime latency {-t['ort_latency_reduction']:+.1%}")
    if t["flops_reduction"] < MIN_FLOPS_REDUCTION:
        failures.append(f"{name}: FLOPs reduction {t['flops_reduction']:.1%} < {MIN_FLOPS_REDUCTION:.0%}")
    if isinstance(ds, str):
        failures.append(f"{name}: no DeepSparse figure on this x86-64 CI machine ({ds})")
    elif ds < MIN_DEEPSPARSE_REDUCTION:
        failures.append(f"{name}: DeepSparse latency reduction {ds:.1%} < {MIN_DEEPSPARSE_REDUCTION:.0%}")
    check = export["targets"][name]["compact_check"]
    if check["identical_predictions"] != check["test_images"]:
        failures.append(f"{name}: compact model differs from the masked one on "
                        f"{check['test_images'] - check['identical_predictions']} test images")
MAX_ACC_DROP = 0.03  # RQ3: SeaM's ACC within 3 points of standard fine-tuning
MIN_DIR_STANDARD = 0.10  # RQ3: the attack must be real
rq3 = load("metrics/defect_inheritance.json")
print(f"defects: standard ACC {rq3['acc_standard']:.4f} DIR {rq3['dir_standard']:.4f}; "
      f"SeaM ACC {rq3['acc_seam']:.4f} DIR {rq3['dir_seam']:.4f} (removed {rq3['removed_rate_seam']:.1%})")
if rq3["dir_standard"] < MIN_DIR_STANDARD:
    failures.append(f"standard fine-tuning DIR {rq3['dir_standard']:.4f} < {MIN_DIR_STANDARD}: the attack is too weak")
if rq3["dir_seam"] >= rq3["dir_standard"]:
    failures.append(f"SeaM DIR {rq3['dir_seam']:.4f} is not lower than standard {rq3['dir_standard']:.4f}")
if rq3["acc_seam"] < rq3["acc_standard"] - MAX_ACC_DROP:
    failures.append(f"SeaM ACC {rq3['acc_seam']:.4f} more than {MAX_ACC_DROP:.0%} below standard {rq3['acc_standard']:.4f}")

if failures:
    sys.exit("quality bar not met:\n  " + "\n  ".join(failures))
print("quality bar met")
