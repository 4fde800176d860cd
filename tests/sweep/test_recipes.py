"""The launch recipes of docs/recipes/ (SLURM with Ray, a SLURM array on PostgreSQL, `ray job submit`, a KubeRay
RayJob): their commands as far as one machine allows. Every `stabench` and `ray start` command they run, as bash
expands it, parses with the real command line (options, types, choices); the space files they name exist; two
PostgreSQL array tasks run at once for real (`-m slow`); the SLURM Ray script runs whole here (`-m slow`), with
only `srun` and `scontrol`, the scheduler, standing in."""

import json
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import click
import optuna
import pytest
import yaml

from stabench.cli import main
from stabench.records.store import Store
from tests.helpers import space_file
from tests.sweep.postgres import postgres_url  # noqa: F401  (fixture)
from tests.sweep.ray_nodes import free_port, ray_env, ray_temp_dir, stop

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "docs" / "recipes"
BIN = Path(sys.executable).parent
SCRIPTS = ["slurm-ray.sbatch", "slurm-postgres.sbatch", "ray-job-submit.sh"]

# Stand-ins for the scheduler and the cluster tools: each records its argv (one JSON line) and succeeds; scontrol
# lists two nodes.
RECORDER = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$(basename "$0")" "$@" >> "$RECORDED"
[ "$(basename "$0") $1" = "scontrol show" ] && printf 'node1\\nnode2\\n'
exit 0
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def recorded_commands(tmp_path: Path, script: str) -> list[list[str]]:
    """Run `script` with bash, every external command it calls recorded instead of run."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name in ("stabench", "ray", "srun", "scontrol"):
        executable(fake / name, RECORDER)
    log = tmp_path / f"{script}.commands"
    env = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "RECORDED": str(log),
        "HOME": str(tmp_path),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "STUDY_STORAGE": "postgresql+psycopg2://stabench:pw@db/stabench",
        "HEAD_IP": "10.0.0.1",
    }
    out = subprocess.run(["bash", str(RECIPES / script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = settled_lines(log)  # backgrounded commands (`srun ray start ... &`) may record after the script ends
    return [json.loads(line) for line in lines]


def settled_lines(log: Path, quiet_s: float = 1.0, timeout_s: float = 20) -> list[str]:
    """The lines of `log` once no new line has come for `quiet_s`."""
    deadline, lines, since = time.time() + timeout_s, [], time.time()
    while time.time() < deadline:
        now = log.read_text().splitlines() if log.exists() else []
        if now != lines:
            lines, since = now, time.time()
        elif time.time() - since >= quiet_s:
            break
        time.sleep(0.1)
    return lines


def parse(group: click.Group, argv: list[str]) -> click.Context:
    """Parse a subcommand's command line as `group` does (options, types, choices), without running it."""
    name, *rest = argv
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"no command '{name}'"
    return command.make_context(name, rest, parent=click.Context(group, info_name=group.name))


def parse_stabench(argv: list[str]) -> click.Context:
    return parse(main, argv)


def parse_ray(argv: list[str]) -> click.Context:
    from ray.scripts.scripts import cli

    return parse(cli, argv)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_of_a_recipe_parses(tmp_path, script):
    commands = recorded_commands(tmp_path, script)
    if script == "ray-job-submit.sh":  # the driver's command follows `--`
        (submit,) = commands
        assert submit[:3] == ["ray", "job", "submit"]
        commands = [submit[submit.index("--") + 1 :]]
    sweeps = [c[1:] for c in commands if c[:2] == ["stabench", "sweep"]]
    assert len(sweeps) == 1
    ctx = parse_stabench(sweeps[0])
    assert (REPO / ctx.params["space_file"]).is_file()
    assert ctx.params["store"].is_absolute()  # a shared mount, the same path on every node
    if script != "slurm-postgres.sbatch":
        assert ctx.params["backend"] == "ray"
        assert ctx.params["gpus_per_trial"] is not None  # trials wait for GPU nodes instead of running on CPUs
    else:
        assert ctx.params["study_storage"].startswith("postgresql")
    for other in (c[1:] for c in commands if c[0] == "stabench" and c[1] != "sweep"):
        parse_stabench(other)
    for start in (c[1:] for c in commands if c[:1] == ["srun"] and "ray" in c):
        parse_ray(start[start.index("ray") + 1 :])


