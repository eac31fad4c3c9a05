"""Fail when a committed source notebook carries outputs or execution counts (CI's nbstripout check)."""
from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    files = subprocess.run(["git", "ls-files", "*.ipynb"], capture_output=True, text=True).stdout.split()
    dirty = []
    for path in files:
        if path.startswith("runs/"):
            continue
        nb = json.load(open(path, encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
                dirty.append(path)
                break
    if dirty:
        print("source notebooks with outputs (run `nbstripout` on them):", *dirty, sep="\n  ", file=sys.stderr)
        return 1
    print(f"{len(files)} source notebooks are free of outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
