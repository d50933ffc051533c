"""The one error type the library raises for bad input.

Its message is the line the user sees: what is wrong and what to do. CLI entry points catch it,
print it and exit non-zero, so users never see a traceback for a mistake of theirs.
"""


class EdgeCSPError(Exception):
    """A user-facing error: str(err) is one clear line."""


def shown(text: object) -> str:
    """``text`` as a message shows it: escaped when it holds a newline or other control character
    (a file name may), so the message stays one line."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception, for a one-line message (its type name when it says
    nothing); at most ``limit`` characters: ONNX Runtime and OpenVINO put whole graphs in theirs."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."
