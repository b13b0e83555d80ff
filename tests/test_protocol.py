"""The Open Inference Protocol codec: round trips, errors, and the real tritonclient's wire format."""

import json
import subprocess
import sys

import ml_dtypes
import msgspec
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from loopserve.server.protocol import (
    NUMPY_DTYPES,
    InferRequest,
    ProtocolError,
    RequestOutput,
    datatype_of,
    decode_raw,
    decode_request,
    encode_response,
)

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]
JSON_DATATYPES = [d for d in DATATYPES if d != "BF16"]  # tritonclient sends BF16 only as binary
TEXTS = ["", "héllo", "日本語", "a", "x" * 100, "\x00z"]


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    """Six values of the datatype, extremes included, shaped."""
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        values = [True, False, False, True, True, False]
    elif datatype == "BYTES":
        values = [t.encode() for t in TEXTS]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
    else:
        big = float(ml_dtypes.finfo(dtype).max)
        values = [-1.5, 0.0, 3.25, 1e-3, big, -big]
    array = np.empty(6, dtype=dtype)
    array[:] = values
    return array.reshape(shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()


def json_body(**request) -> bytes:
    return json.dumps(request).encode()


def one_input(data, datatype="FP32", shape=None, name="x", **extra) -> bytes:
    shape = [len(data)] if shape is None else shape
    return json_body(inputs=[{"name": name, "shape": shape, "datatype": datatype, "data": data, **extra}])


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], **request) -> tuple[bytes, int]:
    header = json_body(inputs=[{"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": len(raw)}}
                               for n, d, s, raw in inputs], **request)
    return header + b"".join(raw for *_, raw in inputs), len(header)


def client_body(arrays: dict[str, tuple[np.ndarray, bool]], outputs=None, request_id="", parameters=None):
    """A request body exactly as tritonclient.http builds it: (body, json_size)."""
    inputs = []
    for name, (array, binary) in arrays.items():
        inp = httpclient.InferInput(name, list(array.shape), datatype_of(array))
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    return _get_inference_request(inputs=inputs, request_id=request_id, outputs=outputs, sequence_id=0,
                                  sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                  custom_parameters=parameters)


def client_result(body: bytes, json_length: int | None) -> httpclient.InferResult:
    return httpclient.InferResult.from_response_body(body, verbose=False, header_length=json_length)


def error_of(body, header_length=None) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_request(body, header_length)
    return str(info.value)


# --- datatypes ---------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", DATATYPES)
def test_datatype_of_names_every_datatype(datatype):
    assert datatype_of(sample(datatype)) == datatype


def test_datatype_of_bytes_kinds_and_byte_order():
    assert datatype_of(np.array([b"ab", b"c"])) == "BYTES"
    assert datatype_of(np.array(["ab", "c"])) == "BYTES"
    assert datatype_of(np.zeros(2, dtype=">f4")) == "FP32"
    with pytest.raises(TypeError, match="complex128"):
        datatype_of(np.zeros(2, dtype=np.complex128))


