"""A storage URL's password never reaches the user's screen, a study, or any other output (issue 32)."""

import optuna
import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.errors import UserError
from stabench.secrets import redact_url, register, scrub
from stabench.sweep.space import load_space
from stabench.sweep.study import check_same_space, make_storage
from tests.helpers import space_file

PASSWORD = "Pl4nted-S3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql+psycopg2://bob:{PASSWORD}@db.example:5432/optuna", "postgresql+psycopg2://bob:***@db.example"),
        (f"mysql://bob:{PASSWORD}@db/optuna?charset=utf8", "mysql://bob:***@db/optuna"),
        ("postgresql://bob:p%40ss%2Fword@db/optuna", "postgresql://bob:***@db/optuna"),
        (f"weird+dialect://bob:{PASSWORD}@[::1]:9/x", "weird+dialect://bob:***@"),
    ],
)
def test_a_url_is_shown_without_its_password(url, shown):
    assert shown in redact_url(url)
    assert PASSWORD not in redact_url(url) and "p%40ss" not in redact_url(url)


@pytest.mark.parametrize("url", ["runs/optuna/t.journal", "sqlite:///runs/t.db", "postgresql://bob@db/optuna", None])
def test_a_path_or_a_url_without_a_password_is_shown_as_it_is(url):
    assert redact_url(url) == url


def test_scrub_hides_the_password_in_every_form_it_may_be_quoted():
    url = "postgresql://bob:p%40ss-w0rd@db/optuna"
    text = "failed for p%40ss-w0rd, p@ss-w0rd and p%40ss-w0rd again"
    assert "ss-w0rd" not in scrub(text, url)
    register(url)
    assert "ss-w0rd" not in str(UserError(f"library said: {text}"))


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://bob:{PASSWORD}@127.0.0.1:1/optuna",  # nobody listens there
        f"postgresql://bob:{PASSWORD}@db:notaport/optuna",  # the driver's own error quotes the URL
        f"nosuchdialect://bob:{PASSWORD}@db/optuna",
    ],
)
def test_a_storage_that_cannot_be_opened_is_named_without_its_password(url):
    with pytest.raises(UserError) as err:
        make_storage(url, "t")
    assert "cannot open" in str(err.value) and "bob:***@" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_a_study_of_another_space_is_named_without_the_password(tmp_path):
    study = optuna.create_study()
    study.set_user_attr("space_fingerprint", {"old": 1})
    with pytest.raises(UserError, match="another space") as err:
        check_same_space(study, load_space(space_file(tmp_path)), f"postgresql://bob:{PASSWORD}@db/optuna")
    assert PASSWORD not in str(err.value) and "bob:***@db" in str(err.value)
    assert PASSWORD not in repr(study.user_attrs)


def test_no_output_of_a_failing_sweep_contains_the_password(tmp_path):
    url = f"postgresql+psycopg2://bob:{PASSWORD}@127.0.0.1:1/optuna"
    store = tmp_path / "store"
    args = ["sweep", str(space_file(tmp_path)), "--store", str(store), "--study-storage", url, "--wandb", "disabled"]
    for backend in ("optuna", "ray"):
        out = CliRunner().invoke(main, [*args, "--backend", backend, "--workers", "1"] if backend == "optuna"
                                 else [*args, "--backend", backend])  # fmt: skip
        assert out.exit_code == 2, out.output
        assert "cannot open" in out.output and PASSWORD not in out.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(PASSWORD.encode() not in p.read_bytes() for p in written)
