"""The validation report: the control table, the collapse counts and the per-seed values as Markdown."""

from __future__ import annotations

import math

from .checks import COLLAPSE_LOSS


def json_safe(x):
    """nan and inf as null: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def _num(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def render_table(rows: list[dict]) -> str:
    """The control table as Markdown."""
    head = (
        "| kind | claim | regime | metric | n | control | treatment | delta [95% CI] | p | p (Holm) | diverged c/t | "
        "verdict |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['claim']} | {r['regime']} | {r['metric']} | {r['n']} | {_num(r['control_mean'])} | "
            f"{_num(r['treatment_mean'])} | {_num(r['delta'])} [{_num(r['ci_lo'])}, {_num(r['ci_hi'])}] | "
            f"{_num(r['p'])} | {_num(r.get('p_holm'))} | {r['diverged_control']}/{r['diverged_treatment']} | "
            f"**{r['verdict']}** |"
        )
    return "\n".join(lines)


def render_per_seed(per_seed: dict[str, dict[str, list]]) -> str:
    """One line per regime and arm: `seed: value` in seed order."""

    def show(v) -> str:
        return " / ".join(_num(x) for x in v) if isinstance(v, list) else _num(v)

    return "\n".join(
        f"- {regime}, **{arm}**: " + ", ".join(f"{seed}: {show(v)}" for seed, v in values)
        for regime, arms in per_seed.items()
        for arm, values in sorted(arms.items())
    )


def render_collapse(collapse: dict) -> str:
    """The collapse counts as a Markdown table, one row per stress arm."""
    bounds = collapse["bounds"]
    head = "| arm | n | " + " | ".join(f"final probe loss ≥ {b:g}" for b in bounds) + " |"
    rows = [
        f"| {arm} | {v['n']} | " + " | ".join(str(k) for k in v["collapsed"]) + " |"
        for arm, v in collapse["arms"].items()
    ]
    b, c = collapse["discordant"]
    return "\n".join([head, "|" + "---|" * (len(bounds) + 2), *rows]) + (
        f"\n\nclip-1 against none, paired by seed at {COLLAPSE_LOSS:g}: {b} seeds collapsed only without clipping, "
        f"{c} only with it; exact McNemar p = {_num(collapse['mcnemar_p'])}."
    )


def render_markdown(summary: dict) -> str:
    """results/validation/README.md: the control table, ScaleLong's ratios beside ours, the regimes and the cost."""
    ours, theirs = summary["decoder_norm_ratio_to_none"], summary["scalelong_ratio_to_none"]
    ratio_rows = [
        f"| {name} | {_num(ours.get(name, math.nan))} | {_num(theirs['depth 12'][name])} | "
        f"{_num(theirs['depth 16'][name])} |"
        for name in ("CS", "LS")
    ]
    regimes = "\n".join(f"- **{k}**: `{' '.join(v)}`" for k, v in summary["regimes"].items())
    return f"""# Known-effect validation

Regenerate with `stabench validate{" --fast" if summary["fast"] else ""} --n-seeds {summary["n_seeds"]}` (records in
the store under sweeps `validation-stress` and `validation-quality`; an interrupted run resumes; each regime's
leaderboard is in `stress/` and `quality/`). Each row is a paired comparison over
n seeds (treatment − control, same seeds; the negative control runs one config on seeds 0..n−1 and on
n..2n−1), with a Student-t {summary["level"]:.0%} interval. Verdicts: for an expected decrease, *agrees* when the
interval lies below 0, *disagrees* when above, *inconclusive* otherwise; for the negative control, *passes*
when the interval covers 0. Diverged runs (instability = inf) are counted, not paired. Each verdict is at the 5%
level on its own; with {len(summary["checks"])} checks about one in twenty null comparisons reads as an effect, so
p (Holm) gives the family-wise adjusted p-value: only a row whose Holm p is below 0.05 survives the whole table.

{render_table(summary["checks"])}

## Decoder feature norm, ratio to no scaling

Ours: final decoder output norm on the probe batch, geometric mean over seeds of the per-seed ratio to `none`, in
the stress regime. ScaleLong (Huang et al. 2023): U-ViT decoder feature norm at 30k iterations.

| scaling | ours (stress regime) | ScaleLong depth 12 | ScaleLong depth 16 |
|---|---|---|---|
{chr(10).join(ratio_rows)}

## Collapsed runs

At lr 1e-2 a stress run either trains (final probe loss 0.06–0.16) or falls back to about the loss of predicting
zero noise (1.0): a nearly two-valued outcome that a mean hides. A run counts as collapsed when its final probe
loss is at least {COLLAPSE_LOSS:g} (a diverged run counts too); the other bounds show that the counts do not hinge on
that choice.

{render_collapse(summary["collapse"])}

## Per seed

The values behind the means (seed: value); in the stress regime each entry is instability / final probe loss.

{render_per_seed(summary["per_seed"])}

## Regimes

{regimes}

{summary["trials"]} trials, {summary["train_s_records"] / 60:.0f} minutes of training in all (the records' wall times,
including evaluation).
"""
