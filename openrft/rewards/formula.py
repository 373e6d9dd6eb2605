"""Safe arithmetic for the `multi` grader's `calculate_output`, e.g. `0.7 * a + 0.3 * b`.

Owns a small tokenizer, a recursive-descent parser that builds a tree of plain dataclasses,
and an evaluator for that tree. User text is never passed to eval/exec/compile or to Python's
`ast`: only the grammar below is accepted, so `__import__('os')`, `a.b` or `a[0]` are syntax
errors. `parse(text)` raises `FormulaError(message, position)`, where position is the 0-based
character offset, so `" " * position + "^"` points at the culprit (see `point_at`).

Grammar, loosest binding first (`**` is a synonym of `^`; both are right-associative and bind
tighter than unary minus, so `-2^2 == -4` and `2^-1 == 0.5`, as in Python and mathematics):

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("+" | "-") unary | power
    power      := atom (("^" | "**") unary)?
    atom       := NUMBER | NAME | FUNCTION "(" expression ("," expression)* ")" | "(" expression ")"
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

MAX_LENGTH = 10_000  # characters; a longer formula is a mistake or an attack, not a reward
MAX_DEPTH = 64  # nesting of parentheses, signs and powers; keeps recursion far from Python's limit

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>\*\*|[-+*/^(),])""",
    re.VERBOSE | re.ASCII,
)
ALLOWED = "numbers, grader keys, + - * / ^ ** ( ) and the functions "


class FormulaError(ValueError):
    """A formula that does not parse or cannot be evaluated; `position` is a 0-based offset."""

    def __init__(self, message: str, position: int):
        self.message = message
        self.position = position
        super().__init__(f"{message} (at position {position})")


def _call_min(*args: float) -> float:
    return min(args)


def _call_max(*args: float) -> float:
    return max(args)


# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "min": (_call_min, 1, None),
    "max": (_call_max, 1, None),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 1),  # natural logarithm
}


def _divide(left: float, right: float) -> float:
    if right == 0:
        raise ZeroDivisionError("division by zero")
    return left / right


# math.pow rather than `**`: `**` turns (-8) ** (1/3) into a complex number instead of failing.
BINARY: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
    "^": math.pow,
}


# --- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Name:
    name: str
    position: int


@dataclass(frozen=True)
class Negate:
    operand: Node
    position: int


@dataclass(frozen=True)
class Chain:
    """A left-associative run `first op x op y ...` kept flat, so `a+a+...+a` is not deep."""

    first: Node
    rest: tuple[tuple[str, int, Node], ...]  # (operator, its position, right operand)


@dataclass(frozen=True)
class Power:
    base: Node
    exponent: Node
    position: int


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]
    position: int


Node = Number | Name | Negate | Chain | Power | Call


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    position: int


# --- tokenizer and parser -------------------------------------------------------------------


