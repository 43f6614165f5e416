"""``aiodbox fsck`` and ``aiodbox purge`` from the command line: output and exit codes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aiodbox.cli.main import main

from .storage_child import message, storage


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_fsck_and_purge_commands(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "aiodbox.toml"
    config.write_text(
        f'[storage]\nformat = "{fmt}"\nmail_root = "mail"\nindex_root = "index"\nfsync = "never"\n'
    )
    st = storage(str(tmp_path), fmt)
    user = await st.user("u")
    inbox = await user.open_mailbox("INBOX")
    for n in range(5):
        await inbox.save(message("x", n))
    await inbox.store([1, 2], "add", 8)
    await inbox.expunge()
    await st.close()

    code, out, _ = await cli(capsys, "--config", str(config), "fsck", "--user", "u")
    assert code == 0, out
    assert "fsck u: 3 messages" in out

    victim = sorted(
        (tmp_path / "mail" / "u").glob("mailboxes/*/u.5" if fmt == "sdbox" else "storage/m.*")
    )[0]
    await asyncio.to_thread(victim.unlink)
    code, out, _ = await cli(capsys, "--config", str(config), "fsck", "--user", "u")
    assert code == 1 and "missing" in out

    code, out, _ = await cli(capsys, "--config", str(config), "fsck", "--user", "u", "--repair")
    assert code == 0, out
    assert "repaired:" in out or "0 problems left" in out

    code, out, _ = await cli(capsys, "--config", str(config), "purge", "--user", "u")
    assert code == 0 and out.startswith(("purge u:", "forgot", "rewrote", "deleted"))

    code, _, err = await cli(capsys, "--config", str(config), "fsck", "--user", "nobody")
    assert code == 4 and "unknown user 'nobody'" in err
    code, _, err = await cli(capsys, "--config", str(tmp_path / "nope.toml"), "fsck", "--user", "u")
    assert code == 3 and "cannot read the config file" in err
    assert "Traceback" not in err
