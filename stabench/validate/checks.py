"""The design of `stabench validate`: the regimes, their arms, what each check compares and with which test.

The design is pre-registered in docs/validation.md (calibrated in a pilot on seeds PILOT_SEED.., which the
confirmatory run never uses); changing it after the confirmatory run has started makes that run exploratory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TrialConfig, config_hash, load_config
from ..leaderboard.paper import PAPER_NORMS

SWEEP = "validation"
FIRST_SEED = 100  # confirmatory seeds: 100, 101, ...; the earlier run used 0-9 and the pilot 1000.. (all seen)
PILOT_SEED = 1000

# ScaleLong's own backbone, narrowed to fit a 2-core CPU: a U-ViT with 16 blocks (8 long skips whose
# skip_linear sees the raw concat), 16x16 digits, width 64, batch 32. No sampling: every readout is on the fixed
# probe batch (unweighted loss, decoder features, probe gradient).
UVIT = (
    "workload.backbone=uvit",
    "workload.preset=deep",
    "workload.resolution=16",
    "workload.width=64",
    "optim.batch_size=32",
    "model.dropout=0.0",
    "eval.samples=0",
    "eval.grid=0",
    "ema.betas=[0.99]",
)

# Collapse: Adam at lr 1e-2 without warm-up or clipping. Most runs fall back to the zero-noise predictor within the
# first steps (an early Adam blow-up). The mechanism of the two positive controls: warm-up keeps the first updates
# small, clipping bounds each gradient. Whether a run fails without warm-up is decided by step 100, so those runs
# stop there; clipping's rescue shows later (exploratory run: no effect at step 100, p = 0.30; at step 400,
# p = 0.049 over 10 pairs), so the clip regime runs 400 steps (docs/validation.md).
UNSTABLE_ADAM = (
    *UVIT,
    "optim.lr=1e-2",
    "optim.clip_norm=null",
    "optim.warmup_steps=0",
    "eval.probe_every=10",
    "stability.burn_in=20",
)
COLLAPSE = (*UNSTABLE_ADAM, "optim.steps=100", "eval.every=100")
CLIP = (*UNSTABLE_ADAM, "optim.steps=400", "eval.every=400")

# ScaleLong's recipe (AdamW betas (0.99, 0.999), weight decay 0.03, warm-up, no clipping) at a CPU length long
# enough that the decoder feature norm grows (12x by step 300 in the pilot, 15-18x by step 500, then flat; the
# ratios between arms were settled from step 300 on); LSC scaling addresses that growth, so it is read off it.
SCALELONG = (
    *UVIT,
    "optim.lr=2e-3",
    "optim.betas=[0.99, 0.999]",
    "optim.weight_decay=0.03",
    "optim.warmup_steps=100",
    "optim.clip_norm=null",
    "optim.steps=300",
    "eval.every=300",
    "eval.probe_every=20",
    "stability.burn_in=100",
)

# Quality: the default workload (8x8 digits, small UNet), scored by FID against the held-out split; the raw
# weights and one EMA are both scored at the end, so EMA vs raw is paired within each run.
QUALITY = (
    "optim.steps=600",
    "optim.lr=1e-3",
    "ema.betas=[0.99]",
    "eval.every=600",
    "eval.samples=300",
    "eval.sampler_steps=25",
    "eval.grid=0",
)

REGIMES = {"collapse": COLLAPSE, "clip": CLIP, "scalelong": SCALELONG, "quality": QUALITY}

# Pairs per check in the confirmatory run, by regime (docs/validation.md: why these n). With Holm over the 6
# direction checks the smallest p must reach 0.05 / 6; an exact sign-flip test cannot go below 2 / 2^n, so n = 10.
N_PAIRS = {"collapse": 12, "clip": 10, "scalelong": 10, "quality": 10}

# --fast: tiny sizes for the test suite (the table's structure, not its verdicts).
FAST = (
    "workload.preset=tiny",
    "workload.width=null",
    "optim.batch_size=16",
    "optim.steps=20",
    "optim.warmup_steps=0",
    "eval.every=20",
    "eval.probe_every=5",
    "eval.probe_size=8",
    "stability.burn_in=5",
)
FAST_SAMPLES = ("eval.samples=40", "eval.sampler_steps=4")


@dataclass(frozen=True)
class Arm:
    """One config of a regime, under a label (`<name>@validation-<regime>` on leaderboards)."""

    regime: str
    name: str
    overrides: tuple[str, ...] = ()


CS = ("lsc.mode=constant", "lsc.kappa=0.5")
MIN_SNR5 = ("timestep_weighting.kind=min_snr", "timestep_weighting.gamma=5")

ARMS = (
    Arm("collapse", "none"),
    Arm("collapse", "warmup-20", ("optim.warmup_steps=20",)),
    Arm("clip", "none"),
    Arm("clip", "clip-1", ("optim.clip_norm=1.0",)),
    Arm("scalelong", "none"),
    Arm("scalelong", "inv-sqrt2", ("lsc.mode=inv_sqrt2",)),
    Arm("scalelong", "cs-0.5", CS),
    Arm("scalelong", "ls", ("lsc.mode=learnable",)),  # ScaleLong's LS: one learnable gate shared by all skips
    Arm("quality", "linear-uniform"),
    Arm("quality", "cosine", ("diffusion.schedule=cosine",)),
    Arm("quality", "min-snr-5", MIN_SNR5),
)
CONTROL_NAMES = {"collapse": "none", "clip": "none", "scalelong": "none", "quality": "linear-uniform"}


def arm(regime: str, name: str) -> Arm:
    """The arm called `name` in `regime`."""
    return next(a for a in ARMS if a.regime == regime and a.name == name)


@dataclass(frozen=True)
class Check:
    """One confirmatory comparison: treatment vs control arm, paired by seed, on a readout, with an exact test.

    `readout` names how a record becomes a number (validate/readout.py: READOUTS); `control_readout` differs only
    where both sides come from the same run (EMA vs raw weights)."""

    kind: str  # positive control (tested alone: it checks the instrument) | ScaleLong / published direction (Holm)
    claim: str
    regime: str
    treatment: str
    readout: str
    test: str  # mcnemar (binary readout) | sign-flip (continuous readout)
    source: str
    control: str = ""  # default: the regime's control arm
    control_readout: str = ""  # default: `readout`
    paper_ratio: str = ""  # ScaleLong's figure to set the geometric-mean ratio beside (key of SCALELONG_RATIOS)

    @property
    def in_family(self) -> bool:
        """Whether the check is one of the claims Holm's correction runs over (positive controls are not)."""
        return self.kind != "positive control"

    @property
    def control_arm(self) -> str:
        return self.control or CONTROL_NAMES[self.regime]

    @property
    def control_value(self) -> str:
        return self.control_readout or self.readout

    @property
    def sweep(self) -> str:
        return regime_sweep(self.regime)