def test_bf16_without_ml_dtypes_is_refused_by_name():
    code = ("import sys; sys.modules['ml_dtypes'] = None  # as if not installed\n"
            "from loopserve.server.protocol import decode_request, ProtocolError, NUMPY_DTYPES\n"
            "assert 'BF16' not in NUMPY_DTYPES\n"
            "try:\n"
            f"    decode_request({one_input([1], 'BF16')!r}, None)\n"
            "except ProtocolError as e:\n"
            "    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "REFUSED input 'x' is BF16: BF16 needs the ml_dtypes package" in out


# --- requests: JSON and binary round trips --------------------------------------------------

@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("nested", [False, True])
def test_json_request_round_trip(datatype, nested):
    want = sample(datatype)
    flat = want.ravel().tolist()
    if datatype == "BYTES":
        flat = [b.decode() for b in flat]
    elif datatype == "BF16":
        flat = want.astype(np.float32).ravel().tolist()
    data = [flat[:3], flat[3:]] if nested else flat
    request, arrays = decode_request(one_input(data, datatype, [2, 3]), None)
    assert request.inputs[0].name == "x"
    assert_same(arrays["x"], want)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_request_round_trip(datatype):
    want = sample(datatype)
    raw = (b"".join(len(b).to_bytes(4, "little") + b for b in want.ravel()) if datatype == "BYTES"
           else want.tobytes())
    body, header_length = binary_body([("x", datatype, [2, 3], raw)])
    _, arrays = decode_request(body, header_length)
    assert_same(arrays["x"], want)


def test_binary_numeric_inputs_are_zero_copy_views():
    x = np.arange(32, dtype=np.float32)
    body, header_length = binary_body([("x", "FP32", [1, 32], x.tobytes())])
    _, arrays = decode_request(body, header_length)
    assert np.shares_memory(arrays["x"], np.frombuffer(body, dtype=np.uint8))
    assert not arrays["x"].flags.writeable


def test_mixed_json_and_binary_inputs_take_binary_parts_in_json_order():
    a, b, c = np.arange(4, dtype=np.int32), np.ones(2, dtype=np.float64), np.arange(3, dtype=np.uint8)
    header = json_body(inputs=[
        {"name": "b", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}},
        {"name": "j", "shape": [2], "datatype": "INT8", "data": [-1, 1]},
        {"name": "a", "shape": [2, 2], "datatype": "INT32", "parameters": {"binary_data_size": 16}},
        {"name": "c", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}},
    ])
    _, arrays = decode_request(header + b.tobytes() + a.tobytes() + c.tobytes(), len(header))
    assert list(arrays) == ["b", "j", "a", "c"]
    assert_same(arrays["a"], a.reshape(2, 2))
    assert_same(arrays["b"], b)
    assert_same(arrays["c"], c)
    assert_same(arrays["j"], np.array([-1, 1], dtype=np.int8))


def test_json_bytes_become_utf8_bytes_and_keep_empty_strings():
    _, arrays = decode_request(one_input(["", "日本", "é"], "BYTES"), None)
    assert arrays["x"].dtype == object
    assert arrays["x"].tolist() == [b"", "日本".encode(), "é".encode()]


def test_empty_tensors_and_scalars():
    _, arrays = decode_request(one_input([], "INT32", [0, 3]), None)
    assert_same(arrays["x"], np.empty((0, 3), dtype=np.int32))
    _, arrays = decode_request(one_input([7], "INT64", []), None)
    assert_same(arrays["x"], np.array(7, dtype=np.int64))
    body, header_length = binary_body([("x", "FP32", [0], b"")])
    assert_same(decode_request(body, header_length)[1]["x"], np.empty(0, dtype=np.float32))


def test_ints_are_accepted_as_float_data():
    _, arrays = decode_request(one_input([1, 2.5], "FP32"), None)
    assert_same(arrays["x"], np.array([1, 2.5], dtype=np.float32))


def test_unknown_fields_are_tolerated():
    body = json_body(id="r1", extra={"a": 1}, parameters={"binary_data_output": True, "custom": "v"},
                     inputs=[{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0], "whatever": 3}],
                     outputs=[{"name": "y", "parameters": {"binary_data": False}, "also": []}])
    request, arrays = decode_request(body, None)
    assert request.id == "r1"
    assert request.parameters == {"binary_data_output": True, "custom": "v"}
    assert request.outputs == [RequestOutput("y", {"binary_data": False})]
    assert_same(arrays["x"], np.array([1.0], dtype=np.float32))


def test_memoryview_body():
    body = one_input([1.0, 2.0])
    _, arrays = decode_request(memoryview(body), None)
    assert_same(arrays["x"], np.array([1, 2], dtype=np.float32))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_decode_raw(datatype):
    want = sample(datatype)
    raw = (b"".join(len(b).to_bytes(4, "little") + b for b in want.ravel()) if datatype == "BYTES"
           else want.tobytes())
    assert_same(decode_raw(raw, "x", datatype, [2, 3]), want)


# --- request errors ----------------------------------------------------------------------

