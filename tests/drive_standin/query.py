"""The `files.list` `q` language subset (shared/reference/gdrive.md §1.3, §7.3).

Grammar::

    expr   := and_ ('or' and_)*
    and_   := unary ('and' unary)*
    unary  := 'not' unary | '(' expr ')' | term
    term   := FIELD OP VALUE | VALUE 'in' FIELD | FIELD 'contains' VALUE

String literals use single (or, tolerated, double) quotes with the `\\'` and `\\\\` escapes.
Keywords (`and`, `or`, `not`, `in`, `contains`, `true`, `false`) are case-insensitive; field
names are case-sensitive.  Any syntax or type error raises :class:`QueryError`, which the server
turns into 400 `invalid` (location `q`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .store import Item, parse_rfc3339


class QueryError(ValueError):
    pass


@dataclass
class Token:
    kind: str  # 'str', 'word', 'op', 'lp', 'rp', 'end'
    value: str
    pos: int


_OPS = ("<=", ">=", "!=", "=", "<", ">")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "'\"":
            quote, start, buf = ch, i, []
            i += 1
            while True:
                if i >= n:
                    raise QueryError(f"unterminated string starting at {start}")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise QueryError("dangling backslash")
                    nxt = text[i + 1]
                    if nxt not in ("\\", "'", '"'):
                        raise QueryError(f"invalid escape \\{nxt} at {i}")
                    buf.append(nxt)
                    i += 2
                    continue
                if c == quote:
                    i += 1
                    break
                buf.append(c)
                i += 1
            tokens.append(Token("str", "".join(buf), start))
            continue
        if ch == "(":
            tokens.append(Token("lp", ch, i))
            i += 1
            continue
        if ch == ")":
            tokens.append(Token("rp", ch, i))
            i += 1
            continue
        for op in _OPS:
            if text.startswith(op, i):
                tokens.append(Token("op", op, i))
                i += len(op)
                break
        else:
            m = _WORD.match(text, i)
            if not m:
                raise QueryError(f"unexpected character {ch!r} at {i}")
            tokens.append(Token("word", m.group(0), i))
            i = m.end()
    tokens.append(Token("end", "", n))
    return tokens


Predicate = Callable[[Item, "EvalContext"], bool]


@dataclass
class EvalContext:
    """What a predicate needs besides the item."""

    root_id: str
    is_trashed: Callable[[Item], bool]


def _token_prefix_match(name: str, needle: str) -> bool:
    """`name contains` is token-prefix, case-insensitive; non-alphanumerics split tokens."""
    hay, pin = name.casefold(), needle.casefold()
    if not pin:
        return True
    for i in range(len(hay)):
        if (i == 0 or not hay[i - 1].isalnum()) and hay.startswith(pin, i):
            return True
    return False


def _whole_token_match(name: str, needle: str) -> bool:
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name.casefold()) if w]
    wanted = [w for w in re.split(r"[^0-9A-Za-z]+", needle.casefold()) if w]
    if not wanted:
        return False
    for i in range(len(words) - len(wanted) + 1):
        if words[i:i + len(wanted)] == wanted:
            return True
    return False


_CMP: dict[str, Callable[[object, object], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
_TIME_FIELDS = {"modifiedTime": "modified", "createdTime": "created",
                "viewedByMeTime": "modified", "modifiedByMeTime": "modified"}
_BOOL_FIELDS = {"trashed", "starred", "sharedWithMe"}


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_kw(self, tok: Token, word: str) -> bool:
        return tok.kind == "word" and tok.value.lower() == word

    def parse(self) -> Predicate:
        if self.peek().kind == "end":
            raise QueryError("empty query")
        pred = self.expr()
        if self.peek().kind != "end":
            raise QueryError(f"unexpected {self.peek().value!r} at {self.peek().pos}")
        return pred

    def expr(self) -> Predicate:
        parts = [self.and_()]
        while self.is_kw(self.peek(), "or"):
            self.take()
            parts.append(self.and_())
        if len(parts) == 1:
            return parts[0]
        return lambda item, ctx: any(p(item, ctx) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.is_kw(self.peek(), "and"):
            self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda item, ctx: all(p(item, ctx) for p in parts)

    def unary(self) -> Predicate:
        tok = self.peek()
        if self.is_kw(tok, "not"):
            self.take()
            inner = self.unary()
            return lambda item, ctx: not inner(item, ctx)
        if tok.kind == "lp":
            self.take()
            inner = self.expr()
            if self.take().kind != "rp":
                raise QueryError("missing ')'")
            return inner
        return self.term()

    def _value(self) -> Token:
        tok = self.take()
        if tok.kind == "str" or (tok.kind == "word" and tok.value.lower() in ("true", "false")):
            return tok
        raise QueryError(f"expected a value at {tok.pos}, got {tok.value!r}")

    def term(self) -> Predicate:
        first = self.take()
        if first.kind == "str":  # VALUE in FIELD
            if not self.is_kw(self.take(), "in"):
                raise QueryError(f"expected 'in' after {first.value!r}")
            fld = self.take()
            if fld.kind != "word":
                raise QueryError("expected a collection after 'in'")
            return self._membership(first.value, fld.value)
        if first.kind != "word" or first.value.lower() in ("and", "or", "in", "contains", "true", "false"):
            raise QueryError(f"expected a query term at {first.pos}, got {first.value!r}")
        name = first.value
        op_tok = self.take()
        if self.is_kw(op_tok, "contains"):
            op = "contains"
        elif op_tok.kind == "op":
            op = op_tok.value
        else:
            raise QueryError(f"expected an operator after {name!r}")
        value = self._value()
        return self._comparison(name, op, value)

    def _membership(self, value: str, collection: str) -> Predicate:
        if collection == "parents":
            return lambda item, ctx: item.parent is not None and item.parent == (
                ctx.root_id if value == "root" else value)
        if collection == "owners":
            return lambda item, ctx: value in ("me",) and item.drive_id is None
        if collection in ("writers", "readers"):
            return lambda item, ctx: value == "me"
        raise QueryError(f"unsupported collection {collection!r}")

    def _comparison(self, name: str, op: str, value: Token) -> Predicate:
        is_bool = value.kind == "word"
        if name in ("name", "mimeType", "fullText", "description"):
            if is_bool:
                raise QueryError(f"{name} needs a quoted string")
            text = value.value
            attr = {"name": "name", "mimeType": "mime_type", "description": "description"}.get(name)
            if name == "fullText":
                if op != "contains":
                    raise QueryError("fullText only supports contains")
                return lambda item, ctx: _whole_token_match(item.name, text) or _whole_token_match(
                    item.description or "", text)
            if op == "contains":
                if name == "name":
                    return lambda item, ctx: _token_prefix_match(item.name, text)
                return lambda item, ctx: text.casefold() in (getattr(item, attr) or "").casefold()
            if op not in ("=", "!="):
                raise QueryError(f"{name} does not support {op}")
            if name == "name":  # case-insensitive equality
                want = text.casefold()
                return lambda item, ctx: (item.name.casefold() == want) == (op == "=")
            return lambda item, ctx: ((getattr(item, attr) or "") == text) == (op == "=")
        if name in _BOOL_FIELDS:
            if not is_bool:
                raise QueryError(f"{name} needs an unquoted true or false")
            if op not in ("=", "!="):
                raise QueryError(f"{name} does not support {op}")
            want = value.value.lower() == "true"

            def getter(item: Item, ctx: EvalContext) -> bool:
                if name == "trashed":
                    return ctx.is_trashed(item)
                return item.starred if name == "starred" else item.shared_with_me
            return lambda item, ctx: (getter(item, ctx) == want) == (op == "=")
        if name in _TIME_FIELDS:
            if is_bool or op == "contains":
                raise QueryError(f"{name} needs a quoted RFC 3339 time and a comparison")
            try:
                when: datetime = parse_rfc3339(value.value)
            except ValueError as exc:
                raise QueryError(f"bad time {value.value!r}") from exc
            attr = _TIME_FIELDS[name]
            cmp = _CMP[op]
            return lambda item, ctx: cmp(getattr(item, attr), when)
        raise QueryError(f"unsupported query term {name!r}")


def compile_query(text: str) -> Predicate:
    """Compile `q` into a predicate, or raise :class:`QueryError`."""
    return _Parser(text).parse()


def escape(value: str) -> str:
    """How a client should quote a literal: backslashes first, then single quotes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
