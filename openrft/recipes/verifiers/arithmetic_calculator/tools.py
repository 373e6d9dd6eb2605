"""The calculator tools (verifiers starts this as `python -m arithmetic_calculator.tools`)."""

import verifiers.v1 as vf


class Calculator(vf.Toolset[vf.ToolsetConfig]):
    TOOL_PREFIX = None  # the model sees add, subtract, multiply (as in the worked example)

    @vf.tool
    def add(self, a: int, b: int) -> str:
        """Add two integers: a + b."""
        return str(a + b)

    @vf.tool
    def subtract(self, a: int, b: int) -> str:
        """Subtract two integers: a - b."""
        return str(a - b)

    @vf.tool
    def multiply(self, a: int, b: int) -> str:
        """Multiply two integers: a * b."""
        return str(a * b)


if __name__ == "__main__":
    Calculator.run()
