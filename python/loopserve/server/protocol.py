"""The Open Inference Protocol (KServe v2) as Triton speaks it: message schema and tensor codec.

A request body is JSON, ``{"id", "parameters", "inputs": [...], "outputs": [...]}``, where each
input is ``{"name", "shape", "datatype", "parameters", "data"}`` and ``data`` holds the tensor's
elements in row-major order, flat or nested (BOOL as true/false, BYTES as strings).

Triton's binary tensor data extension: the HTTP header ``Inference-Header-Content-Length: N``
says the first N bytes of the body are the JSON and the rest is raw tensor data. An input
whose ``parameters.binary_data_size`` is set has no ``data``; its bytes follow the JSON, in the
order the JSON lists such inputs. Numbers are little-endian; a BYTES tensor is each element
as a 4-byte little-endian length followed by its bytes. Responses work the same way: an
output goes binary when its requested ``parameters.binary_data`` is true or, when it does not
say, when the request's ``parameters.binary_data_output`` is. With
``Inference-Header-Content-Length: 0`` the body is one raw tensor and nothing else
(``decode_raw``). BF16 (with ml_dtypes) is accepted as JSON numbers too, though Triton's
client sends it only as binary.

Everything here is a pure function of bytes and arrays; HTTP lives in ``infer.py``.
"""

from __future__ import annotations

import math
import secrets
import struct
from typing import Annotated, Any

import msgspec
import numpy as np

from loopserve.backends.base import NUMPY_DTYPES as _MODEL_DTYPES
from loopserve.errors import LoopserveError
from loopserve.server import json_slices

try:
    import ml_dtypes
except ImportError:  # BF16 is optional; without it a BF16 tensor is refused by name
    ml_dtypes = None

__all__ = ["RequestInput", "RequestOutput", "InferRequest", "ResponseOutput", "InferResponse", "ProtocolError",
           "NUMPY_DTYPES", "datatype_of", "decode_request", "decode_request_in_slices", "decode_raw", "encode_response"]


# --- messages ---------------------------------------------------------------------------
# Requests tolerate unknown fields (msgspec's default): clients send extras.

class RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


# A request id is kept with its prediction until a label comes (feedback): bounded, so that ids
# cannot be a way to fill the server's memory.
MAX_REQUEST_ID_LENGTH = 256
# So is parameters.group: at most this many bytes as JSON text (csrc/http/infer_codec.cpp's too).
MAX_GROUP_BYTES = 256
# A routing key is hashed, not kept; bounded so that it reads the same in every path (the rings
# to the engine carry 65,535 bytes at most), in UTF-8 bytes (infer_codec.cpp's too).
MAX_ROUTING_KEY_BYTES = 1024
# numpy's own limit is 64 dimensions; no model input has more than a few.
MAX_DIMS = 32
# A shape whose nonzero dimensions multiply past this is no array any machine can address: numpy
# refuses even an empty one whose nonzero dimensions times its item size (8 at most here) pass
# 2**63 ([0, 4, 1486731, 193868545253] of INT64, found by test_fuzz_decoders).
_MAX_ELEMENTS = 2**59


TOO_DEEP = "invalid request body: JSON nested too deeply (msgspec's limit is about 1000 levels)"


class InferRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_LENGTH)] | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list | None = None


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    outputs: list[ResponseOutput]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


class ProtocolError(LoopserveError):
    """A malformed request: the message says what was wrong and what was expected (a 400)."""

    status = 400


class _RawDataRequest(msgspec.Struct):
    """InferRequest with each input's data left as raw JSON (decoded in slices off the loop)."""
    inputs: list[json_slices.RawInput]
    id: Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_LENGTH)] | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


# Bodies this large are decoded on a worker thread (wire.decode_and_submit).
OFF_LOOP_BYTES = 1 << 20

_request_decoder = msgspec.json.Decoder(InferRequest)
_raw_request_decoder = msgspec.json.Decoder(_RawDataRequest)
_encoder = msgspec.json.Encoder()
_u32 = struct.Struct("<I")


# --- datatypes --------------------------------------------------------------------------

# The model-side mapping, made explicitly little-endian: the wire is, whatever the host.
NUMPY_DTYPES: dict[str, np.dtype] = {name: d if d.kind == "O" else d.newbyteorder("<")
                                     for name, d in _MODEL_DTYPES.items()}
if ml_dtypes is not None:
    NUMPY_DTYPES["BF16"] = np.dtype(ml_dtypes.bfloat16)

