"""Replay stored records with the code as it is now: does training still give the numbers a record holds?

    python benchmarks/replay_records.py results/validation/confirmatory/store [--per-commit 1] [--workers 2]

A store filled over several commits (a long validation run resumed across a day's work) pairs arms trained by
different versions of the code. This script picks, for every (sweep, arm, commit) group of the store, its first
`--per-commit` records (lowest seed first), trains each config and seed again in a temporary store (one thread
per process, as the validation trains) and prints, per record, whether every scalar metric and every probe-curve
value came out the same (bit for bit) or the largest relative difference. Identical numbers mean the commits in
between did not change what those trials compute; any difference is printed with the metric it is in. Floating
point also depends on the CPU's instruction set (torch picks AVX2 or AVX-512 kernels at run time): a record trained
on another CPU can differ in the last digits with the code unchanged; `--show METRIC` prints a readout stored and
replayed, to see whether a difference reaches it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def groups(store_dir: Path, per_commit: int, sweep: str | None = None) -> list[dict]:
    """The first `per_commit` records (0: all) of every (sweep, arm, commit) group, lowest seed first."""
    from stabench.records.record import tags_of
    from stabench.records.store import Store

    by_group: dict[tuple, list[dict]] = {}
    for rec in Store(store_dir).records(**({"sweep": sweep} if sweep else {})):
        tags = tags_of(rec)
        key = (tags.get("sweep"), tags.get("baseline_point"), rec["versions"].get("git_sha", "?")[:7])
        by_group.setdefault(key, []).append(rec)
    first = [sorted(by_group[key], key=lambda r: r["seed"])[: per_commit or None] for key in sorted(by_group, key=str)]
    return [r for group in first for r in group]


def numbers(rec: dict) -> dict[str, float]:
    """Every scalar metric and every probe-curve value of a record, by name."""
    out = {f"metrics.{k}": v for k, v in rec["metrics"].items() if isinstance(v, int | float)}
    for name, values in rec["probes"].items():
        for i, v in enumerate(values):
            if isinstance(v, int | float):
                out[f"probes.{name}[{i}]"] = v
    return out


def relative_difference(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def replay(rec: dict, show: tuple[str, ...] = ()) -> dict:
    """Train the record's config and seed again; compare every number."""
    import torch

    from stabench.config import build_config
    from stabench.config.identity import config_hash
    from stabench.engine import run_trial

    torch.set_num_threads(1)
    cfg = build_config(rec["config"], source=rec["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        again = run_trial(cfg, tmp)
    stored, fresh = numbers(rec), numbers(again)
    diffs = {k: relative_difference(v, fresh[k]) for k, v in stored.items() if k in fresh}
    worst = max(diffs, key=diffs.__getitem__) if diffs else None
    return {
        "run_id": rec["run_id"],
        "same_hash": config_hash(cfg) == rec["config_hash"],
        "compared": len(diffs),
        "missing": sorted(set(stored) - set(fresh)),
        "identical": sum(d == 0.0 for d in diffs.values()),
        "worst": worst,
        "worst_rel_diff": diffs[worst] if worst else None,
        "shown": {m: (rec["metrics"].get(m), again["metrics"].get(m)) for m in show},
    }


def identical(row: dict) -> bool:
    return row["identical"] == row["compared"] and not row["missing"]


def describe(row: dict) -> str:
    """One replayed record's comparison, in words."""
    said = f"{row['identical']}/{row['compared']} numbers "
    if identical(row):
        said += "identical"
    else:
        said += f"equal; largest relative difference {row['worst_rel_diff']:.2e} in {row['worst']}"
        said += f"; missing from the replay: {', '.join(row['missing'])}" if row["missing"] else ""
    said += "".join(f"; {m} {stored} -> {fresh}" for m, (stored, fresh) in row["shown"].items())
    return said + ("" if row["same_hash"] else "; config hash differs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path)
    parser.add_argument("--per-commit", type=int, default=1, help="records replayed per (sweep, arm, commit); 0: all")
    parser.add_argument("--sweep", help="only the records of this sweep (e.g. validation-collapse)")
    parser.add_argument("--show", action="append", default=[], help="a metric to print stored -> replayed (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    chosen = groups(args.store, args.per_commit, args.sweep)
    print(f"replaying {len(chosen)} record(s) of {args.store} with the code as it is now")
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for rec, row in zip(chosen, pool.map(functools.partial(replay, show=tuple(args.show)), chosen)):
            tags = rec["tags"]
            rows.append({"sweep": tags.get("sweep"), "arm": tags.get("baseline_point"), "seed": rec["seed"],
                         "commit": rec["versions"].get("git_sha", "?")[:7], **row})  # fmt: skip
            print(f"{tags.get('sweep')} {tags.get('baseline_point')} seed {rec['seed']} (trained at "
                  f"{rows[-1]['commit']}): {describe(row)}")  # fmt: skip
    same = sum(map(identical, rows))
    print(f"{same} of {len(rows)} replayed record(s) identical bit for bit")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
