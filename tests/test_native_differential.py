"""Differential property test of the two infer paths of one server (workers 2): the engine's
native HTTP loop (csrc/http/, its decoder csrc/http/infer_codec.cpp) and the Python front end
(server/protocol.py). The native path must take a request only where the Python path would
take it the same way and answer it as the Python path does (DESIGN.md, "Native infer path");
what it declines goes to a front end. So whatever request hypothesis makes, sent once as
HTTP/1.1 (the native path) and once as HTTP/1.0 (always the front end), both answers must have
the same status, body, content type and Inference-Header-Content-Length.

The requests: JSON `data` flat and nested, numbers of every form (ints, floats, bools, out of
range, NaN as a literal or a string, numbers past float64), Triton's binary tensor extension
(binary_data_size, binary_data_output, outputs with per-output binary_data), raw bodies, `id`,
`parameters`, wrong names, shapes and datatypes, repeated keys, unusual whitespace and string
escapes, and byte-level mutations of valid bodies. Discrepancies found are kept as @example.

Bounded and deterministic: a few hundred examples in all, derandomized, no example database.
"""

from __future__ import annotations

import json
import math
import re
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import RunningServer
from helpers_http import native_and_python

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

# --- the models ------------------------------------------------------------------------
# `echo` returns each of its inputs as an output (so every value the decoders took, and how
# each encoder writes it, shows in the answer); `triple` computes (FP64 results that are not
# the inputs: formatting of arbitrary doubles); `fixed` has no batch dimension.

ECHO_INPUTS = [("f32", "FP32", [3]), ("i64", "INT64", [-1]), ("i32", "INT32", [2, 2]), ("b", "BOOL", [2]),
               ("u8", "UINT8", [4]), ("f64", "FP64", [-1])]
MODELS = {
    "echo": (8, ECHO_INPUTS, [(n + "_out", t, d) for n, t, d in ECHO_INPUTS],
             "def infer(inputs):\n    return {name + '_out': array for name, array in inputs.items()}\n"),
    "triple": (4, [("x", "FP64", [3])], [("y", "FP64", [3]), ("z", "FP32", [3])],
               "import numpy as np\ndef infer(inputs):\n    x = inputs['x']\n    with np.errstate(all='ignore'):\n"
               "        return {'y': x * 3, 'z': (x / 7).astype('float32')}\n"),
    "fixed": (0, [("x", "UINT8", [4])], [("y", "INT32", [4])],
              "def infer(inputs):\n    return {'y': inputs['x'].astype('int32') - 7}\n"),
}
NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
      "UINT8": np.uint8, "INT8": np.int8, "UINT64": np.uint64, "FP16": np.float16, "INT16": np.int16}


def _write_models(root):
    for name, (max_batch, inputs, outputs, code) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        tensors = lambda ts: "".join(f"  - {{name: {n}, datatype: {t}, dims: {d}}}\n" for n, t, d in ts)  # noqa: E731
        (root / name / "config.yaml").write_text(
            f"max_batch_size: {max_batch}\ninputs:\n{tensors(inputs)}outputs:\n{tensors(outputs)}"
            "dynamic_batching: {max_queue_delay_us: 100}\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from loopserve.server.app import LoopserveApp
    from loopserve.serving.repository import ModelRepository

    root = tmp_path_factory.mktemp("differential") / "models"
    _write_models(root)
    repository = ModelRepository(root)
    for name in MODELS:
        repository.load(name)
    running = RunningServer(LoopserveApp(repository), workers=2, native_infer=True)
    yield running
    running.stop()
    repository.close()


# --- JSON text, written by hand ----------------------------------------------------------
# json.dumps cannot repeat a key, write a number past float64 or choose its whitespace.

class Raw(str):
    """JSON text written as it is (1e400, NaN, "\\ud800", 1E2)."""


class Obj(list):
    """A JSON object as (key, value) pairs: keys may repeat, in any order."""


class Style:
    def __init__(self, space: str, ascii_only: bool, escaped_keys: bool = False):
        self.space, self.ascii_only, self.escaped_keys = space, ascii_only, escaped_keys


def _key(key, style: Style) -> str:
    if style.escaped_keys and isinstance(key, str) and not isinstance(key, Raw):
        return '"' + "".join(f"\\u{ord(c):04x}" if c.isalpha() and ord(c) < 0x80 else c for c in key) + '"'
    return dump(key, style)


def dump(value, style: Style) -> str:
    s = style.space
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        value = Obj(value.items())
    if isinstance(value, Obj):
        return "{" + s + ("," + s).join(f"{_key(k, style)}{s}:{s}{dump(v, style)}" for k, v in value) + s + "}"
    if isinstance(value, list):
        return "[" + s + ("," + s).join(dump(v, style) for v in value) + s + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=style.ascii_only)
    if isinstance(value, float):
        return json.dumps(value)  # NaN and Infinity as Python writes them (not JSON)
    return json.dumps(value)


