"""A throwaway PostgreSQL server for tests (Debian's postgresql package; .ci/run installs it)."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found; .ci/run must install Debian's postgresql package")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    base = tempfile.mkdtemp(prefix="stabench-pg-")
    data, port = os.path.join(base, "data"), _free_port()
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_user + [initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run(
        as_user
        + [
            pg_ctl,
            "-D",
            data,
            "-w",
            "-l",
            os.path.join(base, "log"),
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
