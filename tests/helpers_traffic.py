"""Driving a real server with the real tritonclient: rows to infer, and ground-truth labels."""

import json

import tritonclient.http as httpclient

from loopserve import zoo


def send(server, rows, id_prefix="", batch=100):
    """Infer `rows` of model `mlp` in requests of `batch` rows; returns the request ids."""
    client = httpclient.InferenceServerClient(server.url)
    ids = []
    try:
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            x = httpclient.InferInput(zoo.INPUT, list(part.shape), "FP32")
            x.set_data_from_numpy(part, binary_data=True)
            request_id = f"{id_prefix}{start}" if id_prefix else ""
            ids.append(client.infer("mlp", [x], request_id=request_id).get_response()["id"])
    finally:
        client.close()
    return ids


def label(server, ids, labels):
    """POST one label per request id (one-row requests) to the model's feedback route."""
    body = json.dumps({"labels": [{"id": i, "label": int(v)} for i, v in zip(ids, labels)]}).encode()
    status, _, raw = server.request("POST", "/v2/models/mlp/feedback", body)
    assert status == 200, raw
    return json.loads(raw)