def nest(flat: list, shape: list[int]) -> list:
    """`flat` nested to `shape` (flat where it does not fill the shape)."""
    if len(shape) <= 1 or math.prod(shape) != len(flat):
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


# --- strategies --------------------------------------------------------------------------

# Decimal literals of any length and exponent: how each reader rounds them (or finds them past float64).
# (Within FP32's range for FP32; underflowing for FP64. Past either range: ODD_ELEMENTS.)
DECIMALS32 = st.from_regex(r"-?(0|[1-9][0-9]{0,8})(\.[0-9]{1,24})?([eE](-[0-9]{1,2}|\+?[0-9]))?", fullmatch=True).map(Raw)
DECIMALS64 = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE](-[0-9]{1,3}|\+?[0-9]{1,2}))?",
                           fullmatch=True).map(Raw)


def good_elements(datatype: str):
    return {
        "FP32": st.floats(width=32, allow_nan=False, allow_infinity=False) | st.integers(-2**24, 2**24)
        | st.integers(-2**63, 2**63 - 1) | st.floats(-3e38, 3e38) | DECIMALS32,
        "FP64": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**63, 2**63 - 1) | DECIMALS64,
        "INT64": st.integers(-2**63, 2**63 - 1) | st.integers(-5, 5),
        "INT32": st.integers(-2**31, 2**31 - 1) | st.integers(-5, 5),
        "UINT8": st.integers(0, 255),
        "BOOL": st.booleans(),
    }.get(datatype, st.integers(0, 3))


ODD_ELEMENTS = st.sampled_from([
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), "NaN", "nan", "1", "", None, [], Obj(), True, False, 0, 1, -1,
    255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64 - 1, 2**64, 2**70,
    0.5, 1.5, -0.0, 1e39, 3.4028234663852886e38, 3.4028235677973366e38, 1e-46, 5e-324, 1e308,
    Raw("1e400"), Raw("-1e400"), Raw("1E2"), Raw("1e2"), Raw("1.0"), Raw("-0"), Raw("0.0e0"), Raw("1e-400"),
    Raw("1.00000000000000000001"), Raw("123456789012345678901234567890"), Raw("-123456789012345678901234567890"),
    Raw("0.1e1"), Raw("1.5e300"), Raw("9007199254740993"), Raw("18446744073709551616"),
]) | st.floats()

# JSON's four whitespace characters, mostly; now and then one that is not JSON whitespace.
WHITESPACE = st.sampled_from(["", "", "", "", " ", "\n", "\t", "\r\n  ", " \t\n\r "] * 8 + ["\x0c", "\xa0", "\u2028", "\ufeff"])

IDS = st.one_of(
    st.none(), st.text(max_size=12), st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=8),
    st.from_regex(r"[a-z0-9-]{1,40}", fullmatch=True), st.sampled_from(["req-1", "", "é", "日本", "😀", "\x00", "\x1f\x7f", "a\"b\\c/d", "</script>", "x" * 256, "x" * 257,
                     "é" * 256, "é" * 257, "\u2028\u2029", "\ufeff", Raw('"\\ud800"'), Raw('"\\udc00x"'),
                     Raw('"\\ud83d\\ude00"'), Raw('"\\u00e9\\u0000"'), Raw('"a\\/b"'), Raw('"\\U0041"'), 5, 1.5,
                     True, [], Obj()]))

DEEP = Raw("[" * 1100 + "]" * 1100)  # past msgspec's nesting limit (its RecursionError)

# Each request parameter's values the server takes, then ones it refuses or reads oddly.
PARAMETER_VALUES = {
    "priority": ([0, 1, 7, 2**31 - 1], [-1, 2**31, True, "1", 1.0, None, 2**63]),
    "timeout": ([0, 10**9, -1, 2**63 - 1, -2**63], [2**63, -2**63 - 1, 1.5, True, None, "5"]),
    "routing_key": (["k", "", "é", None], [1, True]),
    "group": (["a", "", 1, -1, 1.5, 1e300, Raw("1E2"), True, None], [Raw("1e400"), [1], Obj([("a", 1)]), 2**64]),
    "binary_data_output": ([True, False, None], [1, 0, "true", "", [], 2.0]),
    "other": ([1, "x", None, Obj([("y", [1, 2])]), 2**70], [Raw("1e400"), [Raw("-1e400")], DEEP]),
}


