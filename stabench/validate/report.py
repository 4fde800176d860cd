"""The validation report: the control table, the negative controls, the failure counts, ScaleLong's ratios beside
ours and the per-seed values, as JSON rows and Markdown."""

from __future__ import annotations

import math

from .readout import ALPHA, Result, ShamRate


def json_safe(x):
    """nan and inf as null: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}".replace("-", "−")


def result_row(r: Result) -> dict:
    """A check's outcome as one JSON-able row (the verdict and Holm p are added by the caller)."""
    c, d = r.check, r.delta
    ratio = r.ratio or (math.nan, math.nan, math.nan)
    return {
        "kind": c.kind,
        "claim": c.claim,
        "regime": c.regime,
        "readout": c.readout if c.control_value == c.readout else f"{c.readout} − {c.control_value}",
        "control": c.control_arm,
        "treatment": c.treatment,
        "test": c.test,
        "n": len(r.pairs),
        "excluded": r.excluded,
        "control_mean": sum(v for _, v, _ in r.pairs) / len(r.pairs) if r.pairs else math.nan,
        "treatment_mean": sum(v for *_, v in r.pairs) / len(r.pairs) if r.pairs else math.nan,
        "discordant": list(r.discordant) if r.discordant else None,
        "p": r.p,
        "delta": d.mean,
        "t_ci_lo": d.lo,
        "t_ci_hi": d.hi,
        "ratio": ratio[0] if r.ratio else None,
        "ratio_lo": ratio[1] if r.ratio else None,
        "ratio_hi": ratio[2] if r.ratio else None,
        "paper_ratio": c.paper_ratio or None,
        "source": c.source,
        "pairs": [list(p) for p in r.pairs],
    }


def sham_row(s: ShamRate) -> dict:
    """A negative control as one JSON-able row."""
    return {"regime": s.regime, "arm": s.arm, "readout": s.readout, "n_pairs": s.n_pairs, "splits": s.splits,
            "rejections": s.rejections, "rate": s.rate, "ci": list(s.ci)}  # fmt: skip


def _effect(r: dict) -> str:
    if r["discordant"] is not None:
        b, c = r["discordant"]
        return f"failed {_num(r['control_mean'])} → {_num(r['treatment_mean'])} ({b} vs {c} discordant)"
    effect = f"{_num(r['delta'])} [{_num(r['t_ci_lo'])}, {_num(r['t_ci_hi'])}]"
    if r["ratio"] is not None:
        effect += f"; ratio {_num(r['ratio'])} [{_num(r['ratio_lo'])}, {_num(r['ratio_hi'])}]"
    return effect


def render_table(rows: list[dict]) -> str:
    """The control table as Markdown."""
    lines = [
        "| kind | claim | regime | readout | n | effect (treatment − control) [95% t-CI] | exact test | p | "
        "p for the verdict | verdict |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['claim']} | {r['regime']} | {r['readout']} | {r['n']} | {_effect(r)} | {r['test']} | "
            f"{_num(r['p'])} | {_num(r['p_holm'])} | **{r['verdict']}** |"
        )
    return "\n".join(lines)


def render_negative(rows: list[dict]) -> str:
    """The negative controls as Markdown: the sign-flip test's false-positive rate on sham arms."""
    lines = ["| regime | arm split in two | readout | pairs | splits | rate of p ≤ 0.05 [95% CI] |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['arm']} | {r['readout']} | {r['n_pairs']} | {r['splits']} | "
                     f"{_num(r['rate'])} [{_num(r['ci'][0])}, {_num(r['ci'][1])}] |")  # fmt: skip
    return "\n".join(lines)


