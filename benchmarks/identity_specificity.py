"""Identity specificity of the synthetic expressions: how wrong the linear "3DMM" transfer is.

    python benchmarks/identity_specificity.py [--train 0-19] [--test 1000-1009] [--json OUT.json]

For every unit, the 3DMM baseline adds the mean displacement of the training identities to each held-out
identity's neutral. Printed per unit: the baseline's mean vertex error as a fraction of the mean expression
displacement (sum of |baseline - truth| over held-out identities and vertices / sum of |truth|), then the
mean displacement over the vertices the unit moves (> 0.1 mm) and the peak displacement, in mm.
Acceptance bar (issue "Synthetic face factory"): the average over the 56 units is at least 15%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from expdiff_core import facs
from expdiff_core.synth.expressions import expression_displacement, mean_delta_transfer_error
from expdiff_core.synth.identity import sample_identity

BAR = 0.15


def seeds(text: str) -> list[int]:
    """``"0-19"`` or ``"1,5,9"`` -> list of seeds."""
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default="0-19", help="training identity seeds, e.g. 0-19 (default)")
    ap.add_argument("--test", default="1000-1009", help="held-out identity seeds, e.g. 1000-1009 (default)")
    ap.add_argument("--json", default=None, metavar="OUT.json", help="also write the numbers as JSON")
    args = ap.parse_args(argv)

    train = [sample_identity(s) for s in seeds(args.train)]
    test = [sample_identity(s) for s in seeds(args.test)]
    start = time.perf_counter()
    errors = mean_delta_transfer_error(train, test)
    def moving_mean(d: np.ndarray) -> float:
        m = np.linalg.norm(d, axis=1)
        return float(m[m > 0.01].mean())  # over the vertices the unit moves (> 0.1 mm)

    magnitude = {n: float(np.mean([moving_mean(expression_displacement(p, n)) * 10.0 for p in test]))
                 for n in facs.UNIT_NAMES}
    peak = {n: float(np.mean([np.linalg.norm(expression_displacement(p, n), axis=1).max() * 10.0
                              for p in test])) for n in facs.UNIT_NAMES}
    seconds = time.perf_counter() - start

    print(f"3DMM (mean training delta) on held-out identities: {len(train)} train, {len(test)} test")
    print(f"{'unit':18s} {'error/displacement':>18s} {'mean disp mm':>13s} {'peak disp mm':>13s}")
    for n in facs.UNIT_NAMES:
        print(f"{n:18s} {100 * errors[n]:17.1f}% {magnitude[n]:13.2f} {peak[n]:13.1f}")
    mean = float(np.mean(list(errors.values())))
    verdict = "PASS" if mean >= BAR else "FAIL"
    print(f"{'average':18s} {100 * mean:17.1f}%   (bar: >= {100 * BAR:.0f}%: {verdict})")
    print(f"min {100 * min(errors.values()):.1f}% ({min(errors, key=errors.get)}), "
          f"max {100 * max(errors.values()):.1f}% ({max(errors, key=errors.get)}); {seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "train_seeds": seeds(args.train), "test_seeds": seeds(args.test), "relative_error": errors,
            "mean_displacement_mm": magnitude, "peak_displacement_mm": peak, "average": mean, "bar": BAR,
            "pass": mean >= BAR}, indent=2))
    return 0 if mean >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
