"""SEARCH matching: unit cases and a comparison with a naive stdlib reference."""

from __future__ import annotations

import email
import email.policy
import unicodedata
from email.message import EmailMessage
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from aiodbox.message.search import BodyMatcher, SearchField, SearchKey, fold


def _match(data: bytes, keys: list[SearchKey], chunk: int = 7) -> list[bool]:
    m = BodyMatcher(keys)
    for i in range(0, len(data), chunk):
        m.feed(data[i : i + chunk])
    return m.finish()


def _fixture(fixtures_dir: Path, name: str) -> bytes:
    return next((fixtures_dir / "messages").glob(f"{name}-*.eml")).read_bytes()


def test_fold_matches_case_and_composition() -> None:
    assert fold("É") == fold("é") == fold("e\u0301")
    assert fold("cafe") in fold("CAFÉ")
    assert fold("STRASSE") == fold("straße")


def test_quoted_printable_latin1_body(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "10").replace(b"\n", b"\r\n").replace(b"\r\r", b"\r")
    keys = [
        SearchKey(SearchField.BODY, "CRÈME brûlée"),
        SearchKey(SearchField.BODY, "follows here and continues"),  # soft line break
        SearchKey(SearchField.BODY, "=E9"),
        SearchKey(SearchField.SUBJECT, "quoted-PRINTABLE"),
        SearchKey(SearchField.FROM, "alice@example"),
        SearchKey(SearchField.HEADER, "", header="x-fixture-id"),
        SearchKey(SearchField.HEADER, "", header="x-missing"),
        SearchKey(SearchField.TEXT, "X-Fixture-Id: 10"),
    ]
    for chunk in (1, 3, 50, 10_000):
        assert _match(data, keys, chunk) == [True, True, False, True, True, True, False, True]


def test_encoded_words_in_subject_and_from(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "06")
    keys = [
        SearchKey(SearchField.SUBJECT, "grüsse 👋 AND café"),
        SearchKey(SearchField.FROM, "RENÉE françois <renee@"),
        SearchKey(SearchField.SUBJECT, "=?UTF-8?"),
        SearchKey(SearchField.TEXT, "encoded words in subject"),
        SearchKey(SearchField.BODY, "Subject"),  # "Subject" is in the body too
        SearchKey(SearchField.BODY, "Renée"),  # but the From is not body
    ]
    assert _match(data, keys) == [True, True, False, True, True, False]


def test_base64_attachment_and_nested_message(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "15")
    keys = [
        SearchKey(SearchField.BODY, "original body"),  # inside message/rfc822
        SearchKey(SearchField.TEXT, "The original message"),  # inner Subject
        SearchKey(SearchField.SUBJECT, "The original message"),  # top Subject has it
        SearchKey(SearchField.TO, "nobody"),
    ]
    assert _match(data, keys) == [True, True, True, False]


def test_non_text_parts_are_not_body_searched(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "04")
    assert _match(data, [SearchKey(SearchField.BODY, "iVBORw0KGgo")]) == [False]
    assert _match(data, [SearchKey(SearchField.BODY, "See the attached")]) == [True]


def test_done_allows_stopping_early() -> None:
    body = b"Subject: x\r\n\r\n" + b"needle\r\n" + b"filler line\r\n" * 10_000
    m = BodyMatcher([SearchKey(SearchField.BODY, "NEEDLE")])
    fed = 0
    while not m.done:
        m.feed(body[fed : fed + 100])
        fed += 100
    assert fed < 200
    assert m.finish() == [True]
    header_only = BodyMatcher([SearchKey(SearchField.SUBJECT, "y")])
    header_only.feed(body[:20])
    assert header_only.done
    assert header_only.finish() == [False]


def test_empty_message_and_garbage_never_raise() -> None:
    for data in (
        b"",
        b"\x00\xff\r\n\r\n=?x?b?!!?=",
        b"Content-Transfer-Encoding: base64\r\n\r\n@@@",
    ):
        keys = [SearchKey(f, "a", header="b") for f in SearchField]
        assert len(_match(data, keys)) == len(keys)


# -- comparison with the stdlib email package as a naive reference ------------

_WORDS = ["alpha", "Beta", "gamma", "déjà", "Ärger", "naïve", "CAFÉ", "straße", "zoë", "x=y", "a_b"]
_LATIN1 = [w for w in _WORDS if all(ord(c) < 256 for c in w)]


@st.composite
def _part(draw: st.DrawFn) -> tuple[str, str, str, str]:
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    pool = _WORDS if charset == "utf-8" else _LATIN1
    words = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))
    seps = draw(
        st.lists(st.sampled_from([" ", "\n", "  ", "\t"]), min_size=len(words), max_size=len(words))
    )
    text = "".join(w + s for w, s in zip(words, seps, strict=True))
    cte = draw(st.sampled_from(["base64", "quoted-printable", "8bit"]))
    subtype = draw(st.sampled_from(["plain", "html"]))
    return text, charset, cte, subtype


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(_part(), min_size=1, max_size=3))
    msg = EmailMessage()
    msg["Subject"] = " ".join(draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6)))
    msg["From"] = "Zoë Ärger <zoe@example.test>"
    if len(parts) == 1:
        text, charset, cte, subtype = parts[0]
        msg.set_content(text, subtype=subtype, charset=charset, cte=cte)
    else:
        msg.make_mixed()
        msg.set_boundary("==aiodbox-test-boundary==")  # no random.* in strategies
        for text, charset, cte, subtype in parts:
            sub = EmailMessage()
            sub.set_content(text, subtype=subtype, charset=charset, cte=cte)
            msg.attach(sub)
    return msg.as_bytes(policy=email.policy.SMTP)


def _reference(data: bytes, key: SearchKey) -> bool:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    needle = fold(key.value)
    if key.field is SearchField.SUBJECT:
        return needle in fold(str(msg["subject"]))
    texts = []
    for part in msg.walk():
        if not part.is_multipart() and part.get_content_maintype() == "text":
            texts.append(part.get_content())
    return any(needle in fold(t) for t in texts)


@settings(max_examples=60, deadline=None)
@given(
    data=_message(),
    picks=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 12)), min_size=1, max_size=4),
    splits=st.lists(st.integers(1, 50), min_size=1, max_size=20),
    case=st.sampled_from([str.upper, str.lower, str.title, lambda s: s]),
)
def test_matches_naive_reference(
    data: bytes, picks: list[tuple[int, int]], splits: list[int], case: object
) -> None:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    corpus = " ".join(p.get_content() for p in msg.walk() if not p.is_multipart()) + str(
        msg["subject"]
    )
    keys = []
    for start, length in picks:
        s = start % max(1, len(corpus))
        needle = unicodedata.normalize("NFC", corpus[s : s + length]).strip() or "zzz"
        needle = case(needle)  # type: ignore[operator]
        keys.append(SearchKey(SearchField.BODY, needle))
        keys.append(SearchKey(SearchField.SUBJECT, needle))
    keys.append(SearchKey(SearchField.BODY, "not-in-there"))
    m = BodyMatcher(keys)
    pos = i = 0
    while pos < len(data):
        step = splits[i % len(splits)]
        m.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert m.finish() == [_reference(data, k) for k in keys]