def test_the_slurm_ray_script_starts_a_head_and_a_worker_and_joins_them(tmp_path):
    commands = recorded_commands(tmp_path, "slurm-ray.sbatch")
    starts = [c[c.index("ray") + 1 :] for c in commands if c[0] == "srun" and "ray" in c]
    assert len(starts) == 2  # node1: the head, node2: a worker
    head, worker = (parse_ray(s).params for s in starts)
    assert head["head"] is True
    assert head["num_cpus"] == 0  # with worker nodes, the head trains nothing
    assert worker["address"] == "10.0.0.1:6379"
    sweep = parse_stabench(next(c[1:] for c in commands if c[:2] == ["stabench", "sweep"]))
    assert sweep.params["address"] == "10.0.0.1:6379"


def test_the_kuberay_job_mounts_the_store_on_every_pod_and_its_entrypoint_parses():
    docs = list(yaml.safe_load_all((RECIPES / "kuberay-rayjob.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["stabench", "sweep"]
    ctx = parse_stabench(argv[1:])
    store = str(ctx.params["store"])
    assert (REPO / ctx.params["space_file"]).is_file()
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(store.startswith(m + "/") for m in mounts), (container["name"], mounts)
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        assert set(claims.values()) == {"stabench-store"}
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    import ray

    assert cluster["rayVersion"] == ray.__version__  # the image's Ray must be the one the recipe names


@pytest.mark.slow
def test_two_postgres_array_tasks_run_one_sweep_into_the_shared_study(tmp_path, postgres_url):  # noqa: F811
    """Two array tasks at once, for real, on one PostgreSQL study whose URL each reads from a file only its owner
    can read (the recipe's default): the study's budget is shared, each trial recorded once."""
    db_file = tmp_path / "db"
    db_file.write_text(postgres_url)
    db_file.chmod(0o600)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "SPACE": str(space_file(tmp_path, trials=2)),
        "STORE": str(tmp_path / "store"),
        "N_TRIALS": "2",
        "STABENCH_DB_FILE": str(db_file),
    }
    tasks = [
        subprocess.Popen(
            ["bash", str(RECIPES / "slurm-postgres.sbatch")],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert not any(postgres_url in o for o in outs)  # the password-bearing URL is never printed
    study = optuna.load_study(study_name="t", storage=postgres_url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    records = list(Store(tmp_path / "store").records(sweep="t"))
    assert len({(r["config_hash"], r["seed"]) for r in records}) == len(records) == 2


@pytest.mark.slow
def test_the_slurm_ray_script_runs_a_sweep_on_one_machine(tmp_path):
    """The whole script on a one-node 'allocation': srun runs its command here, scontrol names this host."""
    from tests.helpers import stop_ray

    stop_ray()  # this test's Ray is its own cluster
    fake = tmp_path / "bin"
    fake.mkdir()
    executable(fake / "srun", '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -w) shift 2;; -*) shift;; *) break;; '
               'esac; done\nexec "$@"\n')  # fmt: skip
    executable(fake / "scontrol", "#!/bin/sh\nhostname\n")
    temp_dir = ray_temp_dir()
    env = {
        **ray_env(temp_dir),
        "PATH": f"{fake}:{BIN}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_CPUS_PER_TASK": "2",
        "HEAD_IP": "127.0.0.1",
        "RAY_PORT": str(free_port()),
        "SPACE": str(space_file(tmp_path, trials=1)),
        "STORE": str(tmp_path / "store"),
        "N_TRIALS": "1",
        "GPUS_PER_TRIAL": "0",
        "CPUS_PER_TRIAL": "1",
    }
    started = time.time()
    # a file, not a pipe: the backgrounded `ray start --block` keeps its stdout open after the script ends
    with open(tmp_path / "job.log", "w") as log:
        proc = subprocess.Popen(["bash", str(RECIPES / "slurm-ray.sbatch")], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=900)
        finally:
            stop(proc, temp_dir)  # the backgrounded `ray start --block` outlives the script
    out = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    records = list(Store(tmp_path / "store").records(sweep="t"))
    assert len(records) == 1
    assert {r["tags"]["backend"] for r in records} == {"ray"}
    assert "done 1/1" in out
    print(f"slurm-ray.sbatch on one machine: {time.time() - started:.0f} s")
