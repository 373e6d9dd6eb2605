"""Calculator tools for `builtin:arithmetic` (env.tools = "builtin:calculator"): plain
functions, as a user's tools file would have them; openrft runs them in worker processes."""


def add(a: int, b: int) -> int:
    """Add two integers: a + b."""
    return a + b


def subtract(a: int, b: int) -> int:
    """Subtract two integers: a - b."""
    return a - b


def multiply(a: int, b: int) -> int:
    """Multiply two integers: a * b."""
    return a * b
