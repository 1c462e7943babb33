"""What ``ListInvocations`` needs besides the store: the filter language and the page token.

The filter is a documented subset of AIP-160, terms joined by ``AND`` (upper case)::

    create_time >= "2026-01-01T00:00:00Z"     inclusive lower bound (RFC 3339)
    create_time < "2026-02-01T00:00:00Z"      exclusive upper bound (RFC 3339)
    model = "ultraface-rfb-320"               a model's name or alias
    state = SUCCEEDED                         SUCCEEDED, FAILED or PENDING (quoted or not)
    metadata.camera = "front"                 a metadata entry (a key of other characters is
    metadata."rear door" = "x"                quoted)

Anything else (``OR``, ``NOT``, parentheses, other fields or operators, a term given twice) is
``INVALID_ARGUMENT`` with a message that names what is supported.

The page token is opaque to clients and made by the server from its own cursor (never the
driver's paging state). It is ``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))``,
where the payload holds the cursor, the hash of the filter and view it was made for, and its
expiry. The first of the configured secrets signs; every one of them verifies (rotation: add the
new secret first, remove the old one after the token lifetime). Every replica must share them.
A token that is garbled, truncated, tampered with, expired, or made for another filter or view
is ``INVALID_ARGUMENT``, never another page.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence

from inference_service.domain import InvocationFilter, PageCursor, State
from inference_service.errors import InvalidArgumentError, quote

SUPPORTED_FILTER = (
    'create_time >= "<RFC 3339>", create_time < "<RFC 3339>", model = "<name or alias>", '
    'state = SUCCEEDED|FAILED|PENDING, metadata.<key> = "<value>", joined by AND'
)
MAX_FILTER_CHARS = 4096

_TERM = re.compile(
    r"""\s*(?P<field>create_time|model|state|metadata\.(?:[A-Za-z_][A-Za-z0-9_\-]*|"(?:[^"\\]|\\.)*"))
        \s*(?P<op>>=|<=|!=|=|<|>|:)
        \s*(?P<value>"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*)
        \s*""",
    re.VERBOSE,
)
_AND = re.compile(r"AND(?=\s)")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _unsupported(detail: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"filter: {detail}; supported: {SUPPORTED_FILTER}")


def _timestamp(text: str, term: str) -> dt.datetime:
    value = _unquote(text)
    try:
        stamp = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise _unsupported(f"{term}: {quote(value)} is not an RFC 3339 time") from None
    if stamp.tzinfo is None or "T" not in value.upper():
        raise _unsupported(f"{term}: {quote(value)} needs a date, a time and a UTC offset")
    return stamp.astimezone(dt.UTC)


def parse_filter(
    text: str, resolve_model: Callable[[str], frozenset[str]] = lambda name: frozenset({name})
) -> InvocationFilter:
    """The ``InvocationFilter`` of an AIP-160 subset expression (module docstring).

    ``resolve_model`` maps the name in ``model = "..."`` to the names it stands for (a model's
    name and aliases). Raises ``InvalidArgumentError`` naming the supported subset."""
    if len(text) > MAX_FILTER_CHARS:
        raise _unsupported(f"longer than {MAX_FILTER_CHARS} characters")
    if not text.strip():
        return InvocationFilter()
    position = 0
    terms: list[re.Match[str]] = []
    while True:
        term = _TERM.match(text, position)
        if term is None:
            rest = text[position:].strip()
            raise _unsupported(f"cannot read {quote(rest)}")
        terms.append(term)
        position = term.end()
        if position == len(text):
            break
        joiner = _AND.match(text, position)
        if joiner is None:
            raise _unsupported(f"expected AND, found {quote(text[position:].strip())}")
        position = joiner.end()
    values: dict[str, object] = {}
    metadata: dict[str, str] = {}
    for term in terms:
        field, op, raw = term["field"], term["op"], term["value"]
        label = quote(f"{field} {op} {raw}")
        if field == "create_time":
            if op not in (">=", "<"):
                raise _unsupported(f"{label}: create_time takes >= and <")
            key = "create_time_min" if op == ">=" else "create_time_max"
            if key in values:
                raise _unsupported(f"{label}: create_time {op} is given twice")
            values[key] = _timestamp(raw, label)
            continue
        if op != "=":
            raise _unsupported(f"{label}: {field} takes = only")
        if field == "model":
            if "models" in values:
                raise _unsupported(f"{label}: model is given twice")
            if not raw.startswith('"'):
                raise _unsupported(f"{label}: the model name is a quoted string")
            values["models"] = resolve_model(_unquote(raw))
        elif field == "state":
            if "state" in values:
                raise _unsupported(f"{label}: state is given twice")
            name = _unquote(raw).upper()
            try:
                values["state"] = State(name)
            except ValueError:
                raise _unsupported(f"{label}: unknown state") from None
        else:
            key = _unquote(field.removeprefix("metadata."))
            if not raw.startswith('"'):
                raise _unsupported(f"{label}: a metadata value is a quoted string")
            if key in metadata:
                raise _unsupported(f"{label}: metadata.{quote(key)} is given twice")
            metadata[key] = _unquote(raw)
    return InvocationFilter(metadata=tuple(sorted(metadata.items())), **values)  # type: ignore[arg-type]


# --- page tokens ----------------------------------------------------------------------------

TOKEN_VERSION = 1
_MAC_BYTES = 32


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parameters_digest(filter_text: str, view: str) -> str:
    """What binds a token to the request it continues: the filter, as given, and the view."""
    material = json.dumps([filter_text, view], ensure_ascii=False).encode()
    return hashlib.sha256(material).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class PageTokens:
    """Makes and checks signed page tokens (module docstring).

    ``secrets``: the first signs, all verify; at least one, each at least 16 bytes.
    ``lifetime``: how long a token stays valid after it is made."""

    secrets: Sequence[bytes]
    lifetime: dt.timedelta = dt.timedelta(hours=24)
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("page tokens need at least one secret")
        if any(len(secret) < 16 for secret in self.secrets):
            raise ValueError("each page token secret must be at least 16 bytes")

    def _mac(self, secret: bytes, payload: bytes) -> bytes:
        return hmac.new(secret, payload, hashlib.sha256).digest()

    def make(self, cursor: PageCursor, parameters: str) -> str:
        """A token for the page after ``cursor`` of the request with ``parameters`` (a
        ``parameters_digest``)."""
        expires = self.clock() + self.lifetime
        body = {
            "v": TOKEN_VERSION,
            "t": _millis(cursor.create_time),
            "i": cursor.id,
            "p": parameters,
            "e": _millis(expires),
        }
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._mac(self.secrets[0], payload))}"

    def read(self, token: str, parameters: str) -> PageCursor:
        """The cursor of a token made by ``make`` for the same ``parameters``; raises
        ``InvalidArgumentError`` for anything else."""
        bad = "page_token is invalid: it is not a next_page_token of this service, or was changed"
        if len(token) > 2048 or token.count(".") != 1:
            raise InvalidArgumentError(bad)
        payload_text, mac_text = token.split(".")
        try:
            payload = _b64decode(payload_text)
            mac = _b64decode(mac_text)
        except (ValueError, binascii.Error):
            raise InvalidArgumentError(bad) from None
        if len(mac) != _MAC_BYTES or not any(
            hmac.compare_digest(mac, self._mac(secret, payload)) for secret in self.secrets
        ):
            raise InvalidArgumentError(bad)
        try:
            body = json.loads(payload)
            if body["v"] != TOKEN_VERSION:
                raise ValueError("version")
            cursor = PageCursor(create_time=_from_millis(body["t"]), id=body["i"])
            expires = _from_millis(body["e"])
            made_for = body["p"]
            if cursor.id is not None and not isinstance(cursor.id, str):
                raise ValueError("id")
        except (ValueError, KeyError, TypeError, OverflowError):
            raise InvalidArgumentError(bad) from None
        if made_for != parameters:
            raise InvalidArgumentError(
                "page_token was made for another filter or view: send the filter and view of "
                "the request that returned it, or start again without a page_token"
            )
        if self.clock() >= expires:
            raise InvalidArgumentError(
                "page_token has expired: start the listing again without a page_token"
            )
        return cursor


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _millis(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def _from_millis(value: object) -> dt.datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("not an integer")
    return _EPOCH + dt.timedelta(milliseconds=value)