def tokenize(text: str) -> list[Token]:
    """The formula's tokens, ending with an "end" token; raises FormulaError on anything else."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FormulaError(_unexpected_character(text[position]), position)
        kind = match.lastgroup or ""
        if kind == "number" and re.match(r"[A-Za-z0-9_.]", text[match.end() : match.end() + 1]):
            bad = re.match(r"[A-Za-z0-9_.]+", text[position:])
            raise FormulaError(f"malformed number {bad.group() if bad else ''!r}", position)
        if kind != "space":
            tokens.append(Token(kind, match.group(), position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _unexpected_character(char: str) -> str:
    if char in "'\"":
        return f"strings are not allowed (found {char!r}); use {ALLOWED}{', '.join(FUNCTIONS)}"
    return f"unexpected character {char!r}; use {ALLOWED}{', '.join(FUNCTIONS)}"


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.index = 0
        self.depth = 0
        self.names: dict[str, int] = {}  # name -> first position, in order of appearance

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    @contextmanager
    def nested(self, position: int) -> Iterator[None]:
        # Every cycle of the grammar passes through `unary`, so guarding it bounds recursion.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"formula nests deeper than {MAX_DEPTH} levels", position)
        try:
            yield
        finally:
            self.depth -= 1

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise FormulaError("formula is empty", 0)
        node = self.expression()
        token = self.peek()
        if token.text == ")":
            raise FormulaError("unmatched ')'", token.position)
        if token.kind != "end":
            raise FormulaError(f"expected an operator before {token.text!r}", token.position)
        return node

    def chain(self, operators: str, operand: Callable[[], Node]) -> Node:
        first = operand()
        rest: list[tuple[str, int, Node]] = []
        while self.peek().kind == "op" and self.peek().text in operators:
            token = self.take()
            rest.append((token.text, token.position, operand()))
        return Chain(first, tuple(rest)) if rest else first

    def expression(self) -> Node:
        return self.chain("+-", self.term)

    def term(self) -> Node:
        return self.chain("*/", self.unary)

    def unary(self) -> Node:
        token = self.peek()
        with self.nested(token.position):
            if token.kind == "op" and token.text in "+-":
                self.take()
                operand = self.unary()
                return Negate(operand, token.position) if token.text == "-" else operand
            return self.power()

    def power(self) -> Node:
        base = self.atom()
        token = self.peek()
        if token.kind == "op" and token.text in ("^", "**"):
            self.take()
            return Power(base, self.unary(), token.position)
        return base

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            value = float(token.text)
            if not math.isfinite(value):
                raise FormulaError(f"number {token.text} is too large", token.position)
            return Number(value)
        if token.kind == "name":
            return self.call(token) if token.text in FUNCTIONS else self.name(token)
        if token.text == "(":
            node = self.expression()
            self.expect_close(token)
            return node
        if token.kind == "end":
            raise FormulaError(
                "expected a number, a name or '(' but the formula ended", token.position
            )
        raise FormulaError(
            f"expected a number, a name or '(' but found {token.text!r}", token.position
        )

    def name(self, token: Token) -> Node:
        if self.peek().text == "(":
            known = ", ".join(FUNCTIONS)
            raise FormulaError(f"unknown function {token.text!r}; known: {known}", token.position)
        self.names.setdefault(token.text, token.position)
        return Name(token.text, token.position)

    def call(self, token: Token) -> Node:
        if self.peek().text != "(":
            raise FormulaError(
                f"{token.text!r} is a function; write {token.text}(...)", token.position
            )
        opening = self.take()
        args = [] if self.peek().text == ")" else [self.expression()]
        while self.peek().text == ",":
            self.take()
            args.append(self.expression())
        self.expect_close(opening)
        _, fewest, most = FUNCTIONS[token.text]
        if len(args) < fewest or (most is not None and len(args) > most):
            wanted = f"exactly {fewest}" if fewest == most else f"at least {fewest}"
            message = f"{token.text}() takes {wanted} argument(s), got {len(args)}"
            raise FormulaError(message, token.position)
        return Call(token.text, tuple(args), token.position)

    def expect_close(self, opening: Token) -> None:
        token = self.take()
        if token.text == ")":
            return
        if token.kind == "end":
            message = f"missing ')' to close the '(' at position {opening.position}"
        else:
            message = f"expected ',' or ')' but found {token.text!r}"
        raise FormulaError(message, token.position)


# --- the public expression ------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A parsed formula: `names` lists the referenced names in order of first appearance."""

    text: str
    root: Node = field(repr=False)
    positions: Mapping[str, int] = field(repr=False)  # name -> its first position

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.positions)

    def check_names(self, known: Collection[str]) -> None:
        """Raises FormulaError at the first name that is not in `known`."""
        for name, position in self.positions.items():
            if name not in known:
                choices = ", ".join(sorted(known)) or "(none)"
                raise FormulaError(f"unknown name {name!r}; known names: {choices}", position)

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value; raises FormulaError for unknown names, division by zero,
        domain errors (sqrt or log of a negative number) and non-finite results."""
        return _evaluate(self.root, values)


def parse(text: str) -> Expression:
    """Parses a formula; raises FormulaError naming the problem and its position."""
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    parser = _Parser(tokenize(text))
    root = parser.parse()
    return Expression(text, root, dict(parser.names))


def point_at(text: str, position: int, width: int = 70) -> str:
    """Two lines: the formula (a window of it when long) and a caret under `position`."""
    start = max(0, min(position - width // 2, len(text) - width))
    window = text[start : start + width].replace("\n", " ").replace("\t", " ")
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + width < len(text) else ""
    return f"{prefix}{window}{suffix}\n{' ' * (len(prefix) + position - start)}^"


def _evaluate(node: Node, values: Mapping[str, float]) -> float:
    match node:
        case Number(value):
            return value
        case Name(name, position):
            return _lookup(name, position, values)
        case Negate(operand, _):
            return -_evaluate(operand, values)
        case Chain(first, rest):
            result = _evaluate(first, values)
            for symbol, position, operand in rest:
                right = _evaluate(operand, values)
                result = _apply(BINARY[symbol], (result, right), symbol, position)
            return result
        case Power(base, exponent, position):
            pair = (_evaluate(base, values), _evaluate(exponent, values))
            return _apply(BINARY["^"], pair, "^", position)
        case Call(function, args, position):
            arguments = tuple(_evaluate(arg, values) for arg in args)
            return _apply(FUNCTIONS[function][0], arguments, function, position)
    raise TypeError(f"not a formula node: {node!r}")  # unreachable: the parser builds the tree


def _lookup(name: str, position: int, values: Mapping[str, float]) -> float:
    if name not in values:
        raise FormulaError(f"unknown name {name!r}", position)
    value = values[name]
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise FormulaError(f"{name!r} is {value!r}, not a finite number", position)
    return float(value)


def _apply(
    function: Callable[..., float], args: tuple[float, ...], label: str, position: int
) -> float:
    """Calls an operator or function; `label` is its symbol or name, for the error message."""
    shown = (
        f"{args[0]:g} {label} {args[1]:g}"
        if label in BINARY
        else (f"{label}({', '.join(f'{arg:g}' for arg in args)})")
    )
    try:
        result = float(function(*args))
    except ZeroDivisionError:
        raise FormulaError(f"division by zero in {shown}", position) from None
    except OverflowError:
        raise FormulaError(f"{shown} overflows", position) from None
    except ValueError:
        raise FormulaError(f"{shown} is undefined", position) from None
    if not math.isfinite(result):
        raise FormulaError(f"{shown} is {result}, not a finite number", position)
    return result
