"""``aiodbox serve --demo``: a self-contained server a newcomer can start with one command.

Theory of operation
-------------------
:func:`prepare` makes (or finds) ``./aiodbox-data``::

    aiodbox-data/
      aiodbox.toml        the config (written last: its presence means "complete")
      users               passwd-file with user "demo" ({ARGON2ID} hash)
      tls/cert.pem,key.pem  a self-signed certificate for localhost / 127.0.0.1
      mail/  index/       the mdbox store, INBOX seeded with the sample messages

Everything listens on 127.0.0.1 only.  The ports are IMAP 1143, IMAPS 1993 and LMTP
2424, or free ones where those are taken (written into the config, so they stay the
same on the next run).  The password is random, printed once, and stored only as a
hash: a later run reuses the data and says so instead of printing it (remove the
folder to start over).

The certificate comes from the ``cryptography`` package when it is installed, else from
the ``openssl`` command; with neither the demo runs without TLS (and says so).  No new
dependency either way.

The seeding runs in a short-lived child process, so that the server process that forks
the workers afterwards has never started a thread.

:func:`prepare` is blocking (files, a password hash, a short event loop for the seeding)
and runs before the server starts its workers.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import importlib
import importlib.resources
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiodbox.auth.errors import UserExistsError
from aiodbox.auth.passwd_file import add_user, set_password
from aiodbox.auth.schemes import hash_password
from aiodbox.config import Config, config_from_dict

DATA_DIR = "aiodbox-data"
USER = "demo"
HOST = "127.0.0.1"
PORTS = {"imap": 1143, "imaps": 1993, "lmtp": 2424}

# Flags of the sample messages (by file name); the rest arrive unread.
_SAMPLE_FLAGS = {"05-reply.eml": ["\\Seen"], "03-attachment.eml": ["\\Flagged"]}


@dataclass(frozen=True, slots=True)
class Sample:
    """A sample message to seed INBOX with."""

    name: str
    data: bytes
    flags: tuple[str, ...]
    date: int


@dataclass(frozen=True, slots=True)
class DemoSetup:
    """What :func:`prepare` made or found.

    Attributes:
        root: the data folder.
        config_path: its config file.
        user: the demo user name.
        password: the password, when it was just created (None on a re-run).
        created: True on the first run.
        tls: how the certificate was made (``"cryptography"``, ``"openssl"``, ``"kept"``),
            or None when there is none.
    """

    root: Path
    config_path: Path
    user: str
    password: str | None
    created: bool
    tls: str | None


def samples() -> list[Sample]:
    """The sample messages shipped in this package, CRLF line ends, in name order."""
    out = []
    files = importlib.resources.files(__package__ or "aiodbox.demo")
    for entry in sorted(files.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".eml"):
            continue
        raw = entry.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        date = 0
        for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"date:"):
                parsed = email.utils.parsedate_to_datetime(line[5:].decode().strip())
                date = int(parsed.timestamp())
        out.append(Sample(entry.name, raw, tuple(_SAMPLE_FLAGS.get(entry.name, ())), date))
    return out


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _pick_ports() -> dict[str, int]:
    return {name: port if _port_free(port) else _free_port() for name, port in PORTS.items()}


def _config_text(ports: dict[str, int], tls: bool) -> str:
    imaps = f'tls_listen = ["{HOST}:{ports["imaps"]}"]\n' if tls else ""
    tls_section = '\n[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n' if tls else ""
    return (
        "# Written by `aiodbox serve --demo`: a self-contained demo on 127.0.0.1.\n"
        "# Paths are relative to this file.  Start over: remove this folder.\n"
        "\n[storage]\n"
        'format = "mdbox"\n'
        'mail_root = "mail"\n'
        'index_root = "index"\n'
        "\n[imap]\n"
        f'listen = ["{HOST}:{ports["imap"]}"]\n'
        f"{imaps}"
        "\n[lmtp]\n"
        f'listen = ["{HOST}:{ports["lmtp"]}"]\n'
        "\n[auth]\n"
        'passwd_file = "users"\n'
        "# Plain LOGIN without TLS too: the demo listens on 127.0.0.1 only.\n"
        "allow_plaintext = true\n"
        f"{tls_section}"
    )


def make_certificate(directory: Path, *, openssl: str | None = None) -> str | None:
    """Write ``cert.pem`` and ``key.pem`` (self-signed, CN=localhost, SAN localhost and
    127.0.0.1, EC P-256, 825 days) into ``directory``.

    Returns:
        ``"cryptography"`` or ``"openssl"`` (what made it), or None when neither is
        available (or the command failed).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _with_cryptography(cert, key)
        return "cryptography"
    except ImportError:
        pass
    tool = openssl or shutil.which("openssl")
    if tool is None:
        return None
    cmd = [
        tool, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "825", "-sha256",
        "-subj", "/CN=localhost", "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
        return None
    key.chmod(0o600)
    return "openssl"


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    # Imported by name: an optional package, not a dependency (and not type-checked).
    x509: Any = importlib.import_module("cryptography.x509")
    oid: Any = importlib.import_module("cryptography.x509.oid")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    serialization: Any = importlib.import_module("cryptography.hazmat.primitives.serialization")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def seed(config: Config, user: str = USER) -> int:
    """Deliver the samples into ``user``'s INBOX if it is empty; return how many."""
    from aiodbox.storage import Storage
    from aiodbox.storage.mailbox import flags_to_bits

    storage = Storage(config.storage)
    try:
        account = await storage.user(user)
        mbox = await account.open_mailbox("INBOX")
        try:
            await mbox.sync()
            if len(mbox.view):
                return 0
            tx = mbox.transaction()
            items = samples()
            for s in items:
                await tx.save(s.data, flags=flags_to_bits(s.flags), internal_date=s.date or None)
            await tx.commit()
            return len(items)
        finally:
            await mbox.close()
    finally:
        await storage.close()


def _seed_in_child(config: Config) -> None:
    """Run :func:`seed` in a child process: the storage's thread pools live and die
    there, so the server forks its workers from a process that never had a thread."""
    import sys
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.run(seed(config))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError("putting the sample messages into the demo mailbox failed")


def prepare(root: Path) -> DemoSetup:
    """Create the demo data in ``root`` or reuse it (see the module docstring).

    Blocking; call before the server's event loop and workers start.

    Raises:
        OSError: the folder cannot be created or written.
    """
    config_path = root / "aiodbox.toml"
    if config_path.exists():
        tls = "kept" if (root / "tls" / "cert.pem").exists() else None
        return DemoSetup(root, config_path, USER, None, False, tls)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls = make_certificate(root / "tls")
    ports = _pick_ports()
    text = _config_text(ports, tls is not None)
    password = secrets.token_urlsafe(12)
    stored = hash_password(password, "ARGON2ID")
    users = root / "users"
    try:
        add_user(users, USER, stored)
    except UserExistsError:  # an earlier run stopped half-way: new password
        set_password(users, USER, stored)
    config = config_from_dict(tomllib.loads(text), root.resolve(), str(config_path))
    _seed_in_child(config)
    tmp = config_path.with_suffix(".toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, config_path)
    return DemoSetup(root, config_path, USER, password, True, tls)


def banner(setup: DemoSetup, config: Config) -> str:
    """How to connect: hosts, ports, credentials and ready-to-paste commands."""

    def port_of(specs: tuple[str, ...]) -> int | None:
        return int(specs[0].rsplit(":", 1)[1]) if specs else None

    imap = port_of(config.imap.listen)
    imaps = port_of(config.imap.tls_listen)
    lmtp = port_of(config.lmtp.listen)
    pw = setup.password
    shown = pw if pw is not None else "(printed when the folder was created; kept only as a hash)"
    lines = [
        "",
        f"aiodbox demo is running: data in {setup.root}, stop it with Ctrl-C",
        "",
        f"  IMAP      {HOST}:{imap}" + ("   (plain or STARTTLS)" if imaps else ""),
    ]
    if imaps:
        lines.append(f"  IMAPS     {HOST}:{imaps}   (TLS, self-signed certificate)")
    lines += [
        f"  LMTP      {HOST}:{lmtp}   (deliver mail into it)",
        f"  user      {setup.user}",
        f"  password  {shown}",
        "",
    ]
    secret = pw if pw is not None else "PASSWORD"
    if imaps:
        lines += [
            "Try it in a terminal (then type: a LOGIN demo PASSWORD, b SELECT INBOX,",
            "c FETCH 1 BODY[], d LOGOUT):",
            f"  openssl s_client -quiet -crlf -connect {HOST}:{imaps}",
        ]
    lines += [
        "Or with Python:",
        f"  python3 -c \"import imaplib; c = imaplib.IMAP4('{HOST}', {imap}); "
        f"c.login('{setup.user}', '{secret}'); print(c.select('INBOX'))\"",
        "Thunderbird: add a mail account, 'Configure manually': IMAP, server "
        f"{HOST}, port {imaps or imap}, {'SSL/TLS' if imaps else 'no encryption'}, "
        f"normal password, username {setup.user}"
        + (" (accept the self-signed certificate)." if imaps else "."),
        f"Deliver a message: python3 -c \"import smtplib; smtplib.LMTP('{HOST}', {lmtp})"
        f".sendmail('me@example.org', ['{setup.user}'], b'Subject: hi\\r\\n\\r\\nhello\\r\\n')\"",
    ]
    if pw is None:
        lines += ["", f"Lost the password? Stop the server and remove {setup.root} to start over."]
    if setup.tls is None:
        lines += ["", "No TLS: neither the cryptography package nor openssl was found."]
    return "\n".join(lines) + "\n"