_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an array's dtype; object, bytes_ and str_ arrays are BYTES.

    A dtype the protocol has no name for (complex, datetime) raises TypeError: that is the
    model's fault, not the client's.
    """
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    name = _NAMES.get(dtype)
    if name is None:
        raise TypeError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def _dtype(datatype: str, name: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        if datatype == "BF16":
            raise ProtocolError(f"input '{name}' is BF16: BF16 needs the ml_dtypes package")
        raise ProtocolError(f"datatype '{datatype}' of input '{name}' is not one of {', '.join(NUMPY_DTYPES)}")
    return dtype


def _count(shape: list[int], name: str) -> int:
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    if shape and min(shape) < 0:
        raise ProtocolError(f"input '{name}': shape {shape} has a negative dimension")
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:  # [2**63, 0] is empty, yet not a shape numpy takes
        raise ProtocolError(f"input '{name}': shape {shape} is too large (its nonzero dimensions multiply "
                            f"past {_MAX_ELEMENTS})")
    return math.prod(shape)


# --- requests ---------------------------------------------------------------------------

def decode_request(body: bytes | memoryview, header_length: int | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request and its input tensors, by name.

    ``header_length`` is the Inference-Header-Content-Length (None when absent). Tensors taken
    from binary data are zero-copy views of ``body``: read-only when it is bytes, and not
    necessarily aligned (they start wherever the JSON ends).
    """
    view, header_length = _split(body, header_length)
    request = _decode_json(_request_decoder, view[:header_length] if header_length < len(view) else body)
    return request, _tensors(request, view[header_length:])


def decode_request_in_slices(body: bytes | memoryview,
                             header_length: int | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """decode_request for a worker thread (wire.decode_and_submit sends bodies of OFF_LOOP_BYTES
    or more there): the same answer, with each input's JSON data decoded in slices
    (server/json_slices.py), so the GIL comes back to the event loop between them."""
    view, header_length = _split(body, header_length)
    request = _request_with_arrays_cut_out(view[:header_length])
    if request is None:  # no large flat array, or something only the whole decode answers right
        raw = _decode_json(_raw_request_decoder, view[:header_length])
        inputs = [RequestInput(i.name, i.shape, i.datatype, i.parameters, json_slices.data_of(i.data, i.datatype))
                  for i in raw.inputs]
        request = InferRequest(inputs, raw.id, raw.parameters, raw.outputs)
    return request, _tensors(request, view[header_length:])


def _request_with_arrays_cut_out(json_part: memoryview) -> InferRequest | None:
    """The request with its large flat `data` arrays cut out before msgspec's pass over the rest
    (json_slices.cut_out_arrays), then decoded in slices: no single call holds the GIL for the
    whole body. None where the request has no such array, or where the rest or an array does not
    decode as the whole body would (a placeholder anywhere but in an input's data, a malformed
    array): the whole decode then gives the answer and its message, as for a small body."""
    cut = json_slices.cut_out_arrays(json_part, secrets.token_hex(8))
    if cut is None:
        return None
    skeleton, arrays = cut
    try:
        raw = _raw_request_decoder.decode(skeleton)
        inputs = []
        for i in raw.inputs:
            span = arrays.pop(bytes(i.data), None)
            data = json_slices.data_of(span if span is not None else i.data, i.datatype)
            inputs.append(RequestInput(i.name, i.shape, i.datatype, i.parameters, data))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if arrays:  # a large array elsewhere (parameters, outputs): not one the sliced path knows
        return None
    return InferRequest(inputs, raw.id, raw.parameters, raw.outputs)


def _split(body: bytes | memoryview, header_length: int | None) -> tuple[memoryview, int]:
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 <= header_length <= len(view):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} is outside the body of {len(view)} bytes")
    return view, header_length


def _decode_json(decoder: msgspec.json.Decoder, json_part):
    try:
        return decoder.decode(json_part)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"invalid inference request: {e}") from None
    except msgspec.DecodeError as e:
        raise ProtocolError(f"invalid request body: {e}") from None
    except RecursionError:
        raise ProtocolError(TOO_DEEP) from None


def _tensors(request: InferRequest, binary: memoryview) -> dict[str, np.ndarray]:
    offset = 0
    arrays: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        name = inp.name
        if name in arrays:
            raise ProtocolError(f"input '{name}' appears more than once")
        dtype = _dtype(inp.datatype, name)
        count = _count(inp.shape, name)
        size = _binary_size(inp)
        if size is None:
            arrays[name] = _from_json(inp, dtype, count)
            continue
        if offset + size > len(binary):
            raise ProtocolError(f"binary data is truncated: input '{name}' claims {size} bytes at offset {offset}, "
                                f"but the binary part has {len(binary)} bytes")
        arrays[name] = _from_binary(binary[offset:offset + size], name, inp.datatype, dtype, inp.shape, count)
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"the binary part has {len(binary)} bytes but the inputs' binary_data_size "
                            f"add up to {offset}; {len(binary) - offset} bytes are left over")
    return arrays