@pytest.mark.parametrize("data, datatype, shape, message", [
    ([1, 2, 3, 4, 5], "FP32", [2, 3], "input 'x': shape [2, 3] needs 6 elements, data has 5"),
    ([[1, 2], [3, 4]], "FP32", [2, 3], "input 'x': shape [2, 3] needs 6 elements, data has 4"),
    (["a", "b"], "BYTES", [3], "input 'x': shape [3] needs 3 elements, data has 2"),
    ([1.0, "2.0"], "FP32", [2], "input 'x': FP32 data must be numbers, found strings"),
    ([300], "UINT8", [1], "input 'x': value 300 does not fit UINT8 (0 to 255)"),
    ([-1], "UINT64", [1], "input 'x': value -1 does not fit UINT64 (0 to 18446744073709551615)"),
    ([2**63], "INT64", [1], "input 'x': value 9223372036854775808 does not fit INT64"),
    ([1.5], "INT32", [1], "input 'x': INT32 data must be integers, found non-integer numbers"),
    ([1, 0], "BOOL", [2], "input 'x': BOOL data must be true or false, found integers"),
    ([True], "FP32", [1], "input 'x': FP32 data must be numbers, found booleans"),
    ([None], "FP64", [1], "input 'x': FP64 data must be numbers, found null"),
    ([70000.0], "FP16", [1], "input 'x': a value is too large for FP16 (largest 65504)"),
    ([70000], "FP16", [1], "input 'x': a value is too large for FP16"),
    ([1.0, -1e39], "FP32", [2], "input 'x': a value is too large for FP32"),
    ([1e300], "BF16", [1], "input 'x': a value is too large for BF16"),
    ([-2**63, 0], "FP16", [2], "input 'x': a value is too large for FP16"),
    ([2**64, 1], "UINT64", [2], "input 'x': value 18446744073709551616 does not fit UINT64"),
    ([2**63, 1.5], "UINT64", [2], "input 'x': UINT64 data must be integers, found non-integer numbers"),
    ([[1, 2], ["a", 3]], "INT8", [4], "input 'x': INT8 data must be integers, found strings"),
    ([[1, 2], [3]], "INT32", [3], "input 'x': data is not a regular array of INT32 values"),
    (["a", 1], "BYTES", [2], "input 'x': BYTES data must be strings, found int"),
    ({"a": 1}, "FP32", [1], "input 'x': data must be a JSON array, got dict"),
    ([1], "FP32", [-1], "input 'x': shape [-1] has a negative dimension"),
    ([1], "FLOAT32", [1], "datatype 'FLOAT32' of input 'x' is not one of BOOL, UINT8, UINT16"),
])
def test_json_data_errors(data, datatype, shape, message):
    assert message in error_of(one_input(data, datatype, shape))


def test_unknown_datatype_lists_all_known():
    message = error_of(one_input([1], "FLOAT32", [1]))
    for datatype in NUMPY_DTYPES:
        assert datatype in message


def test_request_structure_errors():
    assert "invalid request body" in error_of(b'{"inputs": [')
    assert "malformed" in error_of(b"not json")
    assert "invalid inference request" in error_of(b"{}") and "inputs" in error_of(b"{}")
    message = error_of(json_body(inputs=[{"name": "x", "shape": "2", "datatype": "FP32", "data": [1]}]))
    assert "invalid inference request" in message and "$.inputs[0].shape" in message
    message = error_of(json_body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32"}]))
    assert message == "input 'x' has neither data nor parameters.binary_data_size"
    message = error_of(json_body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2))
    assert message == "input 'x' appears more than once"
    message = error_of(json_body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32",
                                          "parameters": {"shared_memory_region": "r"}}]))
    assert "shared memory" in message


def test_binary_errors():
    x = np.arange(6, dtype=np.float32).tobytes()
    body, n = binary_body([("x", "FP32", [2, 2], x)])
    assert error_of(body, n) == "input 'x': FP32 shape [2, 2] needs 16 bytes, binary data has 24"
    body, n = binary_body([("x", "FP32", [6], x)])
    assert "truncated" in error_of(body[:-1], n) and "input 'x' claims 24 bytes" in error_of(body[:-1], n)
    assert "4 bytes are left over" in error_of(body + b"\0" * 4, n)
    assert "outside the body" in error_of(body, len(body) + 1)
    assert "outside the body" in error_of(body, -1)
    header = json_body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                                "parameters": {"binary_data_size": 4}}])
    assert "has both data and parameters.binary_data_size" in error_of(header + x[:4], len(header))
    header = json_body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32",
                                "parameters": {"binary_data_size": "4"}}])
    assert "binary_data_size must be an integer >= 0" in error_of(header + x[:4], len(header))
    # binary data claimed, but no Inference-Header-Content-Length: no binary part at all
    assert "truncated" in error_of(header.replace(b'"4"', b"4"), None)


