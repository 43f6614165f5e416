"""Password schemes: Dovecot-made hashes, round trips, errors, interop with doveadm."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess

import bcrypt
import pytest

from aiodbox.auth.errors import MalformedHashError, SchemeError, UnknownSchemeError
from aiodbox.auth.schemes import (
    HashParams,
    canonical_scheme,
    hash_params,
    hash_password,
    hash_with_params,
    split_scheme,
    supported_schemes,
    verify_password,
)

# Made by Dovecot 2.3.19.1 `doveadm pw -s <SCHEME> -p secret` (and `-r` where shown).
DOVECOT_HASHES = [
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sN6xURpEZFXeerHhXb4dkQ$"
    "2sC52YT+cXA2ZktfzAI7omj3gcN+0Dl6BZSmdUPoHCU",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$J5uCcyqsPg4y0KsU8k3sAw$"
    "H8lHXI2gl0J4S1D/qJl4mTcZLgDP5pqROoYsmHKCqCE",
    "{BLF-CRYPT}$2y$05$A/L.shGyUG7pK4CdT1B0Su2SuFiL7L55XR9aOxIdWyKVg2cKKgKuO",
    "{CRYPT}$2y$05$/S3Kil2ZvQPx4/sxWIrPqe7t80LZiFvElk1VTe3SnrM6GgdEfcCoe",
    "{SHA512-CRYPT}$6$Tj9Q3Yl.wIvMxg6p$vX5PW7lsfH0vFZvDBxcUDzgaTO65AHdylKyMg4j3koPxwyQt.dO1EE"
    "osd1YAT/GV.71mblQVksj2XlGmbA3ib0",
    "{SHA512-CRYPT}$6$rounds=10000$UXQeRlMZMUk1Qhhd$Ls8UkfstfY1DTPRl1wgah7c3mZJpgXNX7Y1d6puII6"
    "D5Sp/Lr255X5eYl.3TAUQvbxyWkwo2N8qpMCYxjpL.s.",
    "{SHA256-CRYPT}$5$IeaOKVCryZXJuFLz$yYR6kBIoj3UsMFG8d9pUuoE7Y8noJagFyzDdM9wI.o6",
    "{MD5-CRYPT}$1$flZU7pHC$TZ1aI.JYwGC/lldtg5TAd1",
    "{SSHA512}qD7aAlJ42NKtoANDN1g0t0qT2kh7VNdBpbQy14aGDblei45tQK2rIWwBJM8dxHRMDoVyWlhwzopqBfY"
    "A1XsjWwBQt9w=",
    "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5bDufKRpay"
    "rW/isg==",
    "{SHA512.HEX}bd2b1aaf7ef4f09be9f52ce2d8d599674d81aa9d6a4421696dc4d93dd0619d682ce56b4d64a9e"
    "f097761ced99e0f67265b5f76085e5b0ee7ca4696b2ad6fe2b2",
    "{SSHA256}gFi+PCZP/K+GXOaOuGTwfJCOAOlb3bhgF59ZVLE913ZfQnuk",
    "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    "{SSHA}fO+5jxighRIuAI+aKtBO7JthJgZQGb+y",
    "{SHA1}5en6G6MezRroT3XKqkdPOmY/BfQ=",
]


@pytest.mark.parametrize("stored", DOVECOT_HASHES, ids=lambda s: s[1 : s.index("}")])
def test_dovecot_made_hashes_verify(stored: str) -> None:
    assert verify_password("secret", stored)
    assert verify_password(b"secret", stored)
    assert not verify_password("Secret", stored)
    assert not verify_password("", stored)


GENERATED = [
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "MD5-CRYPT",
    "PLAIN",
    "CLEARTEXT",
    "SSHA512",
    "SSHA256",
    "SSHA",
    "SMD5",
    "SHA512",
    "SHA256",
    "SHA1",
    "PLAIN-MD5",
    "LDAP-MD5",
]


@pytest.mark.parametrize("scheme", GENERATED)
def test_round_trip(scheme: str) -> None:
    password = "pä55 wörd:"
    stored = hash_password(password, scheme)
    assert stored.startswith("{" + canonical_scheme(scheme) + "}")
    assert verify_password(password, stored)
    assert verify_password(password.encode(), stored)
    assert not verify_password("pä55 wörd", stored)


def test_salted_hashes_differ_each_time() -> None:
    for scheme in ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SSHA256"):
        assert hash_password("x", scheme) != hash_password("x", scheme)


def test_default_is_argon2id_with_documented_cost() -> None:
    stored = hash_password("secret")
    assert re.fullmatch(
        r"\{ARGON2ID\}\$argon2id\$v=19\$m=19456,t=2,p=1\$[^$]{22}\$[^$]{43}", stored
    )


def test_rounds_parameter() -> None:
    assert hash_password("x", "SHA512-CRYPT", rounds=6000).startswith(
        "{SHA512-CRYPT}$6$rounds=6000$"
    )
    assert hash_password("x", "SHA256-CRYPT").count("$") == 3  # default rounds not written
    assert hash_password("x", "BLF-CRYPT", rounds=4).startswith("{BLF-CRYPT}$2y$04$")
    assert ",t=1,p=1$" in hash_password("x", "ARGON2ID", rounds=1)
    with pytest.raises(SchemeError, match="rounds"):
        hash_password("x", "PLAIN", rounds=3)
    with pytest.raises(SchemeError, match="cost"):
        hash_password("x", "BLF-CRYPT", rounds=3)


def test_bcrypt_accepts_2a_2b_2y_and_cuts_at_72_bytes() -> None:
    for prefix in (b"2a", b"2b"):
        stored = bcrypt.hashpw(b"secret", bcrypt.gensalt(4, prefix=prefix)).decode()
        assert verify_password("secret", "{BLF-CRYPT}" + stored)
    long_password = "a" * 72
    stored = hash_password(long_password + "tail ignored", "BLF-CRYPT", rounds=4)
    assert verify_password(long_password, stored)  # crypt_blowfish reads 72 bytes
    assert not verify_password("a" * 71, stored)


def test_argon2_variant_comes_from_the_phc_string() -> None:
    argon2i = hash_password("secret", "ARGON2I", rounds=1).removeprefix("{ARGON2I}")
    assert verify_password("secret", "{ARGON2ID}" + argon2i)  # libsodium does the same
    assert verify_password("secret", argon2i)  # bare, default CRYPT: by prefix


def test_bare_values_use_the_default_scheme() -> None:
    sha = hash_password("secret", "SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    assert verify_password("secret", sha)
    assert verify_password("secret", "secret", default_scheme="PLAIN")
    assert verify_password("secret", "secret", default_scheme="cleartext")
    with pytest.raises(MalformedHashError):
        verify_password("secret", "secret")  # CRYPT cannot read a plain password


def test_scheme_names_are_case_insensitive_and_aliased() -> None:
    assert verify_password("pw", "{plain}pw")
    assert verify_password("pw", "{Cleartext}pw")
    assert verify_password("pw", "{CLEAR}pw")
    assert verify_password("secret", "{sha}5en6G6MezRroT3XKqkdPOmY/BfQ=")
    assert verify_password("secret", "{md5}$1$flZU7pHC$TZ1aI.JYwGC/lldtg5TAd1")
    assert canonical_scheme("blf-crypt") == "BLF-CRYPT"
    assert canonical_scheme("sha256.hex") == "SHA256.HEX"
    assert {"PLAIN", "ARGON2ID", "SHA512-CRYPT", "BLF-CRYPT", "CRYPT"} <= supported_schemes()


def test_encodings() -> None:
    digest = hashlib.sha256(b"secret").digest()
    assert verify_password("secret", "{SHA256}" + digest.hex())  # hex recognised by length
    assert verify_password("secret", "{SHA256.HEX}" + digest.hex().upper())
    assert verify_password("secret", "{SHA256.B64}" + base64.b64encode(digest).decode())
    assert verify_password("secret", "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69")
    md5_b64 = base64.b64encode(hashlib.md5(b"secret").digest()).decode()
    assert verify_password("secret", "{PLAIN-MD5}" + md5_b64)  # hex falls back to base64
    assert verify_password("secret", "{PLAIN.B64}c2VjcmV0")
    assert verify_password("secret", "{PLAIN.HEX}736563726574")


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("{SCRAM-SHA-256}4096,abc,def", "SCRAM-SHA-256"),
        ("{NOPE}x", "NOPE"),
        ("{}x", ""),
        ("{BLF-CRYPT.HEX}$2y$05$abc", "BLF-CRYPT.HEX"),
    ],
)
def test_unknown_scheme_is_an_error_naming_it(stored: str, scheme: str) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        verify_password("secret", stored)
    assert info.value.scheme == scheme
    assert repr(scheme) in str(info.value)


@pytest.mark.parametrize(
    ("stored", "what"),
    [
        ("{CRYPT}$y$j9T$salt$hash", "yescrypt"),
        ("$y$j9T$salt$hash", "yescrypt"),
        ("{CRYPT}abJnggxhB/yWI", "DES-crypt"),
        ("{SHA512-CRYPT}$2x$05$abcdefghijklmnopqrstuuFDsFMN.n7hEAfq1mSbrk4c.fDmnfmi", "2x"),
    ],
)
def test_unsupported_crypt_forms_are_named(stored: str, what: str) -> None:
    with pytest.raises(UnknownSchemeError, match=re.escape(what)):
        verify_password("secret", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "{SHA256}not base64!",
        "{SHA256}c2VjcmV0",  # valid base64 but not 32 bytes
        "{SSHA256}" + base64.b64encode(b"x" * 32).decode(),  # no salt
        "{SHA1}QUJD=",  # padding where there should be none
        "{BLF-CRYPT}$2y$05$tooshort",
        "{BLF-CRYPT}$2y$99$A/L.shGyUG7pK4CdT1B0Su2SuFiL7L55XR9aOxIdWyKVg2cKKgKuO",
        "{ARGON2ID}$argon2id$v=19$garbage",
        "{ARGON2ID}$6$saltsalt$x",
        "{SHA512-CRYPT}$6$saltsalt$tooshort",
        "{MD5-CRYPT}$1$salt$short",
        "{CRYPT}$9$what",
    ],
)
def test_malformed_stored_hashes_raise(stored: str) -> None:
    with pytest.raises(MalformedHashError):
        verify_password("secret", stored)


def test_split_scheme_like_dovecot() -> None:
    assert split_scheme("{PLAIN}x") == ("PLAIN", "x")
    assert split_scheme("{PLAIN}{x}") == ("PLAIN", "{x}")
    assert split_scheme("$1$salt$hash", "PLAIN") == ("MD5-CRYPT", "$1$salt$hash")
    assert split_scheme("$6$salt$hash") == ("CRYPT", "$6$salt$hash")
    assert split_scheme("{unterminated", "PLAIN") == ("PLAIN", "{unterminated")


def test_hash_params_and_dummy_hashes_with_the_same_cost() -> None:
    cases = {
        "{SHA512-CRYPT}$6$rounds=7000$abc$" + "x" * 86: HashParams("SHA512-CRYPT", (7000,)),
        "$5$abc$" + "x" * 43: HashParams("SHA256-CRYPT"),
        "{CRYPT}$2y$05$A/L.shGyUG7pK4CdT1B0Su2SuFiL7L55XR9aOxIdWyKVg2cKKgKuO": HashParams(
            "BLF-CRYPT", (5,)
        ),
        DOVECOT_HASHES[0]: HashParams("ARGON2ID", (65536, 3, 1)),
        "{CLEARTEXT}x": HashParams("PLAIN"),
        "{SSHA}fO+5jxighRIuAI+aKtBO7JthJgZQGb+y": HashParams("SSHA"),
    }
    for stored, params in cases.items():
        assert hash_params(stored) == params
        if params.scheme != "ARGON2ID":  # 64 MiB: skip the slow one
            again = hash_with_params("other", params)
            assert hash_params(again) == params
            assert verify_password("other", again)


# --- interop with a real Dovecot ------------------------------------------------------

DOVEADM = shutil.which("doveadm")
needs_doveadm = pytest.mark.skipif(
    DOVEADM is None, reason="Dovecot's doveadm is not installed (apt install dovecot-core)"
)
DOVEADM_SCHEMES = [
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "MD5-CRYPT",
    "SSHA512",
    "SSHA256",
    "SHA256",
    "PLAIN",
]


def _doveadm(*args: str) -> subprocess.CompletedProcess[str]:
    assert DOVEADM is not None
    return subprocess.run(
        [DOVEADM, "pw", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.interop
@needs_doveadm
@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_hashes_made_by_doveadm_now_verify(scheme: str) -> None:
    password = "s3cret wörd"
    args = ["-s", scheme, "-p", password]
    if scheme == "SHA512-CRYPT":
        args += ["-r", "6000"]
    proc = _doveadm(*args)
    assert proc.returncode == 0, proc.stderr
    stored = proc.stdout.strip()
    assert stored.startswith("{" + scheme + "}"), stored
    assert verify_password(password, stored)
    assert not verify_password(password + "!", stored)


@pytest.mark.interop
@needs_doveadm
@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_doveadm_verifies_our_hashes(scheme: str) -> None:
    password = "s3cret wörd"
    stored = hash_password(password, scheme)
    assert _doveadm("-t", stored, "-p", password).returncode == 0
    wrong = _doveadm("-t", stored, "-p", password + "!")
    assert wrong.returncode != 0
    assert "mismatch" in (wrong.stdout + wrong.stderr).lower()
