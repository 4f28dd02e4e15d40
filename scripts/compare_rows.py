"""Compare two ``predict --format json`` outputs row by row (a redesign must not change them).

    git worktree add /tmp/before <old commit>
    (cd /tmp/before && python -m deepfake_detector.cli predict --format json FILES... > /tmp/before.json)
    deepfake-detector predict --format json FILES... > /tmp/after.json
    python scripts/compare_rows.py /tmp/before.json /tmp/after.json

Wall-clock ``timings`` are left out. Prints each differing key with its count and, for each
row whose confidence changed, the row's label, P(fake) and threshold; the last line gives the
number of identical rows.
"""

from __future__ import annotations

import json
import sys


def main(before: str, after: str) -> int:
    a, b = (json.load(open(p)) for p in (before, after))
    if len(a) != len(b):
        print(f"{len(a)} rows before, {len(b)} after")
        return 1
    diffs: dict[str, int] = {}
    same = 0
    for x, y in zip(a, b):
        x, y = ({k: v for k, v in r.items() if k != "timings"} for r in (x, y))
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        same += not keys
        for k in keys:
            diffs[k] = diffs.get(k, 0) + 1
        if "confidence" in keys:
            print(f"  {x['path'].rsplit('/', 1)[-1]}: {x['label']} {x['p_fake']} (threshold {x['threshold']}): "
                  f"{x['confidence']} -> {y['confidence']}")
    print("differing keys:", diffs or "none")
    print(f"{same} of {len(a)} rows identical")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