@st.composite
def parameters(draw):
    keys = draw(st.lists(st.sampled_from(list(PARAMETER_VALUES)), max_size=4, unique=draw(st.integers(0, 5)) > 0))
    pairs = Obj()
    for k in keys:
        good, odd = PARAMETER_VALUES[k]
        pairs.append((k, draw(st.sampled_from(odd if odd and draw(st.integers(0, 5)) == 0 else good))))
    return pairs


@st.composite
def outputs_list(draw, model):
    names = [n for n, _, _ in MODELS[model][2]]
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names + ["nope", "", 1]))
        entry = Obj([("name", name)])
        choice = draw(st.sampled_from(["none", "true", "false", "odd", "null", "repeated", "empty", "extra"]))
        binary = {"true": True, "false": False, "odd": draw(st.sampled_from([1, 0, "yes", None, []]))}.get(choice)
        if choice in ("true", "false", "odd"):
            entry.append(("parameters", Obj([("binary_data", binary)])))
        elif choice == "null":
            entry.append(("parameters", None))
        elif choice == "empty":
            entry.append(("parameters", Obj()))
        elif choice == "repeated":
            entry.append(("parameters", Obj([("binary_data", True), ("binary_data", False)])))
        elif choice == "extra":
            entry.append(("name", draw(st.sampled_from(names))))  # a repeated name
        entries.append(entry)
    return draw(st.sampled_from([entries, None, Obj(), "OUTPUT"])) if draw(st.integers(0, 9)) == 0 else entries


@st.composite
def input_entry(draw, name, datatype, dims, rows, binary_ok):
    """One input: its JSON entry and the bytes it adds to the binary part."""
    odd = draw(st.integers(0, 29)) == 0  # now and then one thing is wrong
    shape = ([rows] if rows is not None else []) + [draw(st.integers(1, 3)) if d < 0 else d for d in dims]
    wire_type = datatype
    if odd:
        what = draw(st.sampled_from(["name", "datatype", "shape", "element", "data", "size", "both", "neither"]))
    else:
        what = None
    if what == "name":
        name = draw(st.sampled_from(["nope", "", name + "\x00", name.upper(), "é"]))
    elif what == "datatype":
        wire_type = draw(st.sampled_from(["FP64", "FP32", "INT32", "INT64", "INT8", "UINT64", "FP16", "BYTES", "BF16",
                                          "fp32", "", "BOOL", "UINT8"]))
    elif what == "shape":
        shape = draw(st.sampled_from([shape[:-1], shape + [1], [0] + shape[1:], [-1] + shape[1:], [],
                                      [shape[0] + 1] + shape[1:], [2**63] + shape[1:]]))
    count = math.prod(max(d, 0) for d in shape)
    count = min(count, 64)
    values = draw(st.lists(good_elements(wire_type), min_size=count, max_size=count))
    use_binary = binary_ok and draw(st.booleans())
    entry = Obj([("name", name), ("shape", shape), ("datatype", wire_type)])
    binary = b""
    if use_binary and wire_type in NP:
        binary = np.asarray(values, dtype=NP[wire_type]).tobytes() if values else b""
        if wire_type == "BOOL" and binary and what == "element":
            binary = b"\x02" + binary[1:]  # a byte numpy's bool does not hold
        size = len(binary)
        if what == "size":
            size = draw(st.sampled_from([size + 1, max(size - 1, 0), -1, "8", 1.0, None, 2**64]))
        entry.append(("parameters", Obj([("binary_data_size", size)])))
        if what == "both":
            entry.append(("data", values))
    else:
        data = list(values)
        if what == "element" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(ODD_ELEMENTS)
        if what == "data":
            data = draw(st.sampled_from([Obj(), "1", None, 1, [[]], [data], data + data[:1]]))
        elif draw(st.booleans()) and len(shape) > 1:
            data = nest(data, shape)
        if what != "neither":
            entry.append(("data", data))
        if what == "both":
            entry.append(("parameters", Obj([("binary_data_size", 0)])))
        elif draw(st.integers(0, 9)) == 0:
            entry.append(("parameters", draw(st.sampled_from([Obj(), None, Obj([("x", 1)]),
                                                                Obj([("binary_data_size", None)])]))))
    if draw(st.integers(0, 19)) == 0:  # a repeated or unknown key in the input
        key = draw(st.sampled_from(["name", "shape", "datatype", "data", "parameters", "extra"]))
        entry.append((key, draw(st.sampled_from([name, shape, wire_type, [1], None, Obj()]))))
    order = draw(st.permutations(range(len(entry))))
    return Obj(entry[i] for i in order), binary


