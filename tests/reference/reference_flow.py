"""The reference system's workload, as its Python scripts run it.

Writes into OUT:
  data/sensor_data.csv      long-format readings `TS,Device,Tag,Value` (3 devices x 5 tags on a
                            5-second grid over 3 hours), with a few injected outliers
  data_parquet/sensor_data.parquet   the same readings as Parquet (TS a timestamp)
  models/model_{device}_{tag}.pkl    one Pipeline(StandardScaler, OneClassSVM(nu=0.0001,
                            kernel="rbf", gamma=0.01)) per (device, tag), fitted on the first hour
  expected.csv              what the reference's scoring step writes for every model:
                            `TS, Device, Tag, Val, Prediction` (1 = anomaly), concatenated in
                            (device, tag) order
  injected.csv              the (TS, Device, Tag) of the injected outliers

Usage: python reference_flow.py OUT [--devices 3] [--tags 5] [--hours 3]

Prints the time the reference's scoring step took for all models, in this one process (a lower
bound for the reference system, which starts one container job per model).
"""

import argparse
import os
import pickle
import time

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

STEP_S = 5


def readings(rng, devices, tags, hours):
    times = pd.date_range("2018-08-28 23:00:05", periods=hours * 3600 // STEP_S, freq=f"{STEP_S}s")
    rows, injected = [], []
    for t_index, ts in enumerate(times):
        stamp = ts.strftime("%Y-%m-%d %H:%M:%S.000")
        for device in devices:
            for tag in tags:
                mean, sd = 10.0 * tag + device, 0.5 + 0.1 * tag
                value = round(rng.normal(mean, sd), 2)
                # A few clear outliers after the training hour, one series at a time.
                if t_index > 720 and t_index % 397 == (device * 7 + tag) % 397:
                    value = round(mean + 12 * sd, 2)
                    injected.append((stamp, device, tag))
                rows.append((stamp, device, tag, value))
    data = pd.DataFrame(rows, columns=["TS", "Device", "Tag", "Value"])
    return data, pd.DataFrame(injected, columns=["TS", "Device", "Tag"])


def fit_pipeline(series):
    """create_model.py: the pipeline of one (device, tag), fitted on its values alone."""
    model = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01)),
    ])
    model.fit(np.array(series["Value"]).reshape(-1, 1))
    return model


def save_model(out, device, tag, model):
    with open(os.path.join(out, "models", f"model_{device}_{tag}.pkl"), "wb") as f:
        pickle.dump(model, f)


def load_model(out, device, tag):
    with open(os.path.join(out, "models", f"model_{device}_{tag}.pkl"), "rb") as f:
        return pickle.load(f)


def predictions(model, series):
    """predict.py's output for one series: sklearn's -1 (outlier) is 1, +1 is 0."""
    predicted = model.predict(np.array(series["Value"]).reshape(-1, 1))
    return pd.DataFrame({
        "TS": series["TS"].values,
        "Device": series["Device"].values,
        "Tag": series["Tag"].values,
        "Val": series["Value"].values,
        "Prediction": np.where(predicted == -1, 1, 0),
    })


def predict_one(out, device, tag, preds_dir):
    """predict.py, once per model: read the whole CSV, keep one series, predict, write its CSV."""
    data = pd.read_csv(os.path.join(out, "data", "sensor_data.csv"))
    model = load_model(out, device, tag)
    result = predictions(model, data[(data.Device == device) & (data.Tag == tag)])
    result.to_csv(os.path.join(preds_dir, f"preds_{device}_{tag}.csv"), index=False)
    return result


def main(out, devices, tags, hours):
    rng = np.random.default_rng(20180828)
    data, injected = readings(rng, devices, tags, hours)
    for sub in ("data", "data_parquet", "models"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    data.to_csv(os.path.join(out, "data", "sensor_data.csv"), index=False)
    typed = data.assign(TS=pd.to_datetime(data["TS"]).dt.tz_localize("UTC"))
    typed.to_parquet(os.path.join(out, "data_parquet", "sensor_data.parquet"), index=False)
    injected.to_csv(os.path.join(out, "injected.csv"), index=False)

    # Training, as the reference's create_model.py: one pipeline per (device, tag), fitted on
    # the values alone.
    first_hour = data.iloc[: 3600 // STEP_S * len(devices) * len(tags)]
    for device in devices:
        for tag in tags:
            series = first_hour[(first_hour.Device == device) & (first_hour.Tag == tag)]
            save_model(out, device, tag, fit_pipeline(series))

    # Scoring, as the reference's predict.py, once per model: read the whole CSV, keep one
    # series, predict, map sklearn's -1 (outlier) to 1 and +1 to 0, write TS, Device, Tag, Val,
    # Prediction.
    started = time.perf_counter()
    results = [predict_one(out, device, tag, out) for device in devices for tag in tags]
    elapsed = time.perf_counter() - started
    pd.concat(results).to_csv(os.path.join(out, "expected.csv"), index=False)
    print(f"reference scoring: {elapsed:.3f} s for {len(devices) * len(tags)} models, "
          f"{len(data)} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--hours", type=int, default=3)
    a = parser.parse_args()
    main(a.out, list(range(1, a.devices + 1)), list(range(1, a.tags + 1)), a.hours)