SCALELONG_SOURCE = "Huang et al. 2023, ScaleLong (U-ViT feature norm at 30k iterations)"

CHECKS = (
    Check("positive control", "warm-up (20 steps) lowers the share of failed runs", "collapse", "warmup-20",
          "failed", "mcnemar", "warm-up keeps Adam's first updates small (Goyal et al. 2017; Liu et al. 2020)"),
    Check("positive control", "global clip 1.0 lowers the final probe loss", "clip", "clip-1",
          "ln final_probe_loss", "sign-flip", "clipping bounds each update (Pascanu et al. 2013)"),
    Check("ScaleLong direction", "1/sqrt2 scaling lowers the decoder feature norm", "scalelong", "inv-sqrt2",
          "ln decoder_norm", "sign-flip", SCALELONG_SOURCE, paper_ratio="1/sqrt2"),
    Check("ScaleLong direction", "CS (kappa 0.5) lowers the decoder feature norm", "scalelong", "cs-0.5",
          "ln decoder_norm", "sign-flip", SCALELONG_SOURCE, paper_ratio="CS"),
    Check("ScaleLong direction", "LS (learnable, shared) lowers the decoder feature norm", "scalelong", "ls",
          "ln decoder_norm", "sign-flip", SCALELONG_SOURCE, paper_ratio="LS"),
    Check("published direction", "cosine schedule lowers FID vs linear", "quality", "cosine", "fid_digits",
          "sign-flip", "Nichol & Dhariwal 2021"),
    Check("published direction", "Min-SNR-5 weighting lowers FID vs uniform", "quality", "min-snr-5", "fid_digits",
          "sign-flip", "Hang et al. 2023"),
    Check("published direction", "EMA (0.99) weights have lower FID than the raw weights", "quality",
          "linear-uniform", "fid_digits@ema_0.99", "sign-flip", "Polyak averaging; Song & Ermon 2020",
          control_readout="fid_digits@raw"),
)  # fmt: skip

