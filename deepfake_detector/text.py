"""Text that every writer can write and no terminal runs: file names that are not UTF-8 and
control characters written as escapes. The one rule for every message that holds a file name
(tables, CSV, JSON, stderr, logs)."""

from __future__ import annotations


def unsurrogate(text: str) -> str:
    """A file name that is not UTF-8 (Python holds its bad bytes as lone surrogates, which no
    UTF-8 writer takes) with each bad byte written ``\\xff``: every writer can write it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text) -> str:
    """``text`` safe for a terminal: bytes that are not UTF-8 and control characters
    (newlines, escape codes...) written as Python escapes, so a crafted file name cannot fake
    rows or drive the terminal. Every message holding a file name goes through it."""
    text = unsurrogate(str(text))
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
