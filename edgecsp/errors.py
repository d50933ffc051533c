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
