"""``aiodbox user add`` / ``aiodbox user list`` on the config's passwd-file.

These commands have no event loop, so the tests call the entry point directly.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from aiodbox.auth.passwd_file import load_passwd_file
from aiodbox.auth.schemes import verify_password
from aiodbox.cli.main import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "aiodbox.toml"
    path.write_text('[auth]\npasswd_file = "etc/users"\n')  # etc/ does not exist yet
    return path


def users_file(config: Path) -> Path:
    return config.parent / "etc" / "users"


def run(config: Path, *args: str) -> int:
    return main(["--config", str(config), "user", *args])


def test_add_writes_an_argon2id_entry_and_list_prints_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "add", "alice", "--password", "s3cret pass") == 0
    assert run(config, "add", "bob", "--password", "other") == 0
    assert capsys.readouterr().out == "added user alice\nadded user bob\n"
    table = load_passwd_file(users_file(config))
    entry = table.get("alice")
    assert entry is not None and entry.password is not None
    assert entry.password.startswith("{ARGON2ID}$argon2id$")
    assert verify_password("s3cret pass", entry.password)
    assert not verify_password("s3cret", entry.password)
    assert users_file(config).stat().st_mode & 0o777 == 0o600

    assert run(config, "list") == 0
    assert capsys.readouterr().out == "alice\nbob\n"


def test_duplicate_is_refused_and_the_file_is_unchanged(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "add", "alice", "--password", "one") == 0
    before = users_file(config).read_bytes()
    capsys.readouterr()
    assert run(config, "add", "alice", "--password", "two") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == f"aiodbox: user 'alice' already exists in {users_file(config)}"
    assert users_file(config).read_bytes() == before


def test_password_stdin_reads_exactly_one_line(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("first line secret\r\nsecond line\n"))
    assert run(config, "add", "carol", "--password-stdin") == 0
    entry = load_passwd_file(users_file(config)).get("carol")
    assert entry is not None and entry.password is not None
    assert verify_password("first line secret", entry.password)
    assert sys.stdin.read() == "second line\n"  # the rest is left unread


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "a:b", "--password", "x"), "", "invalid user name 'a:b'"),
        (("add", "a/b", "--password", "x"), "", "invalid user name 'a/b'"),
        (("add", "a b", "--password", "x"), "", "invalid user name 'a b'"),
        (("add", "..", "--password", "x"), "", "invalid user name '..'"),
        (("add", "dave", "--password-stdin"), "\n", "the password is empty"),
        (("add", "dave", "--password-stdin"), "", "the password is empty"),
    ],
)
def test_bad_arguments_exit_2(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    stdin: str,
    message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert run(config, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aiodbox: ") and message in err and len(err.splitlines()) == 1
    assert not users_file(config).exists()


def test_password_options_are_exclusive_and_required(config: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run(config, "add", "erin")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run(config, "add", "erin", "--password", "x", "--password-stdin")
    assert exc.value.code == 2


def test_list_without_a_file_prints_nothing(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "list") == 0
    assert capsys.readouterr().out == ""


def test_broken_passwd_file_is_a_config_error_with_its_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users_file(config).parent.mkdir()
    users_file(config).write_text("alice:{PLAIN}x\nalice:{PLAIN}y\n")
    assert run(config, "list") == 3
    err = capsys.readouterr().err
    assert f"{users_file(config)}:2" in err and "already defined" in err
    assert run(config, "add", "bob", "--password", "x") == 3


def test_missing_config_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "user", "list"]) == 3
    assert "cannot read the config file" in capsys.readouterr().err


def test_entry_point_in_a_process(config: Path) -> None:
    """As an operator runs it: password on stdin, names on stdout, no traceback."""
    env_path = str(Path(__file__).resolve().parents[2] / "src")
    base = [sys.executable, "-m", "aiodbox.cli.main", "--config", str(config), "user"]
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    add = subprocess.run(
        [*base, "add", "frank", "--password-stdin"],
        input="pw\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (add.returncode, add.stderr) == (0, "")
    again = subprocess.run(
        [*base, "add", "frank", "--password-stdin"],
        input="pw\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    listing = subprocess.run(
        [*base, "list"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert (listing.returncode, listing.stdout) == (0, "frank\n")
