"""Large JSON tensor data (and feedback's labels: `objects_in_slices`) decoded in slices, so that
decoding one large request on a worker thread leaves the GIL (and with it the event loop, every
other connection) free between slices.

msgspec and numpy's list conversion hold the GIL for a whole call: a 50 MB `data` array decoded
in one call stalls the loop for a quarter of a second whatever thread runs it. Here the request
is decoded with each input's `data` left as raw JSON (one pass of msgspec's scanner), then a
flat array of numbers is cut at commas into slices of about `SLICE_BYTES`, each decoded and made
an array on its own. The result is the same array `np.asarray(data)` gives; anything this path
cannot vouch for that (nested lists, strings, nulls, slices inferring different dtypes) goes
back to decoding the whole `data` at once, whose messages and answers it keeps.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

SLICE_BYTES = 256 << 10  # about a millisecond of msgspec and numpy per slice


class RawInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")  # absent or null: no data (binary_data_size)


def data_of(raw: msgspec.Raw, datatype: str) -> Any:
    """An input's data: an ndarray decoded in slices where that is safe, else the decoded JSON
    (a list, None, or anything else the tensor decoder then refuses with its own message)."""
    view = memoryview(raw)  # never copied whole: a copy of 50 MB holds the GIL too
    if datatype != "BYTES" and len(view) > SLICE_BYTES:
        values = _sliced(view)
        if values is not None:
            return values
    return msgspec.json.decode(view)


_SPACE = b" \t\r\n"
_EDGE = 64  # whitespace around the array longer than this: decoded whole


def _sliced(view: memoryview) -> np.ndarray | None:
    """A flat JSON array of numbers or booleans as one ndarray, or None where slices cannot stand for
    the whole (nested, strings, mixed types, not an array)."""
    head = bytes(view[:_EDGE])
    tail = bytes(view[-_EDGE:])
    first = len(head) - len(head.lstrip(_SPACE))
    last = len(view) - 1 - (len(tail) - len(tail.rstrip(_SPACE)))
    if first >= _EDGE or last < len(view) - _EDGE or view[first] != ord("[") or view[last] != ord("]") or \
            bytes(view[first + 1:first + 1 + _EDGE]).lstrip(_SPACE).startswith(b"["):
        return None
    parts = []
    start, end = first + 1, last
    while start < end:
        cut = _next_comma(view, min(start + SLICE_BYTES, end), end)
        stop = end if cut < 0 else cut
        piece = bytes(view[start:stop])
        if b'"' in piece:
            return None
        try:
            part = np.asarray(msgspec.json.decode(b"[" + piece + b"]"))
        except (msgspec.DecodeError, ValueError):
            return None
        same = not parts or part.dtype == parts[0].dtype  # else np.asarray(whole) may infer otherwise
        if part.ndim != 1 or not part.size or not same or part.dtype.kind not in "biuf":
            return None
        parts.append(part)
        start = stop + 1
    return np.concatenate(parts) if parts else None


def _next_comma(view: memoryview, pos: int, end: int, window: int = 256) -> int:
    while pos < end:
        found = bytes(view[pos:min(pos + window, end)]).find(b",")
        if found >= 0:
            return pos + found
        pos += window
    return -1


def objects_in_slices(view: memoryview, start: int, end: int, decode_piece) -> list:
    """The items of a JSON array of objects whose members hold no object (feedback's labels),
    the array's inside being view[start:end] (between its brackets), decoded a slice of about
    `SLICE_BYTES` at a time: `decode_piece(piece, first)` decodes `[piece]` (`first`: the index
    of its first item in the whole array) and raises what the client got wrong. A slice ends at
    a closing brace outside strings, so every piece is whole items."""
    items: list = []
    pos = start
    while pos < end:
        size = SLICE_BYTES
        while True:  # an item longer than the slice: a larger one
            stop = min(pos + size, end)
            if stop == end:
                cut = end
                break
            ends = object_ends(view[pos:stop])
            if ends.size:
                cut = pos + int(ends[-1]) + 1
                break
            size *= 2
        piece = bytes(view[pos:cut]).strip(_SPACE)
        if pos != start and piece:  # after a cut: nothing but whitespace, or a comma then more items
            if not piece.startswith(b",") or not piece[1:].strip(_SPACE):
                raise msgspec.DecodeError(f"JSON is malformed: expected ',' and an item after item {len(items) - 1} "
                                          f"(byte {pos})")
            piece = piece[1:]
        if piece:
            items += decode_piece(piece, len(items))
        pos = cut
    return items


def unescaped_quotes(chars: np.ndarray) -> np.ndarray:
    """Offsets of the quotes in `chars` that no backslash escapes: a quote is escaped by an odd
    run of backslashes just before it."""
    quotes = np.flatnonzero(chars == ord('"'))
    backslash = chars == ord("\\")
    if quotes.size and backslash.any():
        last_other = np.maximum.accumulate(np.where(backslash, -1, np.arange(chars.size)))
        before = quotes - 1
        run = np.where(before >= 0, before - last_other[np.maximum(before, 0)], 0)
        quotes = quotes[run % 2 == 0]
    return quotes


def object_ends(window: memoryview) -> np.ndarray:
    """Offsets of the closing braces outside strings in `window`, which starts outside a string:
    those with an even number of unescaped quotes before them."""
    chars = np.frombuffer(window, np.uint8)
    quotes = unescaped_quotes(chars)
    braces = np.flatnonzero(chars == ord("}"))
    return braces[np.searchsorted(quotes, braces) % 2 == 0]


_TOKENS = (b'"', b"[", b"]", b"{", b"}", b"\\")  # what a slice without any of them cannot change


def cut_out_arrays(view: memoryview, nonce: str) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """The JSON text `view` with each flat array of `SLICE_BYTES` or more (a `[` whose next token
    outside strings is its `]`) replaced by a placeholder string, and the arrays by placeholder;
    None when there is none. Found without decoding: a scan a slice at a time, so that msgspec's
    pass over the rest (and the arrays' own decoding, `data_of`) is all that holds the GIL long.
    The text is not validated here: decoding the rest does that."""
    spans: list[tuple[int, int]] = []
    last_pos, last_char = -1, 0  # the last token before the slice (outside strings, or a quote)
    in_string = False
    pos, end = 0, len(view)
    while pos < end:
        stop = min(pos + SLICE_BYTES, end)
        while stop < end and view[stop - 1] == ord("\\"):  # a slice never ends inside an escape
            stop += 1
        window = view[pos:stop]
        chunk = bytes(window)
        if not any(token in chunk for token in _TOKENS):
            pos = stop
            continue
        chars = np.frombuffer(window, np.uint8)
        quotes = unescaped_quotes(chars)
        brackets = np.flatnonzero((chars == ord("[")) | (chars == ord("]")) | (chars == ord("{")) | (chars == ord("}")))
        outside = (np.searchsorted(quotes, brackets) % 2 == 0) != in_string
        tokens = np.concatenate([brackets[outside], quotes])
        tokens.sort()
        if tokens.size:
            positions = np.concatenate([[last_pos], tokens + pos])
            chars_at = np.concatenate([[last_char], chars[tokens]])
            flat = (chars_at[:-1] == ord("[")) & (chars_at[1:] == ord("]")) & \
                   (positions[1:] - positions[:-1] > SLICE_BYTES)
            spans += [(int(a), int(b) + 1) for a, b in zip(positions[:-1][flat], positions[1:][flat])]
            last_pos, last_char = int(positions[-1]), int(chars_at[-1])
        in_string ^= bool(quotes.size % 2)
        pos = stop
    if not spans:
        return None
    parts, arrays, at = [], {}, 0
    for k, (start, stop) in enumerate(spans):
        placeholder = f'"@loopserve-slice-{k}-{nonce}"'.encode()
        parts += [bytes(view[at:start]), placeholder]
        arrays[placeholder] = view[start:stop]
        at = stop
    parts.append(bytes(view[at:]))
    return b"".join(parts), arrays
