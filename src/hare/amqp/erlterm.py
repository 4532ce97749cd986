"""Erlang term printing, as far as RabbitMQ's reply texts need it.

RabbitMQ builds some reply texts with ``io_lib:format`` and ``~w``/``~p``: the frame errors
(``type 1, all octets = <<0,50>>: unknown_frame``) print the frame's first octets and an error
term, and ``~p`` wraps a term onto indented lines when it does not fit in 80 columns. Clients see
these texts, so hare prints them the same way: binaries of at most 16 octets, small integers,
atoms and flat tuples of those, in the latin-1 mode RabbitMQ uses. The texts are returned as
``str`` whose code points 0-255 stand for the octets RabbitMQ sends (see ``wire_text``).
"""

from __future__ import annotations

LINE = 80  # io_lib's line length for ~p

_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v",
            0x08: "\\b", 0x0C: "\\f", 0x1B: "\\e"}
_PRINTABLE = frozenset(range(32, 127)) | frozenset(range(160, 256)) | frozenset(
    (0x0A, 0x0D, 0x09, 0x0B, 0x08, 0x0C, 0x1B))


def w_binary(data: bytes) -> str:
    """``~w`` of a binary: ``<<0,50,10>>``, never wrapped."""
    return "<<" + ",".join(map(str, data)) + ">>"


def p_binary(data: bytes, col: int) -> str:
    """``~p`` of a binary starting at 1-based column ``col``: a string when every octet is
    printable (``<<"abc">>``, never wrapped), else octets filled onto lines of 80 columns."""
    if not data:
        return "<<>>"
    if all(b in _PRINTABLE for b in data):
        return '<<"' + "".join(_ESCAPES.get(b, chr(b)) for b in data) + '">>'
    flat = w_binary(data)
    if len(flat) < LINE - col:
        return flat
    # io_lib_pretty's pp_binary: fill "N," items into a width of at least 8, indented under "<<"
    width = max(8, min(LINE - col - 2, len(flat) - 4))
    indent = "\n" + " " * (col + 1)
    items = [str(b) for b in data]
    out = ["<<"]
    room = width
    for item in items[:-1]:
        need = len(item) + 1
        if room - need < 0:
            out.append(indent)
            room = width - need
        else:
            room -= need
        out.append(item + ",")
    last = items[-1]
    if len(last) > room:
        out.append(indent)
    out.append(last + ">>")
    return "".join(out)


def p_string(data: bytes) -> str:
    """``~p`` of an Erlang string (a list of octets): ``"abc"`` when every octet is printable,
    else the list of numbers ``[1,2,3]``."""
    if all(b in _PRINTABLE for b in data):
        return '"' + "".join(_ESCAPES.get(b, chr(b)) for b in data) + '"'
    return "[" + ",".join(map(str, data)) + "]"


def p_tuple(items: list[str], col: int) -> str:
    """``~p`` of a flat tuple whose first element is an atom, at 1-based column ``col``: one
    line if it fits, else the tag and then one element per line under the brace. (Checked against
    Erlang/OTP 25 for 2-tuples; RabbitMQ's one 3-tuple, frame_too_large, always fits.)"""
    flat = "{" + ",".join(items) + "}"
    if len(flat) < LINE - col:
        return flat
    return "{" + items[0] + "," + ",".join("\n" + " " * col + i for i in items[1:]) + "}"


def column(text: str) -> int:
    """The 1-based column after ``text`` (io_lib counts from the last line break; a tab moves to
    the next multiple of 8)."""
    col = 0
    for c in text[text.rfind("\n") + 1 :]:
        col = (col // 8 + 1) * 8 if c == "\t" else col + 1
    return col + 1


def frame_snippet(ftype: int, payload: bytes) -> str:
    """``type ~p, ~s octets = ~p`` as rabbit_reader prints a bad frame (its first 16 octets)."""
    if len(payload) <= 16:
        head = f"type {ftype}, all octets = "
    else:
        head = f"type {ftype}, first 16 octets = "
        payload = payload[:16]
    return head + p_binary(payload, column(head))


def frame_error_text(ftype: int, payload: bytes, error: str | tuple[str, ...]) -> str:
    """``type ~p, ~s octets = ~p: ~p``: a frame error with its reason (an atom or a tuple)."""
    text = frame_snippet(ftype, payload) + ": "
    if isinstance(error, tuple):
        return text + p_tuple(list(error), column(text))
    return text + error


def wire_text(text: str) -> str:
    """``text`` whose code points are octets, as hare's str for them (UTF-8, surrogate escapes)."""
    return text.encode("latin-1").decode("utf-8", "surrogateescape")