@st.composite
def infer_requests(draw):
    """(path, body, Inference-Header-Content-Length or None) of a structured request."""
    model = draw(st.sampled_from(["echo", "echo", "echo", "triple", "fixed"]))
    max_batch, inputs, _, _ = MODELS[model]
    rows = draw(st.integers(1, 3)) if max_batch else None
    binary_ok = draw(st.booleans())
    specs = list(inputs)
    if draw(st.integers(0, 9)) == 0:
        specs = draw(st.sampled_from([specs[1:], specs + specs[:1], []]))  # one missing, repeated, none
    specs = draw(st.permutations(specs))
    entries, binary = [], b""
    for name, datatype, dims in specs:
        entry, raw = draw(input_entry(name, datatype, dims, rows, binary_ok))
        entries.append(entry)
        binary += raw
    body = Obj([("inputs", entries)])
    if draw(st.booleans()):
        body.append(("id", draw(IDS)))
    if draw(st.booleans()):
        body.append(("parameters", draw(parameters())))
    if draw(st.integers(0, 3)) == 0:
        body.append(("outputs", draw(outputs_list(model))))
    if draw(st.integers(0, 14)) == 0:  # a repeated or unknown top-level key
        body.append(draw(st.sampled_from([("inputs", entries[:1]), ("id", "again"), ("parameters", Obj()),
                                          ("outputs", None), ("extra", [1, {"a": None}]),
                                          ("extra", DEEP), ("extra", Raw("1e400"))])))
    order = draw(st.permutations(range(len(body))))
    style = Style(draw(WHITESPACE), draw(st.booleans()), escaped_keys=draw(st.integers(0, 9)) == 0)
    text = draw(WHITESPACE) + dump(Obj(body[i] for i in order), style) + draw(WHITESPACE)
    json_part = text.encode("utf-8", "surrogatepass")
    header_length = len(json_part) if binary or draw(st.integers(0, 7)) == 0 else None
    if header_length is not None and draw(st.integers(0, 9)) == 0:
        header_length += draw(st.sampled_from([-1, 1, -len(json_part)]))
    if header_length is not None and draw(st.integers(0, 9)) == 0:  # the header written otherwise
        header_length = draw(st.sampled_from([f"0{header_length}", f"+{header_length}", f" {header_length} ",
                                              f"{header_length}\r\nInference-Header-Content-Length: {header_length}",
                                              f"{header_length:_}", "x"]))
    version = draw(st.sampled_from([None] * 6 + ["1", "2", "01"]))
    model_path = model if draw(st.integers(0, 19)) else "nope"
    path = f"/v2/models/{model_path}" + (f"/versions/{version}" if version else "") + "/infer"
    return path, json_part + binary, header_length


def http_request(path: str, body: bytes, header_length: int | str | None) -> bytes:
    extra = f"Inference-Header-Content-Length: {header_length}\r\n" if header_length is not None else ""
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# --- the comparison ----------------------------------------------------------------------

# An id the server made (for feedback: the request had none) is 128 random bits, different in
# each answer: only that is normalised, and only where both answers carry one of that form.
MADE_ID = re.compile(rb'"id":"[0-9a-f]{32}"')


def _json_part(answer) -> bytes:
    length = answer[1].get("inference-header-content-length")
    return answer[2][:int(length)] if length is not None else answer[2]


def assert_same_answer(server, path, body, header_length):
    raw = http_request(path, body, header_length)
    native, python = native_and_python(server.port, raw)
    assert native[0] == python[0], (raw, native, python)
    for name in ("content-type", "inference-header-content-length"):
        assert native[1].get(name) == python[1].get(name), (raw, name, native, python)
    a, b = native[2], python[2]
    if a != b and MADE_ID.search(_json_part(native)) and MADE_ID.search(_json_part(python)):
        a, b = MADE_ID.sub(b'"id":"made"', a, count=1), MADE_ID.sub(b'"id":"made"', b, count=1)
    assert a == b, (raw, native, python)
    SERVED.append(native[0])
    event(f"status {native[0]}")


SERVED: list[int] = []  # the statuses of every comparison, for the last test's tally


# --- the tests ---------------------------------------------------------------------------

TRIPLE = "/v2/models/triple/infer"
X = b'{"name":"x","shape":[1,3],"datatype":"FP64","data":[0.0,0.25,0.5]}'
X_BINARY = np.array([0.0, 0.25, 0.5]).tobytes()


