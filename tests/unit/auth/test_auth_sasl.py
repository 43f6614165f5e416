"""SASL PLAIN and LOGIN state machines (sans-IO)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiodbox.auth.errors import (
    SaslAuthzRefused,
    SaslCancelled,
    SaslLocalError,
    SaslRemoteError,
)
from aiodbox.auth.sasl import (
    MAX_RESPONSE_BYTES,
    Challenge,
    Credentials,
    SaslServer,
    SaslState,
    decode_response,
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response() -> None:
    sasl = SaslServer()
    event = sasl.start("PLAIN", b64(b"\x00alice\x00s3cret"))
    assert event == Credentials("PLAIN", "alice", b"s3cret", None)
    assert sasl.state is SaslState.DONE
    assert sasl.mechanism == "PLAIN"


def test_plain_with_a_continuation() -> None:
    sasl = SaslServer()
    challenge = sasl.start("plain", None)
    assert challenge == Challenge(b"")
    assert isinstance(challenge, Challenge)
    assert challenge.encoded() == b""
    assert sasl.state is SaslState.PLAIN_RESPONSE
    event = sasl.step(b64("\x00jürgen\x00pässword".encode()) + b"\r\n")
    assert event == Credentials("PLAIN", "jürgen", "pässword".encode(), None)


def test_plain_authzid_equal_is_accepted_different_is_refused() -> None:
    event = SaslServer().start("PLAIN", b64(b"alice\x00alice\x00pw"))
    assert event == Credentials("PLAIN", "alice", b"pw", "alice")
    sasl = SaslServer()
    with pytest.raises(SaslAuthzRefused, match="'bob' differs from 'alice'"):
        sasl.start("PLAIN", b64(b"bob\x00alice\x00pw"))
    assert sasl.state is SaslState.FAILED


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"alice\x00pw", "expected authzid NUL authcid NUL password"),
        (b"\x00alice\x00pw\x00", "expected authzid NUL authcid NUL password"),
        (b"", "expected authzid NUL authcid NUL password"),
        (b"\x00\x00pw", "empty authentication identity"),
        (b"\x00alice\x00", "empty password"),
        (b"\x00al\xffice\x00pw", "not valid UTF-8"),
        (b"\xff\x00alice\x00pw", "not valid UTF-8"),
    ],
)
def test_plain_malformed_messages(message: bytes, error: str) -> None:
    sasl = SaslServer()
    with pytest.raises(SaslRemoteError, match=error):
        sasl.start("PLAIN", b64(message))
    assert sasl.state is SaslState.FAILED


def test_empty_initial_response_is_equals_sign() -> None:
    assert decode_response(b"=", initial=True) == b""
    with pytest.raises(SaslRemoteError, match="expected authzid"):
        SaslServer().start("PLAIN", b"=")  # empty is a malformed PLAIN message
    with pytest.raises(SaslRemoteError, match="base64"):
        decode_response(b"=")  # '=' only means empty for an initial response


@pytest.mark.parametrize(
    "bad",
    [
        b"!!!!",
        b"QUI",
        b"QUJD=",
        b"QU JD",
        b"QUJD\x00",
        b"=QUJ",
        b"QUJDRA==QUJD",
        b"Zm9v\xc3",
    ],
)
def test_malformed_base64(bad: bytes) -> None:
    sasl = SaslServer()
    sasl.start("PLAIN")
    with pytest.raises(SaslRemoteError, match="invalid base64"):
        sasl.step(bad)
    assert sasl.state is SaslState.FAILED
    with pytest.raises(SaslRemoteError, match="invalid base64"):
        SaslServer().start("PLAIN", bad)


def test_overlong_response() -> None:
    sasl = SaslServer()
    sasl.start("LOGIN")
    with pytest.raises(SaslRemoteError, match="longer than"):
        sasl.step(b"QUJD" * (MAX_RESPONSE_BYTES // 4 + 1))


def test_login_two_round_trips() -> None:
    sasl = SaslServer()
    first = sasl.start("LOGIN", None)
    assert first == Challenge(b"Username:")
    assert isinstance(first, Challenge) and first.encoded() == b"VXNlcm5hbWU6"
    second = sasl.step(b64(b"alice"))
    assert second == Challenge(b"Password:")
    assert isinstance(second, Challenge) and second.encoded() == b"UGFzc3dvcmQ6"
    assert sasl.state is SaslState.LOGIN_PASSWORD
    assert sasl.step(b64(b"pw") + b"\r\n") == Credentials("LOGIN", "alice", b"pw")
    assert sasl.state is SaslState.DONE


def test_login_with_the_username_as_initial_response() -> None:
    sasl = SaslServer()
    assert sasl.start("LOGIN", b64(b"alice")) == Challenge(b"Password:")
    assert sasl.step(b64(b"pw")) == Credentials("LOGIN", "alice", b"pw")


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        (b"", b"pw", "empty username"),
        (b"al\x00ice", b"pw", "NUL in username"),
        (b"alice", b"", "empty password"),
        (b"alice", b"p\x00w", "NUL in password"),
    ],
)
def test_login_malformed(username: bytes, password: bytes, error: str) -> None:
    sasl = SaslServer()
    sasl.start("LOGIN")
    with pytest.raises(SaslRemoteError, match=error):
        sasl.step(b64(username))
        sasl.step(b64(password))
    assert sasl.state is SaslState.FAILED


@pytest.mark.parametrize(
    ("mechanism", "steps_before_cancel"), [("PLAIN", 0), ("LOGIN", 0), ("LOGIN", 1)]
)
def test_cancel_with_star(mechanism: str, steps_before_cancel: int) -> None:
    sasl = SaslServer()
    sasl.start(mechanism)
    for _ in range(steps_before_cancel):
        sasl.step(b64(b"alice"))
    with pytest.raises(SaslCancelled):
        sasl.step(b"*\r\n")
    assert sasl.state is SaslState.FAILED
    with pytest.raises(SaslLocalError):
        sasl.step(b64(b"pw"))


def test_cancel_is_a_remote_error() -> None:
    assert issubclass(SaslCancelled, SaslRemoteError)
    assert issubclass(SaslAuthzRefused, SaslRemoteError)


def test_driving_the_machine_wrongly_is_a_local_error() -> None:
    sasl = SaslServer()
    with pytest.raises(SaslLocalError, match="idle"):
        sasl.step(b"")
    sasl.start("PLAIN", b64(b"\x00a\x00b"))
    with pytest.raises(SaslLocalError, match="done"):
        sasl.step(b"")
    with pytest.raises(SaslLocalError, match="start"):
        sasl.start("PLAIN", b64(b"\x00a\x00b"))


def test_mechanisms() -> None:
    with pytest.raises(SaslRemoteError, match="'CRAM-MD5'"):
        SaslServer().start("CRAM-MD5")
    login_only = SaslServer(["login"])
    with pytest.raises(SaslRemoteError, match="unsupported"):
        login_only.start("PLAIN", b64(b"\x00a\x00b"))
    with pytest.raises(ValueError, match="not implemented"):
        SaslServer(["PLAIN", "GSSAPI"])


def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("PLAIN", "alice", b"hunter2")
    assert "hunter2" not in repr(creds)
    assert "alice" in repr(creds)


@given(st.binary(max_size=64), st.sampled_from(["PLAIN", "LOGIN"]), st.booleans())
def test_any_input_either_parses_or_is_a_remote_error(
    data: bytes, mechanism: str, as_initial_response: bool
) -> None:
    for raw in (data, base64.b64encode(data)):
        sasl = SaslServer()
        try:
            if as_initial_response:
                event = sasl.start(mechanism, raw)
            else:
                sasl.start(mechanism)
                event = sasl.step(raw)
            while isinstance(event, Challenge):
                event = sasl.step(raw)
        except SaslRemoteError:
            assert sasl.state is SaslState.FAILED
        else:
            assert isinstance(event, Credentials)
            assert sasl.state is SaslState.DONE
