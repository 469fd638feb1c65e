#!/usr/bin/env python3
"""The real-time Python peer of scripts/bench/serve-load.sh: per-device scikit-learn models
behind FastAPI, written the way Azure ML's scoring samples serve models (an `init` that loads
models, a `run` that parses JSON and calls the model), in Stream Analytics' contract:
`{"data": [row, ...]}` in, a JSON array of results out, in order.

Each device's IsolationForest is loaded with `joblib.load` on first use and kept (every model
fits in memory at this size). Rows are grouped by device and each group is scored with one
`score_samples` call; decision and prediction follow from it (`decision = score - offset_`,
anomaly when `decision < 0`, exactly `decision_function` and `predict`) so the peer does one
traversal per row, as batchscore does.

  uvicorn --app-dir scripts/bench score_peer:app --workers 2   (MODELS=DIR SENSORS=a,b,...)
"""

import os
from collections import defaultdict

import joblib
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODELS = os.environ["MODELS"]
SENSORS = os.environ["SENSORS"].split(",")
_models = {}

app = FastAPI()


def model_for(device):
    model = _models.get(device)
    if model is None:
        path = os.path.join(MODELS, f"model_{device}.joblib")
        if not os.path.exists(path):
            return None
        model = _models[device] = joblib.load(path)
    return model


@app.get("/healthz")
def healthz():
    return {"status": "live"}


@app.post("/score")
async def score(request: Request):
    rows = (await request.json())["data"]
    out = [None] * len(rows)
    groups = defaultdict(list)
    for i, row in enumerate(rows):
        groups[int(row["device_id"])].append(i)
    for device, indices in groups.items():
        model = model_for(device)
        if model is None:
            for i in indices:
                out[i] = {"error": f"no model for {device}", "code": "model_missing"}
            continue
        x = np.array([[rows[i][s] for s in SENSORS] for i in indices], dtype=np.float64)
        scores = model.score_samples(x)
        decisions = scores - model.offset_
        for i, s, d in zip(indices, scores, decisions):
            out[i] = {"score": float(s), "decision": float(d), "is_anomaly": bool(d < 0),
                      "model_version": f"model_{device}"}
    return JSONResponse(out)
