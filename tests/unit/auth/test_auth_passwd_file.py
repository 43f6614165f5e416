"""passwd-file: Dovecot's format, errors with line numbers, atomic edits."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from aiodbox.auth.errors import PasswdFileError, UserExistsError, UserNotFoundError
from aiodbox.auth.passwd_file import (
    PasswdEntry,
    add_user,
    format_entry,
    load_passwd_file,
    parse_passwd_file,
    remove_user,
    set_password,
)
from aiodbox.auth.schemes import verify_password


def test_the_dovecot_fixture_parses(fixtures_dir: Path) -> None:
    path = fixtures_dir / "dovecot-2.3" / "users.passwd-file"
    table = load_passwd_file(path)
    assert table.path == str(path)
    assert [e.user for e in table] == ["sdbox", "mdbox"] + [f"bench{i}" for i in range(1, 9)]
    mdbox = table.get("mdbox")
    assert mdbox is not None
    assert mdbox.password == "{PLAIN}pass"
    assert verify_password("pass", mdbox.password)
    assert mdbox.uid is mdbox.gid is mdbox.home is None
    assert mdbox.userdb_fields == {"mail": "mdbox:~/mdbox", "mdbox_rotate_size": "16k"}
    assert mdbox.passdb_fields == {}
    sdbox = table.get("sdbox")
    assert sdbox is not None
    assert sdbox.extra_fields == (("userdb_mail", "sdbox:~/sdbox"),)
    bench = table.get("bench3")
    assert bench is not None
    assert bench.extra_fields == ()
    assert bench.line == 5


def test_all_fields() -> None:
    table = parse_passwd_file(
        "alice:{PLAIN}x:1000:1001:Alice A:/home/alice:/bin/false:"
        "userdb_mail=maildir:~/Maildir  allow_nets=127.0.0.1/8 nodelay "
        "userdb_quota_rule=*:storage=1G\n"
    )
    alice = table.get("alice")
    assert alice == PasswdEntry(
        user="alice",
        password="{PLAIN}x",
        uid="1000",
        gid="1001",
        gecos="Alice A",
        home="/home/alice",
        shell="/bin/false",
        extra_fields=(
            ("userdb_mail", "maildir:~/Maildir"),
            ("allow_nets", "127.0.0.1/8"),
            ("nodelay", ""),
            ("userdb_quota_rule", "*:storage=1G"),
        ),
        line=1,
    )
    assert alice.passdb_fields == {"allow_nets": "127.0.0.1/8", "nodelay": ""}
    assert alice.userdb_fields == {"mail": "maildir:~/Maildir", "quota_rule": "*:storage=1G"}


def test_fields_may_be_missing_at_the_end() -> None:
    table = parse_passwd_file("bob:{PLAIN}x\ncarol\ndave:\nerin:{PLAIN}y:vmail:mail\n")
    bob, carol, dave, erin = (table.get(u) for u in ("bob", "carol", "dave", "erin"))
    assert bob == PasswdEntry("bob", "{PLAIN}x", line=1)
    assert carol == PasswdEntry("carol", None, line=2)
    assert dave == PasswdEntry("dave", "", line=3)
    assert erin is not None
    assert (erin.uid, erin.gid, erin.home) == ("vmail", "mail", None)


def test_comments_blank_lines_crlf_and_odd_whitespace() -> None:
    text = (
        "# a comment\n"
        "\n"
        ":{PLAIN}no-username-is-skipped\n"
        "u1:{PLAIN}a\r\n"
        "u2:{PLAIN}b\x0cc\n"  # a form feed is not a line break here
        "  # not a comment: a user named '  # not a comment'\n"
        "u3:{PLAIN}c"  # no final newline
    )
    table = parse_passwd_file(text)
    assert [e.user for e in table] == ["u1", "u2", "  # not a comment", "u3"]
    assert [e.line for e in table] == [4, 5, 6, 7]
    u1, u2 = table.get("u1"), table.get("u2")
    assert u1 is not None and u1.password == "{PLAIN}a"
    assert u2 is not None and u2.password == "{PLAIN}b\x0cc"


def test_usernames_are_case_sensitive() -> None:
    table = parse_passwd_file("Alice:{PLAIN}upper\nalice:{PLAIN}lower\n")
    assert len(table) == 2
    assert "ALICE" not in table
    upper = table.get("Alice")
    assert upper is not None and upper.password == "{PLAIN}upper"


def test_libpam_pwdfile_suffixes_and_old_mail_field() -> None:
    table = parse_passwd_file(
        "a:abJnggxhB/yWI[13]\n"
        "b:5ebe2294ecd0e0f08eab7690d2a6ee69[34]\n"
        "c:{PLAIN}x[13]\n"
        "d:{PLAIN}x:1000:1000::/home/d:::maildir:~/Maildir\n"
        "e:{PLAIN}x:1000:1000::/home/e:::\n"
    )
    got = {e.user: e for e in table}
    assert got["a"].password == "{CRYPT}abJnggxhB/yWI"
    assert got["b"].password == "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69"
    assert got["c"].password == "{PLAIN}x[13]"  # a {SCHEME} password is left alone
    assert verify_password("secret", got["b"].password or "")
    assert got["d"].userdb_fields == {"mail": "maildir:~/Maildir"}
    assert got["e"].extra_fields == ()


def test_nopassword() -> None:
    table = parse_passwd_file("a:::::::nopassword\nb:{PLAIN}::::::nopassword=y\nc:{PLAIN}x\n")
    assert [e.nopassword for e in table] == [True, True, False]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a:{PLAIN}x\n# c\nb:{PLAIN}y\na:{PLAIN}z\n", 4, "'a' already defined on line 1"),
        ("a:{PLAIN}x\nb:{PLAIN}\x00y\n", 2, "NUL"),
        ("a:{PLAIN}x:10 00:1000\n", 1, "invalid uid"),
        ("a:{PLAIN}x:1000:0\n", 1, "gid 0 (root)"),
        ("\n\na:{PLAIN}x::::::=oops\n", 3, "empty key"),
        ("a:{PLAIN}x::::::nopassword\n", 1, "nopassword set but a non-empty password"),
    ],
)
def test_errors_name_the_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PasswdFileError) as info:
        parse_passwd_file(text, path="/etc/users")
    assert info.value.path == "/etc/users"
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"passwd-file /etc/users:{line}: ")


def test_invalid_utf8_names_its_line() -> None:
    with pytest.raises(PasswdFileError, match=r"x:3: not valid UTF-8"):
        parse_passwd_file(b"a:{PLAIN}x\nb:{PLAIN}y\nc:{PLAIN}\xff\n", path="x")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PasswdFileError, match="cannot read") as info:
        load_passwd_file(tmp_path / "nope")
    assert info.value.line is None
    assert isinstance(info.value.__cause__, FileNotFoundError)


# --- editing ----------------------------------------------------------------------------


def _others(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_add_user_creates_the_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "users"
    entry = add_user(path, "alice", "{PLAIN}x", extra_fields={"userdb_mail": "sdbox:~/sdbox"})
    assert entry == PasswdEntry(
        "alice", "{PLAIN}x", extra_fields=(("userdb_mail", "sdbox:~/sdbox"),), line=1
    )
    assert path.read_text() == "alice:{PLAIN}x::::::userdb_mail=sdbox:~/sdbox\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _others(path) == []


EXISTING = (
    b"# managed by hand\r\n"
    b"\n"
    b"bob:{PLAIN}b:1000:1000::/home/bob::userdb_mail=mdbox:~/mdbox\r\n"
    b"# trailing comment, no final newline"
)


def test_add_user_keeps_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(EXISTING)
    path.chmod(0o640)
    add_user(path, "carol", "{PLAIN}c", uid=1001, gid="vmail", home="/home/carol")
    data = path.read_bytes()
    assert data == EXISTING + b"\ncarol:{PLAIN}c:1001:vmail::/home/carol\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [e.user for e in load_passwd_file(path)] == ["bob", "carol"]
    assert _others(path) == []


def test_add_user_refuses_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(EXISTING)
    inode = path.stat().st_ino
    with pytest.raises(UserExistsError, match=r"users:3: user 'bob' already exists"):
        add_user(path, "bob", "{PLAIN}other")
    assert path.read_bytes() == EXISTING
    assert path.stat().st_ino == inode
    assert _others(path) == []


def test_edits_refuse_a_file_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "users"
    broken = b"a:{PLAIN}x\na:{PLAIN}y\n"
    path.write_bytes(broken)
    with pytest.raises(PasswdFileError, match="already defined on line 1"):
        add_user(path, "b", "{PLAIN}z")
    with pytest.raises(PasswdFileError):
        set_password(path, "a", "{PLAIN}z")
    assert path.read_bytes() == broken


def test_set_password_changes_only_that_field(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(EXISTING + b"\ncarol\ndave:{PLAIN}d\n")
    set_password(path, "bob", "{SHA256-CRYPT}$5$IeaOKVCryZXJuFLz$x")
    set_password(path, "carol", "{PLAIN}c")
    set_password(path, "dave", "{PLAIN}dd")
    assert path.read_bytes() == (
        b"# managed by hand\r\n"
        b"\n"
        b"bob:{SHA256-CRYPT}$5$IeaOKVCryZXJuFLz$x:1000:1000::/home/bob::userdb_mail=mdbox:~/mdbox\r\n"
        b"# trailing comment, no final newline\n"
        b"carol:{PLAIN}c\n"
        b"dave:{PLAIN}dd\n"
    )
    assert _others(path) == []


def test_set_password_and_remove_unknown_user(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(EXISTING)
    with pytest.raises(UserNotFoundError, match="'nobody' not found"):
        set_password(path, "nobody", "{PLAIN}x")
    with pytest.raises(UserNotFoundError):
        remove_user(path, "Bob")  # case-sensitive
    with pytest.raises(PasswdFileError, match="does not exist"):
        remove_user(tmp_path / "missing", "bob")
    assert path.read_bytes() == EXISTING


def test_remove_user_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"#c1\na:{PLAIN}1\n#c2\nb:{PLAIN}2\nc:{PLAIN}3")
    remove_user(path, "b")
    assert path.read_bytes() == b"#c1\na:{PLAIN}1\n#c2\nc:{PLAIN}3"
    remove_user(path, "c")
    assert path.read_bytes() == b"#c1\na:{PLAIN}1\n#c2"
    assert _others(path) == []


def test_a_failed_write_leaves_the_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    path.write_bytes(EXISTING)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # only this test's thread writes
    with pytest.raises(PasswdFileError, match="cannot write: No space left"):
        add_user(path, "carol", "{PLAIN}c")
    assert path.read_bytes() == EXISTING
    assert _others(path) == []


def test_concurrent_editors_do_not_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "users"
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                add_user(path, f"u{n}-{i}", "{PLAIN}x")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(load_passwd_file(path)) == 30
    assert _others(path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "a:b"}, "username"),
        ({"user": "a b"}, "username"),
        ({"user": "#a"}, "username"),
        ({"user": ""}, "username"),
        ({"password": "{PLAIN}a:b"}, "password"),
        ({"password": "{PLAIN}a\nb:{PLAIN}c"}, "password"),
        ({"uid": 0}, "uid"),
        ({"uid": "1 2"}, "uid"),
        ({"home": "/x\n"}, "home"),
        ({"extra_fields": {"k": "a b"}}, "extra field"),
        ({"extra_fields": {"a=b": "c"}}, "extra field"),
    ],
)
def test_format_entry_refuses_what_the_format_cannot_hold(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"user": "u", "password": "{PLAIN}p"} | kwargs
    user, password = args.pop("user"), args.pop("password")
    assert isinstance(user, str) and isinstance(password, str)
    with pytest.raises(ValueError, match=message):
        format_entry(user, password, **args)  # type: ignore[arg-type]


def test_format_entry_drops_empty_trailing_fields() -> None:
    assert format_entry("u", "{PLAIN}p") == "u:{PLAIN}p"
    assert format_entry("u", "{PLAIN}p", gid=8) == "u:{PLAIN}p::8"
    assert format_entry("u", "", extra_fields=[("nopassword", "")]) == "u:::::::nopassword"


def test_a_symlinked_file_is_edited_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real-users"
    target.write_bytes(b"a:{PLAIN}1\n")
    link = tmp_path / "users"
    link.symlink_to(target)
    add_user(link, "b", "{PLAIN}2")
    assert link.is_symlink()
    assert target.read_bytes() == b"a:{PLAIN}1\nb:{PLAIN}2\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_the_owner_is_kept_when_root_edits(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"a:{PLAIN}1\n")
    os.chown(path, 65534, 65534)
    set_password(path, "a", "{PLAIN}2")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert path.read_bytes() == b"a:{PLAIN}2\n"
