"""The checks of `stabench validate`: the two regimes, what each check compares, and the trials that needs."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TrialConfig, config_hash, load_config

SWEEP = "validation"


# Stress: ScaleLong's own backbone (a U-ViT, whose skip_linear sees the raw concat), 16 blocks = 8 long skips at
# 16x16, a high learning rate without clipping or warm-up. Width and batch are narrowed so that the whole suite
# fits a 2-core CPU. lr 1e-2 is the first of 2e-3, 5e-3, 1e-2 at which the positive control separated on seed 0
# (docs/validation.md: how the regime was calibrated; only the positive control was looked at).
STRESS = (
    "workload.backbone=uvit",
    "workload.preset=deep",
    "workload.resolution=16",
    "workload.width=64",
    "optim.batch_size=32",
    "optim.lr=1e-2",
    "optim.clip_norm=null",
    "optim.warmup_steps=0",
    "optim.steps=400",
    "model.dropout=0.0",
    "ema.betas=[0.99]",
    "eval.samples=0",
    "eval.grid=0",
    "eval.every=400",
    "eval.probe_every=10",
    "stability.burn_in=50",
)


# Quality: the default workload (8x8 digits, small UNet), scored by FID against the held-out split.
QUALITY = (
    "optim.steps=600",
    "optim.lr=1e-3",
    "ema.betas=[0.99]",
    "eval.every=600",
    "eval.samples=300",
    "eval.sampler_steps=25",
    "eval.grid=0",
)


# --fast: tiny sizes for the test suite (the table's structure, not its verdicts).
FAST = (
    "workload.preset=tiny",
    "workload.width=null",
    "optim.batch_size=16",
    "optim.steps=20",
    "eval.every=20",
    "eval.probe_every=5",
    "eval.probe_size=8",
    "stability.burn_in=5",
)


FAST_SAMPLES = ("eval.samples=40", "eval.sampler_steps=4")


REGIMES = {"stress": STRESS, "quality": QUALITY}


def regime_sweep(regime: str) -> str:
    """The sweep tag of a regime's records: one per regime, so each regime has its own leaderboard."""
    return f"{SWEEP}-{regime}"


CONTROL_NAMES = {"stress": "none", "quality": "linear-uniform"}  # each regime's control config, as labelled


# Each regime's leaderboard ranks by a quality readout that does not depend on the weighting kind: FID where the
# regime samples, else the unweighted probe loss at the end of training.
LEADERBOARD_METRICS = {"stress": "final_probe_loss", "quality": "fid_digits"}


@dataclass(frozen=True)
class Check:
    """One comparison: treatment vs control on `metric` in a regime, and what is expected of it."""

    kind: str  # positive control | negative control | ScaleLong direction | published direction
    claim: str
    regime: str
    metric: str
    treatment: tuple[str, ...]
    name: str = ""  # the treatment's label in the store (the control's is CONTROL_NAMES[regime])
    expect: str = "lower"  # lower: treatment < control; none: no difference
    source: str = ""
    other_seeds: bool = False  # the negative control: the treatment runs on seeds n..2n-1
    log: bool = False  # compare ln(metric): growth factors are multiplicative
    seed_factor: int = 1  # runs on seed_factor x --n-seeds seeds: the stress regime's outcome is nearly two-valued

    def n(self, n_seeds: int) -> int:
        """The number of seeds (pairs) this check compares at `--n-seeds n_seeds`."""
        return n_seeds * self.seed_factor

    @property
    def sweep(self) -> str:
        """The sweep tag of this check's records."""
        return regime_sweep(self.regime)

    def arm_name(self, arm: str) -> str:
        """The label of an arm's config (`<name>@<sweep>` on leaderboards)."""
        return self.name if arm == "treatment" and self.treatment else CONTROL_NAMES[self.regime]


# A stress run "collapsed" when its final probe loss is at least half that of predicting zero noise (1.0 for
# unit-variance eps): at lr 1e-2 runs either train (0.06-0.16) or fall back to ~1 (docs/validation.md). A diverged
# run counts as collapsed. COLLAPSE_BOUNDS are reported beside it to show the count does not hinge on the 0.5.
COLLAPSE_LOSS = 0.5