@settings(max_examples=300, **SETTINGS)
@given(request=infer_requests())
# Found: the native encoder wrote 1e16 as 10000000000000000.0 and 1.4285714e-6 as
# 0.0000014285714 (msgspec switches to exponents below 1e-5 and from 1e16, yyjson at 1e-7 and 1e21).
@example(request=(TRIPLE, b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64",'
                          b'"data":[3333333333333333.0,1e-5,1e20]}]}', None))
# Found: an id with a control character echoed as "\u000B" (msgspec writes "\u000b").
@example(request=(TRIPLE, b'{"inputs":[' + X + b'],"id":"\\u000b"}', None))
# Found: a repeated key the native decoder read with yyjson_obj_get (the first; Python takes the last).
@example(request=(TRIPLE, b'{"inputs":[' + X + b'],"outputs":[{"name":"y","parameters":'
                          b'{"binary_data":true,"binary_data":false}}]}', None))
@example(request=(TRIPLE, b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","parameters":'
                          b'{"binary_data_size":24,"binary_data_size":0}}]}' + X_BINARY, 115))
# Found: a number past float64 where msgspec decodes any JSON (parameters): it refuses it, yyjson
# read it as raw text and the native path answered 200.
@example(request=(TRIPLE, b'{"inputs":[' + X + b'],"parameters":{"1e400priority":1e4001}}', None))
# By reading (the same rule as the one above): msgspec refuses JSON nested past ~1000 levels even
# in a field it skips; yyjson reads any depth.
@example(request=(TRIPLE, b'{"inputs":[' + X + b'],"extra":' + b"[" * 1100 + b"]" * 1100 + b"}", None))
def test_structured_requests_answer_alike(server, request):
    assert_same_answer(server, *request)


def _valid_body(rows: int) -> bytes:
    x = np.arange(rows * 3, dtype=np.float64) / 4
    return json.dumps({"id": "m", "inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP64",
                                              "data": x.tolist()}],
                       "parameters": {"priority": 1}}).encode()


TOKENS = [b'"', b",", b"]", b"}", b"[", b"{", b"\\", b"\x00", b"1e400", b" ", b"\xff", b"\xc3", b"-", b"0", b"NaN",
          b"null", b"true", b"\\u", b"\"\": 1,", b"\n", b"1.5", b"-0", b"e", b"."]


@settings(max_examples=150, **SETTINGS)
@given(rows=st.integers(1, 2), edits=st.lists(st.tuples(st.sampled_from(["delete", "insert", "replace", "repeat"]),
                                                         st.integers(0, 10**6), st.integers(1, 6),
                                                         st.sampled_from(TOKENS)), min_size=1, max_size=3),
       binary=st.booleans())
def test_byte_mutations_of_valid_bodies_answer_alike(server, rows, edits, binary):
    body = _valid_body(rows)
    for kind, at, length, token in edits:
        at %= len(body) + 1
        if kind == "delete":
            body = body[:at] + body[at + length:]
        elif kind == "insert":
            body = body[:at] + token + body[at:]
        elif kind == "replace":
            body = body[:at] + token + body[at + len(token):]
        else:
            body = body[:at] + body[at:at + length] + body[at:]
    header_length = None
    if binary:  # the same, with a binary part after the JSON for input x
        body = body.replace(b'"data"', b'"parameters": {"binary_data_size": 24}, "ignored"', 1)
        header_length = len(body)
        body += np.arange(3, dtype=np.float64).tobytes() * rows
    assert_same_answer(server, "/v2/models/triple/infer", body, header_length)


@settings(max_examples=60, **SETTINGS)
@given(model=st.sampled_from(["triple", "fixed", "echo"]),
       size=st.sampled_from([4, 24, 48, 72, 96]) | st.integers(0, 100),  # whole rows, or not
       fill=st.sampled_from([b"\x00", b"\x3f", b"\xff", b"\x01\x02\x03"]))
def test_raw_bodies_answer_alike(server, model, size, fill):
    body = (fill * size)[:size]
    assert_same_answer(server, f"/v2/models/{model}/infer", body, 0)


def test_the_native_path_answered_many_of_them(server):
    """Not a vacuous comparison: the native path answered a good share of the requests itself
    (those it declines are answered by a front end on both sides)."""
    served = server.native_http.stats()["served"]
    assert len(SERVED) >= 400
    assert served >= len(SERVED) // 10, (served, len(SERVED))
    assert SERVED.count(200) >= 40, SERVED
