"""Fuzzing the request decoders (issue 12): whatever bytes a client sends, decode_request and
decode_raw return tensors or raise ProtocolError (a 400 with a message), never anything else.
Bounded: a few hundred examples each, no deadline (the machine is shared)."""

import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopserve.server.protocol import NUMPY_DTYPES, ProtocolError, decode_raw, decode_request

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DATATYPES = sorted(NUMPY_DTYPES) + ["FP8", ""]
dims = st.one_of(st.integers(0, 4), st.integers(-2, 2**64 - 1))
shapes = st.lists(dims, max_size=5) | st.lists(st.integers(0, 2), min_size=30, max_size=70)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=4), max_leaves=20)


def decodes_or_refuses(body: bytes, header_length):
    try:
        request, arrays = decode_request(body, header_length)
    except ProtocolError as e:
        assert str(e)
        return
    for name, array in arrays.items():
        assert array.shape == tuple(next(i.shape for i in request.inputs if i.name == name))


@SETTINGS
@given(body=st.binary(max_size=512), header_length=st.none() | st.integers(-4, 600))
def test_arbitrary_bytes(body, header_length):
    decodes_or_refuses(body, header_length)


def bytes_elements(items):
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


@st.composite
def binary_requests(draw):
    """A well-formed JSON header with binary inputs whose sizes, shapes and data may disagree."""
    inputs, binary = [], b""
    for i in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(DATATYPES))
        if datatype == "BYTES" and draw(st.booleans()):
            raw = bytes_elements(draw(st.lists(st.binary(max_size=8), max_size=6)))
            raw = raw[:draw(st.integers(0, len(raw)))]  # perhaps truncated
        else:
            raw = draw(st.binary(max_size=64))
        size = draw(st.sampled_from([len(raw), len(raw) + 1, max(len(raw) - 1, 0), 2**63]))
        parameters = draw(st.sampled_from([{"binary_data_size": size}, {}, {"binary_data_size": "8"}]))
        entry = {"name": draw(st.sampled_from(["x", "y", f"in{i}"])), "shape": draw(shapes), "datatype": datatype,
                 "parameters": parameters}
        if not parameters or draw(st.booleans()) and draw(st.booleans()):
            entry["data"] = draw(json_values)
        inputs.append(entry)
        binary += raw
    header = msgspec.json.encode({"inputs": inputs, "parameters": draw(st.dictionaries(st.text(max_size=3),
                                                                                         json_values, max_size=2))})
    return header + binary, len(header)


@SETTINGS
@given(binary_requests())
def test_binary_and_bytes_requests(request):
    body, header_length = request
    decodes_or_refuses(body, header_length)


@SETTINGS
@given(body=st.binary(max_size=256), datatype=st.sampled_from(DATATYPES), shape=shapes)
def test_raw_bodies(body, datatype, shape):
    try:
        array = decode_raw(body, "x", datatype, shape)
    except ProtocolError as e:
        assert str(e)
        return
    assert array.shape == tuple(shape)


@pytest.fixture
def monkeypatch_slices(monkeypatch):
    """Slices of a few bytes, so that small examples take the sliced path's every branch."""
    from loopserve.server import json_slices

    monkeypatch.setattr(json_slices, "SLICE_BYTES", 4)


def outcome(decode, body):
    try:
        _, arrays = decode(body, None)
    except ProtocolError as e:
        return str(e)
    return {name: (a.dtype, a.shape, a.tobytes()) for name, a in arrays.items()}


numbers = st.one_of(st.integers(-2**65, 2**65), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
data_lists = st.lists(numbers, max_size=40) | st.lists(st.integers(-300, 300), max_size=40) | st.lists(
    st.floats(-1e5, 1e5), max_size=40) | st.lists(st.recursive(numbers, lambda inner: st.lists(inner, max_size=3),
                                                             max_leaves=12), max_size=4)


@SETTINGS
@given(data=data_lists, datatype=st.sampled_from(["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT64", "BOOL",
                                                  "BYTES"]),
       shape_delta=st.sampled_from([0, 0, 1, -1]), spaces=st.booleans())
def test_large_body_path_decodes_as_the_small_one(data, datatype, shape_delta, spaces, monkeypatch_slices):
    """Off the event loop a large body's JSON data is decoded in slices (server/json_slices.py):
    the tensors, or the refusal and its message, are those of the whole decode."""
    from loopserve.server.protocol import decode_request_in_slices

    count = len(data) + shape_delta
    request = {"inputs": [{"name": "x", "shape": [max(count, 0)], "datatype": datatype, "data": data}]}
    body = msgspec.json.encode(request)
    if spaces:
        body = body.replace(b",", b" , ").replace(b"[", b"[ ")
    assert outcome(decode_request_in_slices, body) == outcome(decode_request, body)


label_ids = st.text(alphabet=st.sampled_from('ab"}{,\\[] é'), max_size=12)
labels = st.one_of(st.integers(-3, 3), st.floats(allow_nan=False), st.text(alphabet='0}"\\', max_size=3),
                   st.lists(st.integers(0, 1), max_size=4))


@SETTINGS
@given(items=st.lists(st.fixed_dictionaries({"id": label_ids, "label": labels}), max_size=30),
       indent=st.sampled_from([None, 0, 2]), cut=st.integers(0, 10**6), splice=st.binary(max_size=6))
def test_feedback_decoded_in_slices_gives_the_whole_decoders_answer(monkeypatch, items, indent, cut, splice):
    """A large feedback body is decoded a slice at a time, cut at closing braces outside strings
    (ids full of quotes, braces and backslashes here): the same labels as one decode, and where
    the body is broken (bytes spliced in), a 400 either way. Slices of 24 bytes, so that these
    small bodies are cut many times."""
    from loopserve.server import json_slices
    from loopserve.server.feedback_routes import decode_feedback, decode_feedback_in_slices

    monkeypatch.setattr(json_slices, "SLICE_BYTES", 24)
    body = msgspec.json.encode({"labels": items})
    if indent is not None:
        body = msgspec.json.format(body, indent=indent)
    for candidate in (body, body[:cut % (len(body) + 1)] + splice + body[cut % (len(body) + 1):]):
        try:
            whole = decode_feedback(candidate)
        except ProtocolError:
            whole = None
        try:
            sliced = decode_feedback_in_slices(candidate)
        except ProtocolError as e:
            assert str(e)
            sliced = None
        assert sliced == whole, (candidate, whole, sliced)