COLLAPSE_BOUNDS = (0.3, 0.5, 0.7)


CS = ("lsc.mode=constant", "lsc.kappa=0.5")


LS = ("lsc.mode=linear",)


MIN_SNR5 = ("timestep_weighting.kind=min_snr", "timestep_weighting.gamma=5")


CHECKS = (
    Check("positive control", "global clip 1.0 lowers instability", "stress", "instability", ("optim.clip_norm=1.0",),
          "clip-1", source="clipping bounds the update (Pascanu et al. 2013)", seed_factor=2),
    Check("positive control", "global clip 1.0 lowers the share of collapsed runs", "stress", "collapsed",
          ("optim.clip_norm=1.0",), "clip-1", source="clipping bounds the update (Pascanu et al. 2013)",
          seed_factor=2),
    Check("negative control", "one config under two names: no difference", "stress", "instability", (),
          expect="none", other_seeds=True),
    Check("negative control", "one config under two names: no difference", "quality", "fid_digits", (),
          expect="none", other_seeds=True),
    Check("ScaleLong direction", "CS (kappa 0.5) lowers decoder feature-norm growth", "stress",
          "decoder_norm_growth", CS, "cs-0.5", source="Huang et al. 2023, ScaleLong", log=True, seed_factor=2),
    Check("ScaleLong direction", "LS lowers decoder feature-norm growth", "stress", "decoder_norm_growth", LS,
          "ls", source="Huang et al. 2023, ScaleLong", log=True, seed_factor=2),
    Check("published direction", "cosine schedule lowers FID vs linear", "quality", "fid_digits",
          ("diffusion.schedule=cosine",), "cosine", source="Nichol & Dhariwal 2021"),
    Check("published direction", "Min-SNR-5 weighting lowers FID vs uniform", "quality", "fid_digits", MIN_SNR5,
          "min-snr-5", source="Hang et al. 2023"),
    Check("published direction", "CS (kappa 0.5) lowers instability vs none", "stress", "instability", CS,
          "cs-0.5", source="Huang et al. 2023, ScaleLong", seed_factor=2),
    Check("published direction", "LS lowers instability vs none", "stress", "instability", LS,
          "ls", source="Huang et al. 2023, ScaleLong", seed_factor=2),
)  # fmt: skip


# ScaleLong's Figure (U-ViT, decoder feature norm at 30k iterations, x1e4) as ratios to no scaling ("Org").
SCALELONG_RATIOS = {
    "depth 12": {"1/sqrt2": 1.4 / 2.0, "LS": 1.1 / 2.0, "CS": 1.0 / 2.0},
    "depth 16": {"1/sqrt2": 3.6 / 5.5, "LS": 2.2 / 5.5, "CS": 2.2 / 5.5},
}


def check_config(check: Check, arm: str, seed: int, fast: bool) -> TrialConfig:
    """The config of one arm ('treatment' or 'control') of a check at one seed."""
    regime = REGIMES[check.regime] + ((FAST + (FAST_SAMPLES if check.regime == "quality" else ())) if fast else ())
    arm_overrides = check.treatment if arm == "treatment" else ()
    return load_config(None, [*regime, *arm_overrides, f"seed={seed}"])


def seeds_of(check: Check, arm: str, n_seeds: int) -> list[int]:
    """The seeds an arm runs on (the negative control's second name runs on other seeds)."""
    n = check.n(n_seeds)
    first = n if check.other_seeds and arm == "treatment" else 0
    return list(range(first, first + n))


@dataclass(frozen=True)
class Job:
    """One trial the checks need: its config and where its record is filed (sweep and label)."""

    config: TrialConfig
    sweep: str
    name: str


def jobs(checks: tuple[Check, ...], n_seeds: int, fast: bool) -> list[Job]:
    """Every distinct (config, seed) the checks need, in a stable order."""
    seen, out = set(), []
    for check in checks:
        for arm in ("control", "treatment"):
            for seed in seeds_of(check, arm, n_seeds):
                cfg = check_config(check, arm, seed, fast)
                if (config_hash(cfg), seed) not in seen:
                    seen.add((config_hash(cfg), seed))
                    out.append(Job(cfg, check.sweep, check.arm_name(arm)))
    return out
