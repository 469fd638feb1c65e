#!/usr/bin/env python3
"""Counts a run's rows the way users read a run's folder, with the readers they use.

    count_rows.py OUTPUT RUN_ID

Prints JSON: the rows each reader finds when pointed at OUTPUT/RUN_ID (pyarrow.dataset on the
folder, DuckDB and polars on `*.parquet` and `**/*.parquet` globs, Spark's rule of skipping
`_` and `.` names), what polars says of the bare folder, and what the run's other tables under
OUTPUT/_runs/RUN_ID hold. No helper that knows batchscore's layout is used.
"""

import json
import os
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq

output, run_id = sys.argv[1], sys.argv[2]
run = os.path.join(output, run_id)
tables = os.path.join(output, "_runs", run_id)
found = {}

found["pyarrow_dataset"] = ds.dataset(run, format="parquet").count_rows()
found["pyarrow_dataset_schema"] = ds.dataset(run, format="parquet").schema.names
con = duckdb.connect()
for name, pattern in (("duckdb_glob", "*.parquet"), ("duckdb_recursive", "**/*.parquet")):
    found[name] = con.sql(
        f"select count(*) from read_parquet('{os.path.join(run, pattern)}')"
    ).fetchone()[0]
for name, pattern in (("polars_glob", "*.parquet"), ("polars_recursive", "**/*.parquet")):
    found[name] = pl.scan_parquet(os.path.join(run, pattern)).select(pl.len()).collect().item()
try:
    pl.scan_parquet(run).select(pl.len()).collect()
    found["polars_folder"] = "read"
except Exception as e:  # polars refuses folders of mixed extensions
    found["polars_folder"] = f"refused: {type(e).__name__}"

# Spark-style listing: every file below the folder whose path has no segment starting with
# `_` or `.`, read as Parquet.
spark_rows = 0
for root, dirs, files in os.walk(run):
    dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
    for f in files:
        if not f.startswith(("_", ".")):
            spark_rows += pq.ParquetFile(os.path.join(root, f)).metadata.num_rows
found["spark_style"] = spark_rows

found["run_files"] = sorted(
    os.path.relpath(os.path.join(root, f), run) for root, _, files in os.walk(run) for f in files
)
found["tables"] = sorted(
    os.path.relpath(os.path.join(root, f), tables)
    for root, _, files in os.walk(tables)
    for f in files
)
drift = os.path.join(tables, "drift.parquet")
if os.path.exists(drift):
    found["drift_rows"] = pq.read_metadata(drift).num_rows
print(json.dumps(found))
