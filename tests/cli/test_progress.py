"""`stabench train`'s progress: the evaluation's phases are named on the bar, and its step rate is the training
rate (the bar's clock skips evaluations)."""

import re

from stabench.engine import Trial
from tests.helpers import tiny_config


def test_the_bar_names_sampling_and_scoring_and_its_clock_skips_them(tmp_path, capsys):
    trial = Trial(tiny_config("eval.samples=16", "eval.sampler_steps=5"), tmp_path, progress=True)
    for _ in trial.run():
        pass
    record, err = trial.record, capsys.readouterr().err
    assert record["status"] == "ok"
    assert "sampling 16 images (raw)..." in err
    assert "scoring fid_digits (raw)..." in err
    assert re.search(r"train: 100%.*20/20", err)  # back to training after each evaluation
    assert record["eval_time_s"] > 0
    # the bar started when the first step did, and its clock was moved on by each evaluation's time
    skipped = trial.bar.start_t - record["first_step_unix"]
    assert skipped >= 0.9 * record["eval_time_s"] - 0.05