def decode_raw(body: bytes | memoryview, name: str, datatype: str, shape: list[int]) -> np.ndarray:
    """One tensor sent as the whole body (Inference-Header-Content-Length: 0)."""
    return _from_binary(memoryview(body), name, datatype, _dtype(datatype, name), list(shape), _count(shape, name))


def _binary_size(inp: RequestInput) -> int | None:
    """The input's binary_data_size, or None when its tensor is in `data`."""
    params = inp.parameters
    size = params.get("binary_data_size") if params else None
    if size is None:
        if inp.data is None:
            if params and "shared_memory_region" in params:
                raise ProtocolError(f"input '{inp.name}': shared memory inputs are not supported")
            raise ProtocolError(f"input '{inp.name}' has neither data nor parameters.binary_data_size")
        return None
    if inp.data is not None:
        raise ProtocolError(f"input '{inp.name}' has both data and parameters.binary_data_size; send one")
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input '{inp.name}': parameters.binary_data_size must be an integer >= 0, got {size!r}")
    return size


def _from_binary(raw: memoryview, name: str, datatype: str, dtype: np.dtype, shape: list[int],
                 count: int) -> np.ndarray:
    if datatype == "BYTES":
        return _unpack_bytes(raw, name, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"input '{name}': {datatype} shape {shape} needs {expected} bytes, "
                            f"binary data has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _unpack_bytes(raw: memoryview, name: str, count: int) -> np.ndarray:
    """BYTES elements, each a 4-byte little-endian length then the bytes."""
    data = bytes(raw)
    items = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError(f"input '{name}': BYTES data is truncated inside the length of element {len(items)}")
        (length,) = _u32.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError(f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                                f"only {end - offset} are left (truncated)")
        items.append(data[offset:offset + length])
        offset += length
    if len(items) != count:
        raise ProtocolError(f"input '{name}': shape needs {count} elements, BYTES data has {len(items)}")
    return _object_array(items)


def _object_array(items: list) -> np.ndarray:
    # np.array(items, dtype=object) would build nested arrays from equal-length sequences
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


_INT_RANGES = {name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
               for name, dtype in NUMPY_DTYPES.items() if dtype.kind in "iu"}
_FLOAT_LIMITS = {name: float(ml_dtypes.finfo(dtype).max if name == "BF16" else np.finfo(dtype).max)
                 for name, dtype in NUMPY_DTYPES.items() if name in ("FP16", "FP32", "BF16")}
_EXPECTED = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers"}
_FOUND = {"b": "booleans", "i": "integers", "u": "integers", "f": "non-integer numbers", "U": "strings",
          "O": "null, objects or huge integers"}
_FOUND_TYPE = {bool: "booleans", float: "non-integer numbers", str: "strings", type(None): "null"}


def _from_json(inp: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    name, datatype, shape, data = inp.name, inp.datatype, inp.shape, inp.data
    if isinstance(data, np.ndarray):  # decoded in slices (json_slices): what np.asarray(data) gives
        values = data
    elif not isinstance(data, list):
        raise ProtocolError(f"input '{name}': data must be a JSON array, got {type(data).__name__}")
    elif datatype == "BYTES":
        return _json_bytes(data, name, shape, count)
    else:
        try:
            # numpy infers bool, int64, uint64, float64, str or object: that tells us what the JSON held
            values = np.asarray(data)
        except ValueError as e:
            raise ProtocolError(f"input '{name}': data is not a regular array of {datatype} values ({e})") from None
    _check_count(name, shape, count, values.size)
    if count == 0:
        return np.empty(shape, dtype=dtype)
    kind = "f" if datatype == "BF16" else dtype.kind
    found = values.dtype.kind
    if kind in "iu":
        return _json_ints(values, data, name, datatype, dtype).reshape(shape)
    if found != kind and not (kind == "f" and found in "iu"):
        raise ProtocolError(f"input '{name}': {datatype} data must be {_EXPECTED[kind]}, "
                            f"found {_FOUND.get(found, values.dtype)}")
    limit = _FLOAT_LIMITS.get(datatype)
    # float64 first: the abs of int64's least value is itself
    if limit is not None and np.abs(values.astype(np.float64, copy=False)).max() > limit:
        raise ProtocolError(f"input '{name}': a value is too large for {datatype} (largest {limit:g})")
    return values.astype(dtype, copy=False).reshape(shape)


def _json_ints(values: np.ndarray, data: list | np.ndarray, name: str, datatype: str, dtype: np.dtype) -> np.ndarray:
    if values.dtype.kind not in "iu":
        # numpy infers float64 (or object) for ints past int64 mixed with others, so look at each
        items = data.tolist() if isinstance(data, np.ndarray) else _leaves(data)
        return _exact_ints(items, name, datatype, dtype)
    if values.dtype != dtype:
        _check_range(values.min(), values.max(), name, datatype)
    return values.astype(dtype, copy=False)


def _exact_ints(items: list, name: str, datatype: str, dtype: np.dtype) -> np.ndarray:
    for item in items:
        if type(item) is not int:
            found = _FOUND_TYPE.get(type(item), type(item).__name__)
            raise ProtocolError(f"input '{name}': {datatype} data must be integers, found {found}")
    _check_range(min(items), max(items), name, datatype)
    return np.array(items, dtype=dtype)


def _check_range(low, high, name: str, datatype: str) -> None:
    least, most = _INT_RANGES[datatype]
    if low < least or high > most:
        bad = low if low < least else high
        raise ProtocolError(f"input '{name}': value {bad} does not fit {datatype} ({least} to {most})")


def _check_count(name: str, shape: list[int], count: int, found: int) -> None:
    if found != count:
        raise ProtocolError(f"input '{name}': shape {shape} needs {count} elements, data has {found}")


def _json_bytes(data: list, name: str, shape: list[int], count: int) -> np.ndarray:
    items = _leaves(data)
    _check_count(name, shape, count, len(items))
    for i, item in enumerate(items):
        if type(item) is not str:
            raise ProtocolError(f"input '{name}': BYTES data must be strings, found {type(item).__name__}")
        items[i] = item.encode()
    return _object_array(items).reshape(shape)


def _leaves(data: list) -> list:
    """The elements of (possibly nested) lists, in row-major order."""
    items = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            items.append(value)
        else:
            stack.pop()
    return items


# --- responses --------------------------------------------------------------------------

def encode_response(model_name: str, model_version: str | None, request_id: str | None,
                    outputs: dict[str, np.ndarray], requested: list[RequestOutput] | None,
                    binary_default: bool, parameters: dict | None = None) -> tuple[bytes, int | None]:
    """The response body and the length of its JSON part (None when nothing is binary).

    ``requested`` picks and orders the outputs (None: all, in dict order). Outputs sent as JSON
    carry a flat ``data`` list; BYTES elements that are not valid UTF-8 are decoded with
    errors='replace' there (ask for binary_data to get them exactly), and non-finite floats
    are written as null (JSON has no inf or NaN).
    """
    chosen = _choose(outputs, requested, binary_default)
    entries: list[ResponseOutput] = []
    chunks: list = []
    for name, array, binary in chosen:
        array = np.asarray(array)
        datatype = datatype_of(array)
        shape = list(array.shape)
        if binary:
            raw = _pack(array, datatype)
            chunks.append(raw)
            entries.append(ResponseOutput(name, datatype, shape, parameters={"binary_data_size": len(raw)}))
        else:
            entries.append(ResponseOutput(name, datatype, shape, data=_json_data(array, datatype)))
    header = _encoder.encode(InferResponse(model_name, entries, model_version, request_id, parameters))
    return (b"".join([header, *chunks]), len(header)) if chunks else (header, None)


def _choose(outputs: dict[str, np.ndarray], requested: list[RequestOutput] | None,
            binary_default: bool) -> list[tuple[str, np.ndarray, bool]]:
    if requested is None:
        return [(name, array, binary_default) for name, array in outputs.items()]
    chosen = []
    for req in requested:
        array = outputs.get(req.name)
        if array is None:
            raise ProtocolError(f"model has no output '{req.name}' (its outputs: {', '.join(outputs)})")
        binary = req.parameters.get("binary_data", binary_default) if req.parameters else binary_default
        if type(binary) is not bool:
            raise ProtocolError(f"output '{req.name}': parameters.binary_data must be true or false, got {binary!r}")
        chosen.append((req.name, array, binary))
    return chosen


def _pack(array: np.ndarray, datatype: str):
    """The output's bytes on the wire: a bytes object, or a uint8 array joined without copying."""
    if datatype == "BYTES":
        return b"".join(part for item in array.ravel().tolist() for part in _length_prefixed(item))
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # a view as uint8, since some dtypes (BF16) cannot be exported through the buffer protocol
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _length_prefixed(item) -> tuple[bytes, bytes]:
    data = item if isinstance(item, bytes) else str(item).encode()
    return _u32.pack(len(data)), data


def _json_data(array: np.ndarray, datatype: str) -> list:
    flat = array.ravel()
    if datatype == "BYTES":
        return [item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                for item in flat.tolist()]
    if datatype == "BF16":
        flat = flat.astype(np.float32)  # bfloat16 scalars are not JSON numbers
    return flat.tolist()