# Negative controls: the false-positive rate of the suite's own test, measured by splitting one arm's runs at random
# into two sham arms many times (outside the Holm family). That arm runs 2n seeds for it.
NEGATIVE_CONTROLS = (("collapse", "none", "ln final_probe_loss"),)
SHAM_SPLITS = 2000

# Descriptive readouts shown per arm (not tested): the weighting-free gradient statistics and the growth.
DESCRIPTIVE = ("ln decoder_norm_growth", "probe_grad_cv", "probe_grad_osc", "probe_loss_osc")

# ScaleLong's figure (U-ViT, decoder feature norm at 30k iterations, x1e4) as ratios to no scaling ("Org").
PAPER_MODE_NAMES = {"1/sqrt2": "inv_sqrt2", "LS": "learnable", "CS": "constant"}  # as the checks name them
SCALELONG_RATIOS = {
    f"depth {depth}": {name: norms[mode] / norms["none"] for name, mode in PAPER_MODE_NAMES.items()}
    for depth, norms in PAPER_NORMS.items()
}

# Each regime's leaderboard ranks by a readout that does not depend on the weighting kind: FID where the regime
# samples, else the unweighted probe loss at the end of training.
LEADERBOARD_METRICS = {
    "collapse": "final_probe_loss",
    "clip": "final_probe_loss",
    "scalelong": "final_probe_loss",
    "quality": "fid_digits",
}


def regime_sweep(regime: str) -> str:
    """The sweep tag of a regime's records: one per regime, so each regime has its own leaderboard."""
    return f"{SWEEP}-{regime}"


def seeds(regime: str, n_pairs: int | None, negative: bool = False) -> list[int]:
    """The confirmatory seeds of a regime's checks (2n for the arm a negative control splits)."""
    n = n_pairs or N_PAIRS[regime]
    return list(range(FIRST_SEED, FIRST_SEED + (2 * n if negative else n)))


def arm_config(a: Arm, seed: int, fast: bool) -> TrialConfig:
    """The config of one arm at one seed."""
    fast_overrides = (FAST + (FAST_SAMPLES if a.regime == "quality" else ())) if fast else ()
    return load_config(None, [*REGIMES[a.regime], *fast_overrides, *a.overrides, f"seed={seed}"])


@dataclass(frozen=True)
class Job:
    """One trial the checks need: its config and where its record is filed (sweep and label)."""

    config: TrialConfig
    sweep: str
    name: str


def arm_seeds(n_pairs: int | None) -> list[tuple[Arm, list[int]]]:
    """Every arm with the seeds the checks and negative controls need of it."""
    split = {(regime, name) for regime, name, _ in NEGATIVE_CONTROLS}
    return [(a, seeds(a.regime, n_pairs, negative=(a.regime, a.name) in split)) for a in ARMS]


def jobs(n_pairs: int | None, fast: bool) -> list[Job]:
    """Every distinct (config, seed) the design needs, short regimes first, in a stable order."""
    order = list(REGIMES)
    out, seen = [], set()
    for a, arm_seed_list in sorted(arm_seeds(n_pairs), key=lambda x: order.index(x[0].regime)):
        for seed in arm_seed_list:
            cfg = arm_config(a, seed, fast)
            if (config_hash(cfg), seed) not in seen:
                seen.add((config_hash(cfg), seed))
                out.append(Job(cfg, regime_sweep(a.regime), a.name))
    return out