def test_binary_bytes_errors():
    good = b"\x02\x00\x00\x00ab"
    body, n = binary_body([("s", "BYTES", [2], good)])
    assert error_of(body, n) == "input 's': shape needs 2 elements, BYTES data has 1"
    body, n = binary_body([("s", "BYTES", [2], good + b"\x05\x00\x00\x00abc")])
    assert "BYTES element 1 claims 5 bytes, only 3 are left (truncated)" in error_of(body, n)
    body, n = binary_body([("s", "BYTES", [2], good + b"\x05\x00")])
    assert "truncated inside the length of element 1" in error_of(body, n)


def test_decode_raw_errors():
    with pytest.raises(ProtocolError, match=r"input 'x': FP32 shape \[2, 3\] needs 24 bytes, binary data has 20"):
        decode_raw(b"\0" * 20, "x", "FP32", [2, 3])
    with pytest.raises(ProtocolError, match="not one of"):
        decode_raw(b"", "x", "F32", [0])


# --- responses ---------------------------------------------------------------------------

def encode(outputs, requested=None, binary_default=False, **kw):
    return encode_response("m", "1", "r1", outputs, requested, binary_default, **kw)


def header_of(body: bytes, json_length: int | None) -> dict:
    return json.loads(body if json_length is None else body[:json_length])


def test_json_response_shape_and_omitted_fields():
    body, json_length = encode_response("m", None, None, {"y": np.array([[1.5, 2]], dtype=np.float32)}, None, False)
    assert json_length is None
    assert json.loads(body) == {"model_name": "m",
                                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}]}
    body, _ = encode({"b": np.array([True, False]), "s": np.array(["é", ""], dtype=object)},
                     parameters={"sequence_id": 3})
    got = json.loads(body)
    assert got["model_version"] == "1" and got["id"] == "r1" and got["parameters"] == {"sequence_id": 3}
    assert got["outputs"][0]["data"] == [True, False]
    assert got["outputs"][1]["data"] == ["é", ""]


def test_binary_response_layout():
    y, z = np.arange(3, dtype=np.int16), np.arange(2, dtype=np.float64)
    body, json_length = encode({"y": y, "z": z}, binary_default=True)
    header = header_of(body, json_length)
    assert [o["parameters"] for o in header["outputs"]] == [{"binary_data_size": 6}, {"binary_data_size": 16}]
    assert all("data" not in o for o in header["outputs"])
    assert body[json_length:] == y.tobytes() + z.tobytes()


def test_binary_response_is_little_endian_and_contiguous():
    y = np.arange(6, dtype=">i4").reshape(2, 3).T
    body, json_length = encode({"y": y}, binary_default=True)
    assert body[json_length:] == np.ascontiguousarray(y, dtype="<i4").tobytes()
    assert header_of(body, json_length)["outputs"][0]["shape"] == [3, 2]


def test_output_selection_and_order():
    outputs = {"a": np.zeros(1, np.float32), "b": np.ones(2, np.int8), "c": np.array([b"x"], dtype=object)}
    body, _ = encode(outputs)
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["a", "b", "c"]
    body, _ = encode(outputs, [RequestOutput("c"), RequestOutput("a")])
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["c", "a"]
    with pytest.raises(ProtocolError, match=r"model has no output 'z' \(its outputs: a, b, c\)"):
        encode(outputs, [RequestOutput("z")])
    with pytest.raises(ProtocolError, match="output 'a': parameters.binary_data must be true or false"):
        encode(outputs, [RequestOutput("a", {"binary_data": 1})])


@pytest.mark.parametrize("binary_default", [False, True])
def test_per_output_binary_overrides_the_default(binary_default):
    outputs = {"a": np.arange(2, dtype=np.float32), "b": np.arange(3, dtype=np.int32), "c": np.ones(1, np.uint8)}
    requested = [RequestOutput("a", {"binary_data": True}), RequestOutput("b", {"binary_data": False}),
                 RequestOutput("c", {"other": 1})]
    body, json_length = encode(outputs, requested, binary_default)
    header = header_of(body, json_length)
    binary = {o["name"]: "parameters" in o for o in header["outputs"]}
    assert binary == {"a": True, "b": False, "c": binary_default}
    result = client_result(body, json_length)
    for name, array in outputs.items():
        assert_same(result.as_numpy(name), array)


