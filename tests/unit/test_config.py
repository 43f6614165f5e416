"""Loading aiodbox.toml: typed values, relative paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiodbox.config import ConfigError, find_config, load_config, parse_listen, parse_size

DESIGN_EXAMPLE = """
[storage]
format = "mdbox"                 # or "sdbox"
mail_root = "data/mail"
index_root = "data/index"
fs = "posix"
io_threads = 10
prefetch = 10
mdbox_rotate_size = "10M"
[imap]
listen = ["127.0.0.1:1143"]
[lmtp]
listen = ["127.0.0.1:2424"]
[auth]
passwd_file = "data/users"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "aiodbox.toml"
    p.write_text(text)
    return p


def test_the_design_example_loads_with_typed_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert cfg.storage.format == "mdbox"
    assert cfg.storage.mail_root == tmp_path.resolve() / "data/mail"
    assert cfg.storage.index_root == tmp_path.resolve() / "data/index"
    assert cfg.storage.mdbox_rotate_size == 10 * 1024 * 1024
    assert cfg.imap.listen == ("127.0.0.1:1143",)
    assert cfg.auth.passwd_file == tmp_path.resolve() / "data/users"
    assert cfg.path == tmp_path / "aiodbox.toml"


def test_defaults_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.storage.mail_root == tmp_path.resolve() / "data/mail"
    assert cfg.storage.io_threads == 10 and cfg.storage.prefetch == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[storage]\nio_threads = "ten"', "[storage] io_threads: expected an integer (got 'ten')"),
        ('[storage]\nformat = "maildir"', "[storage] format: expected one of 'mdbox', 'sdbox'"),
        ('[storage]\nmdbox_rotate_size = "big"', "is not a size"),
        ("[storage]\niothreads = 4", "[storage] unknown key(s) iothreads"),
        ("[nosuch]\nx = 1", "unknown section(s) nosuch"),
        ('[imap]\nlisten = ["localhost"]', "is not host:port"),
        ("[storage]\nio_threads = 0", "expected an integer in 1..1024"),
    ],
)
def test_errors_name_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str, expected: str
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in str(ei.value)
    assert expected in str(ei.value)


def test_a_file_that_does_not_parse_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[storage]\nformat = 'sdbox'\nio_threads = = 3\n")
    with pytest.raises(ConfigError, match=r"does not parse: .*line 3"):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIODBOX_CONFIG", raising=False)
    assert find_config(None) is None
    (tmp_path / "aiodbox.toml").write_text("")
    assert find_config(None) == Path("aiodbox.toml")
    monkeypatch.setenv("AIODBOX_CONFIG", "/etc/x.toml")
    assert find_config(None) == Path("/etc/x.toml")
    assert find_config("given.toml") == Path("given.toml")


def test_helpers() -> None:
    assert parse_size("512k") == 512 * 1024 and parse_size(7) == 7
    assert parse_listen("[::1]:143") == ("::1", 143)