def render_failures(failures: dict) -> str:
    """Collapse-regime arms: failed runs at the end and at step 100, and at other collapse bounds."""
    bounds = sorted({b for v in failures.values() for b in v["by_bound"]})
    lines = ["| arm | n | failed (end) | failed at step 100 | diverged | " + " | ".join(f"loss ≥ {b}" for b in bounds)
             + " |", "|" + "---|" * (5 + len(bounds))]  # fmt: skip
    for name, v in failures.items():
        cells = [str(v["by_bound"][b]) for b in bounds]
        lines.append(f"| {name} | {v['n']} | {v['failed']} | {v['failed_at_100']} | {v['diverged']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def render_ratios(rows: list[dict], paper: dict) -> str:
    """Our decoder-norm ratios to `none` (geometric mean over seeds) beside ScaleLong's figure."""
    lines = ["| scaling | ours (n) [95% CI] | ScaleLong depth 12 | ScaleLong depth 16 |", "|---|---|---|---|"]
    for r in rows:
        if r["paper_ratio"]:
            name = r["paper_ratio"]
            lines.append(f"| {name} | {_num(r['ratio'])} ({r['n']}) [{_num(r['ratio_lo'])}, {_num(r['ratio_hi'])}] | "
                         f"{_num(paper['depth 12'][name], 2)} | {_num(paper['depth 16'][name], 2)} |")  # fmt: skip
    return "\n".join(lines)


def render_per_seed(per_seed: dict) -> str:
    """One line per regime and arm: `seed: value / value ...` over the regime's readouts."""
    lines = []
    for regime, arms in per_seed.items():
        names = next((list(v) for seeds in arms.values() for v in seeds.values()), [])
        lines.append(f"\n**{regime}** (each entry: {' / '.join(names)})\n")
        for arm_name, seeds in arms.items():
            values = ", ".join(f"{s}: " + " / ".join(_num(x) for x in v.values()) for s, v in seeds.items())
            lines.append(f"- {arm_name}: {values or '–'}")
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    """README.md of a validation run: how to regenerate it, the table, the negative controls and the raw values."""
    n = ", ".join(f"{k} {v}" for k, v in summary["n_pairs"].items())
    regimes = "\n".join(f"- **{k}**: `{' '.join(v)}`" for k, v in summary["regimes"].items())
    return f"""# Known-effect validation

Regenerate with `stabench validate{" --fast" if summary["fast"] else ""}` (the design: docs/validation.md; records
in the store under sweeps `validation-<regime>`; an interrupted run resumes). Pairs per check: {n}.

Each check pairs a treatment arm with a control arm by seed. The p-value is an exact test's: McNemar's on the
discordant pairs of a binary outcome (failed = diverged or collapsed), the sign-flip permutation test on the paired
differences otherwise. The Student-t {summary["level"]:.0%} interval of the mean difference is shown beside it, and
for ln readouts the geometric-mean ratio with its interval. A positive control checks the instrument and is read
at {ALPHA:g} on its own; the direction checks (ScaleLong's and the published ones) are the claims, read at
{ALPHA:g} after Holm's correction over them. *agrees* / *disagrees* by the sign of the effect, else *inconclusive*.

{render_table(summary["checks"])}

## Negative controls: the test's false-positive rate

One arm's 2n runs are split at random into two sham arms of n, paired by position, and tested with the same
sign-flip test, {summary["negative_controls"][0]["splits"] if summary["negative_controls"] else 0} times. A sound
test says "different" in at most {ALPHA:g} of the splits (the splits share runs, so the interval is indicative).
These are not in the Holm family.

{render_negative(summary["negative_controls"])}

## Decoder feature norm, ratio to no scaling

Ours: the final decoder feature norm on the probe batch, geometric mean over seeds of the per-seed ratio to `none`
in the ScaleLong regime. ScaleLong: U-ViT decoder feature norm at 30k iterations (CIFAR-10, GPU), read off the
paper's figure. Different scale and length: compare directions and rough sizes, not values.

{render_ratios(summary["checks"], summary["scalelong_ratio_to_none"])}

## Failed runs in the collapse regime

A run failed when it diverged or collapsed (final probe loss at least half the loss of predicting zero noise);
the other bounds show the counts do not hinge on the 0.5.

{render_failures(summary["failures"])}

## Per seed
{render_per_seed(summary["per_seed"])}

## Regimes

{regimes}

{summary["trials"]} trials, {summary["train_s_records"] / 60:.0f} minutes of training in all (the records' wall times).
"""