def test_nonfinite_floats_are_null_in_json_and_exact_in_binary():
    y = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    body, json_length = encode({"y": y})
    assert json.loads(body)["outputs"][0]["data"] == [None, None, 1.0]
    body, json_length = encode({"y": y}, binary_default=True)
    np.testing.assert_array_equal(client_result(body, json_length).as_numpy("y"), y)


def test_invalid_utf8_bytes_are_replaced_in_json_and_exact_in_binary():
    y = np.array([b"\xff\xfeok"], dtype=object)
    body, _ = encode({"y": y})
    assert json.loads(body)["outputs"][0]["data"] == ["\ufffd\ufffdok"]
    body, json_length = encode({"y": y}, binary_default=True)
    assert client_result(body, json_length).as_numpy("y").tolist() == [b"\xff\xfeok"]


# --- cross-checks against the real tritonclient ----------------------------------------------

@pytest.mark.parametrize("datatype, binary", [(d, False) for d in JSON_DATATYPES] + [(d, True) for d in DATATYPES])
def test_tritonclient_request_decodes(datatype, binary):
    want = sample(datatype)
    body, json_size = client_body({"x": (want, binary)}, request_id="req-7")
    assert (json_size is None) == (not binary)
    request, arrays = decode_request(body, json_size)
    assert request.id == "req-7"
    assert request.parameters == {"binary_data_output": True}
    assert_same(arrays["x"], want)


def test_tritonclient_request_with_many_inputs_and_requested_outputs():
    arrays = {"f": (sample("FP32"), True), "s": (sample("BYTES"), False), "b": (sample("BOOL"), True),
              "i": (sample("INT64", (3, 2)), False), "u": (sample("UINT8", (6,)), True)}
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False), httpclient.InferRequestedOutput("z")]
    body, json_size = client_body(arrays, outputs=outputs, parameters={"tenant": "t1"})
    request, decoded = decode_request(body, json_size)
    assert list(decoded) == list(arrays)
    for name, (want, _) in arrays.items():
        assert_same(decoded[name], want)
    assert request.outputs == [RequestOutput("y", {"binary_data": False}), RequestOutput("z", {"binary_data": True})]
    assert request.parameters == {"tenant": "t1"}


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_parses_response(datatype, binary):
    want = sample(datatype)
    body, json_length = encode({"y": want}, binary_default=binary)
    assert (json_length is None) == (not binary)
    result = client_result(body, json_length)
    got = result.as_numpy("y")
    if datatype == "BYTES" and not binary:  # JSON strings come back as str
        want = np.array([b.decode() for b in want.ravel()], dtype=object).reshape(want.shape)
    assert_same(got, want)
    assert result.get_response()["model_name"] == "m"
    assert result.get_response()["id"] == "r1"


def test_tritonclient_round_trip_through_decode_and_encode():
    """The whole exchange: the client's request decoded, the outputs encoded as it asked, parsed back."""
    x = sample("FP32")
    outputs = [httpclient.InferRequestedOutput("negated", binary_data=False),
               httpclient.InferRequestedOutput("labels", binary_data=True)]
    body, json_size = client_body({"x": (x, True)}, outputs=outputs, request_id="42")
    request, arrays = decode_request(body, json_size)
    results = {"labels": np.array([["pos"] * 3, ["neg"] * 3], dtype=object), "negated": -arrays["x"],
               "unasked": np.zeros(1)}
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    body, json_length = encode_response("m", "3", request.id, results, request.outputs, binary_default)
    result = client_result(body, json_length)
    assert_same(result.as_numpy("negated"), -x)
    assert result.as_numpy("labels").tolist() == [[b"pos"] * 3, [b"neg"] * 3]
    assert result.as_numpy("unasked") is None
    assert result.get_response()["id"] == "42"


def test_msgspec_structs_round_trip():
    request = InferRequest(inputs=[], id="a", outputs=[RequestOutput("y")])
    assert msgspec.json.decode(msgspec.json.encode(request), type=InferRequest) == request
