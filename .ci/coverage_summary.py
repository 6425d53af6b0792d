"""Prints line and branch coverage of `keras_sgs/` and of `examples/` from
the combined data of `make coverage` (`coverage json`'s report)."""

import json
import pathlib
import sys

KEYS = ("covered_lines", "num_statements", "covered_branches", "num_branches")


def totals(files, folder):
    """Sums covered and total lines and branches of the files in `folder`."""
    sums = dict.fromkeys(KEYS, 0)
    for path, data in files.items():
        if pathlib.PurePath(path).parts[0] == folder:
            for key in KEYS:
                sums[key] += data["summary"][key]
    return sums


def main(report_path):
    files = json.loads(pathlib.Path(report_path).read_text())["files"]
    print("| folder | lines | line coverage | branches | branch coverage |")
    print("|---|---|---|---|---|")
    for folder in ("keras_sgs", "examples"):
        t = totals(files, folder)
        lines = t["covered_lines"] / t["num_statements"]
        branches = t["covered_branches"] / t["num_branches"]
        print(
            f"| {folder}/ | {t['covered_lines']}/{t['num_statements']} "
            f"| {lines:.2%} | {t['covered_branches']}/{t['num_branches']} "
            f"| {branches:.2%} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
