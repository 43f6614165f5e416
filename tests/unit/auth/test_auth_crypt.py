"""SHA-crypt and MD5-crypt: the specification's test vectors and edge cases."""

from __future__ import annotations

import pytest

from aiodbox.auth import _crypt
from aiodbox.auth.errors import MalformedHashError
from aiodbox.auth.schemes import verify_password

# Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", the tests[] tables:
# (setting, password, expected).  Includes rounds=, a salt longer than 16 characters
# (cut), and rounds=10 (clamped to 1000, and the output says so).
SHA256_SPEC = [
    (
        "$5$saltstring",
        "Hello world!",
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
    ),
    (
        "$5$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
    (
        "$5$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
    ),
    (
        "$5$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
    ),
    (
        "$5$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
    ),
    (
        "$5$rounds=123456$asaltof16chars..",
        "a short string",
        "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD",
    ),
    (
        "$5$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
    ),
]
SHA512_SPEC = [
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEd"
        "FCoEOfaS35inz1",
    ),
    (
        "$6$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0"
        "Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "$6$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZx"
        "Uhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "$6$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3Cm"
        "Ls66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "$6$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaU"
        "eOxFmtlcGZelFl5CxtgfiAc0",
    ),
    (
        "$6$rounds=123456$asaltof16chars..",
        "a short string",
        "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6yc"
        "ULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1",
    ),
    (
        "$6$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58j"
        "aTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]
SPEC = SHA256_SPEC + SHA512_SPEC


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC)
def test_sha_crypt_matches_the_specification(setting: str, password: str, expected: str) -> None:
    assert _crypt.sha_crypt(password.encode(), setting) == expected


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC)
def test_spec_vectors_verify_through_the_schemes(
    setting: str, password: str, expected: str
) -> None:
    scheme = "SHA256-CRYPT" if expected.startswith("$5$") else "SHA512-CRYPT"
    assert verify_password(password, "{" + scheme + "}" + expected)
    assert verify_password(password, expected)  # bare: the default CRYPT scheme
    assert not verify_password(password + "x", expected)


def test_a_stored_unclamped_rounds_value_still_verifies() -> None:
    # The spec's setting string with rounds=10 and the checksum computed at 1000 rounds.
    stored = "$5$rounds=10$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"
    assert verify_password("the minimum number is still observed", stored)


def test_setting_may_carry_an_old_checksum() -> None:
    _, password, expected = SHA512_SPEC[0]
    assert _crypt.sha_crypt(password.encode(), expected) == expected


def test_salt_is_cut_to_16_characters_and_rounds_parsed() -> None:
    parsed = _crypt.parse_sha_crypt("$6$rounds=7000$abcdefghijklmnopqrstuvwxyz$xyz")
    assert parsed == _crypt.ShaCryptSetting("6", 7000, "abcdefghijklmnop", "xyz")
    assert _crypt.parse_sha_crypt("$5$salt").rounds is None


@pytest.mark.parametrize(
    "setting",
    ["$6$rounds=$salt$x", "$6$rounds=12a$salt$x", "$6$rounds=-5$salt$x", "$6$rounds=5000"],
)
def test_invalid_rounds_are_rejected(setting: str) -> None:
    with pytest.raises(_crypt.CryptFormatError):
        _crypt.parse_sha_crypt(setting)
    with pytest.raises(MalformedHashError):
        verify_password("x", "{SHA512-CRYPT}" + setting)


def test_huge_rounds_are_clamped_in_the_setting() -> None:
    # Only parsed here: computing 999999999 rounds would take far too long.
    assert _crypt.parse_sha_crypt("$6$rounds=9999999999$s$").rounds == 9_999_999_999
    assert min(9_999_999_999, _crypt.SHA_CRYPT_MAX_ROUNDS) == 999_999_999


def test_non_ascii_password_bytes() -> None:
    # Cross-checked with `openssl passwd -5 -salt xx` on the UTF-8 bytes of "ü".
    assert (
        _crypt.sha_crypt("ü".encode(), "$5$xx")
        == "$5$xx$CW/S09w3BsaP68Fg0TbDoXtc4fHsahDXWNz26SE3CF6"
    )


# MD5-crypt: from `openssl passwd -1` and from Dovecot's `doveadm pw -s MD5-CRYPT`.
MD5_VECTORS = [
    ("password", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    ("", "$1$abc$Or2rbeUYTvt12aiVzMuS/."),
    ("secret", "$1$flZU7pHC$TZ1aI.JYwGC/lldtg5TAd1"),
]


@pytest.mark.parametrize(("password", "expected"), MD5_VECTORS)
def test_md5_crypt_vectors(password: str, expected: str) -> None:
    assert _crypt.md5_crypt(password.encode(), expected) == expected
    assert verify_password(password, "{MD5-CRYPT}" + expected)
    assert verify_password(password, expected, default_scheme="PLAIN")  # bare $1$ is MD5-CRYPT
    assert not verify_password(password + "x", expected)
