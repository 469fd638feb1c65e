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

Usage: python reference_flow.py OUT
"""

import os
import pickle
import sys

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

DEVICES = [1, 2, 3]
TAGS = [1, 2, 3, 4, 5]
STEP_S = 5
HOURS = 3


def readings(rng):
    times = pd.date_range("2018-08-28 23:00:05", periods=HOURS * 3600 // STEP_S, freq=f"{STEP_S}s")
    rows, injected = [], []
    for t_index, ts in enumerate(times):
        stamp = ts.strftime("%Y-%m-%d %H:%M:%S.000")
        for device in DEVICES:
            for tag in TAGS:
                mean, sd = 10.0 * tag + device, 0.5 + 0.1 * tag
                value = round(rng.normal(mean, sd), 2)
                # A few clear outliers after the training hour, one series at a time.
                if t_index > 720 and t_index % 397 == (device * 7 + tag) % 397:
                    value = round(mean + 12 * sd, 2)
                    injected.append((stamp, device, tag))
                rows.append((stamp, device, tag, value))
    data = pd.DataFrame(rows, columns=["TS", "Device", "Tag", "Value"])
    return data, pd.DataFrame(injected, columns=["TS", "Device", "Tag"])


def main(out):
    rng = np.random.default_rng(20180828)
    data, injected = readings(rng)
    for sub in ("data", "data_parquet", "models"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    data.to_csv(os.path.join(out, "data", "sensor_data.csv"), index=False)
    typed = data.assign(TS=pd.to_datetime(data["TS"]).dt.tz_localize("UTC"))
    typed.to_parquet(os.path.join(out, "data_parquet", "sensor_data.parquet"), index=False)
    injected.to_csv(os.path.join(out, "injected.csv"), index=False)

    # Training, as the reference's create_model.py: one pipeline per (device, tag), fitted on
    # the values alone.
    first_hour = data.iloc[: 3600 // STEP_S * len(DEVICES) * len(TAGS)]
    for device in DEVICES:
        for tag in TAGS:
            series = first_hour[(first_hour.Device == device) & (first_hour.Tag == tag)]
            model = Pipeline([
                ("scaler", StandardScaler()),
                ("classifier", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01)),
            ])
            model.fit(np.array(series["Value"]).reshape(-1, 1))
            with open(os.path.join(out, "models", f"model_{device}_{tag}.pkl"), "wb") as f:
                pickle.dump(model, f)

    # Scoring, as the reference's predict.py: read the whole CSV, keep one series, predict,
    # map sklearn's -1 (outlier) to 1 and +1 to 0, write TS, Device, Tag, Val, Prediction.
    data = pd.read_csv(os.path.join(out, "data", "sensor_data.csv"))
    results = []
    for device in DEVICES:
        for tag in TAGS:
            with open(os.path.join(out, "models", f"model_{device}_{tag}.pkl"), "rb") as f:
                model = pickle.load(f)
            series = data[(data.Device == device) & (data.Tag == tag)]
            predictions = model.predict(np.array(series["Value"]).reshape(-1, 1))
            results.append(pd.DataFrame({
                "TS": series["TS"].values,
                "Device": series["Device"].values,
                "Tag": series["Tag"].values,
                "Val": series["Value"].values,
                "Prediction": np.where(predictions == -1, 1, 0),
            }))
    pd.concat(results).to_csv(os.path.join(out, "expected.csv"), index=False)


if __name__ == "__main__":
    main(sys.argv[1])
