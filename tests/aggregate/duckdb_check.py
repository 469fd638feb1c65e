"""An independent implementation of `batchscore aggregate` in DuckDB, for tests/aggregate.rs.

    duckdb_check.py make-long DIR      irregular long readings (TS, Device, Tag, Value) with gaps,
                                       repeats, late rows in a later file, nulls; 2 files
    duckdb_check.py make-wide DIR      the same for wide readings (device_id, timestamp, a, b)
    duckdb_check.py compare --input DIR --run DIR --layout long|wide --every SECONDS
                    [--offset SECONDS] [--closed left|right] --stats a,b [--pivot --sensors x,y]

`compare` computes the windows with DuckDB's time_bucket over the input files (repeats of a
device, sensor and timestamp dropped keeping the first in file order, as batchscore does) and
compares them with the parts the run's _SUCCESS names: same windows, equal counts, floats equal
to 1e-9 relative. Prints what differs and exits 1, or prints a line of counts and exits 0.
"""

import argparse
import json
import math
import os
import random
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1_780_000_000  # seconds, an instant in 2026


def stat_sql(stat, column, only=None):
    """DuckDB's form of a batchscore statistic over `column`, optionally of one sensor's rows."""
    present = f"{column} IS NOT NULL" + (f" AND sensor = '{only}'" if only else "")
    of_sensor = f" FILTER (WHERE sensor = '{only}')" if only else ""
    return {
        "count": f"count({column}){of_sensor}",
        "mean": f"avg({column}){of_sensor}",
        "std": f"stddev_samp({column}){of_sensor}",
        "min": f"min({column}){of_sensor}",
        "max": f"max({column}){of_sensor}",
        "first": f"arg_min({column}, ts) FILTER (WHERE {present})",
        "last": f"arg_max({column}, ts) FILTER (WHERE {present})",
    }[stat]


def readings(rng, devices, sensors):
    """(device, sensor, seconds, value) rows: jittered 2-7 s steps, a silent gap per device,
    nulls, and exact repeats."""
    rows = []
    for d in devices:
        for s in sensors:
            t = T0 + rng.randint(0, 9)
            gap = (T0 + 120, T0 + 240) if d % 2 else (0, 0)
            while t < T0 + 600:
                if not gap[0] <= t < gap[1]:
                    value = None if rng.random() < 0.05 else round(rng.gauss(20 + d, 3), 3)
                    rows.append((d, s, t + rng.randint(0, 999) / 1000, value))
                    if rng.random() < 0.04:
                        rows.append(rows[-1])  # a retransmission
                    if rng.random() < 0.02:
                        # the same instant again with another value: the first one counts
                        rows.append((d, s, rows[-1][2], 1000.0))
                t += rng.randint(2, 7)
            # readings exactly on window bounds, for the closed side to matter
            rows.append((d, s, float(T0 + 300), 1.0))
    return rows


def write(path, table, row_group_size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


def make_long(directory):
    rng = random.Random(7)
    rows = readings(rng, range(6), [1, 2, 5])
    rng.shuffle(rows)
    late = rows[: len(rows) // 5]  # arriving a file later, out of order
    on_time = sorted(rows[len(rows) // 5 :], key=lambda r: (r[0], r[2]))

    def table(rows):
        return pa.table(
            {
                "TS": pa.array([int(r[2] * 1e6) for r in rows], pa.timestamp("us", tz="UTC")),
                "Device": pa.array([r[0] for r in rows], pa.int64()),
                "Tag": pa.array([r[1] for r in rows], pa.int64()),
                "Value": pa.array([r[3] for r in rows], pa.float64()),
            }
        )

    write(os.path.join(directory, "a.parquet"), table(on_time), 400)
    write(os.path.join(directory, "b_late.parquet"), table(late), 300)


def make_wide(directory):
    rng = random.Random(11)
    a = readings(rng, range(5), ["a"])
    rows = [(d, t, v, None if v is None else round(v * 2 - 1, 3)) for d, _, t, v in a]
    rng.shuffle(rows)
    rows.sort(key=lambda r: r[0])  # by device, not by time within a device

    def table(rows):
        return pa.table(
            {
                "device_id": pa.array([r[0] for r in rows], pa.int64()),
                "timestamp": pa.array([int(r[1] * 1e6) for r in rows], pa.timestamp("us")),
                "a": pa.array([r[2] for r in rows], pa.float64()),
                "b": pa.array([r[3] for r in rows], pa.float64()),
            }
        )

    write(os.path.join(directory, "part-0.parquet"), table(rows), 250)


def expected(con, args):
    files = os.path.join(args.input, "*.parquet")
    every, offset = f"INTERVAL '{args.every} seconds'", f"INTERVAL '{args.offset} seconds'"
    shift = " - INTERVAL '1 microsecond'" if args.closed == "right" else ""
    origin = f"TIMESTAMP '1970-01-01 00:00:00' + {offset}"
    stats = args.stats.split(",")
    if args.layout == "long":
        key, ts, sensor, values = "Device", "TS", "Tag", ["Value"]
    else:
        key, ts, sensor, values = "device_id", "timestamp", None, ["a", "b"]
    series = f"{key}, {sensor}" if sensor else key
    where = ""
    if args.sensors:
        where = f"WHERE CAST({sensor} AS VARCHAR) IN ({', '.join(repr(s) for s in args.sensors.split(','))})"
    cols = ", ".join([key, f"CAST({ts} AS TIMESTAMP) AS ts"] + ([f"CAST({sensor} AS VARCHAR) AS sensor"] if sensor else []) + values)
    con.execute(
        f"""CREATE OR REPLACE TABLE r AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT {cols}, row_number() OVER (
                PARTITION BY {series}, {ts} ORDER BY filename, file_row_number) AS rn
            FROM read_parquet('{files}', filename = true, file_row_number = true) {where})
        WHERE rn = 1"""
    )
    bucket = f"time_bucket({every}, ts{shift}, {origin})"
    if args.layout == "long" and not args.pivot:
        aggs = [f"{stat_sql(stat, 'Value')} AS {stat}" for stat in stats]
        sql = f"SELECT {key}, sensor, {bucket} AS w, {', '.join(aggs)} FROM r GROUP BY ALL"
        names = [key, "Tag", "TS"] + stats
    else:
        # Wide input, or long input pivoted: a column per sensor (or value column) and stat.
        pairs = (
            [(s, "Value", s) for s in args.sensors.split(",")]
            if args.layout == "long"
            else [(v, v, None) for v in values]
        )
        aggs = [
            f'{stat_sql(stat, column, only)} AS "{prefix}_{stat}"'
            for prefix, column, only in pairs
            for stat in stats
        ]
        sql = f"SELECT {key}, {bucket} AS w, {', '.join(aggs)} FROM r GROUP BY ALL"
        names = [key, ts] + [f"{prefix}_{stat}" for prefix, _, _ in pairs for stat in stats]
    return names, con.execute(sql).fetchall()


def actual(args):
    with open(os.path.join(args.run, "_SUCCESS")) as f:
        success = json.load(f)
    tables = [pq.read_table(os.path.join(args.run, p["path"])) for p in success["parts"]]
    table = pa.concat_tables(tables)
    return table


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def compare(args):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    names, rows = expected(con, args)
    table = actual(args)
    if table.column_names != names:
        print(f"columns differ:\n  batchscore {table.column_names}\n  duckdb     {names}")
        return 1
    keys = 3 if (args.layout == "long" and not args.pivot) else 2

    def norm(value):
        # Timestamps compare as naive UTC; integer tags as text (DuckDB's side is text).
        if hasattr(value, "tzinfo") and value.tzinfo is not None:
            return value.replace(tzinfo=None)
        return value

    def order(row):
        return tuple(str(v) if isinstance(v, str) else v for v in row[:keys])

    got = sorted(([norm(r[n]) for n in names] for r in table.to_pylist()), key=order)
    rows = sorted(([norm(v) for v in r] for r in rows), key=order)
    if keys == 3:
        got = [[r[0], str(r[1])] + r[2:] for r in got]
        got.sort(key=lambda r: (r[0], int(r[1]), r[2]))
        rows.sort(key=lambda r: (r[0], int(r[1]), r[2]))
    if len(got) != len(rows):
        print(f"{len(got)} windows from batchscore, {len(rows)} from DuckDB")
        mine = {tuple(map(str, r[:keys])) for r in got}
        theirs = {tuple(map(str, r[:keys])) for r in rows}
        print("  only batchscore:", sorted(mine - theirs)[:5])
        print("  only duckdb:    ", sorted(theirs - mine)[:5])
        return 1
    bad = 0
    for g, e in zip(got, rows):
        for n, x, y in zip(names, g, e):
            if not same(x, y):
                bad += 1
                if bad <= 5:
                    print(f"{n} differs at {g[:keys]}: batchscore {x!r}, duckdb {y!r}")
    if bad:
        print(f"{bad} values differ")
        return 1
    print(f"equal: {len(rows)} windows, {len(names)} columns")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["make-long", "make-wide", "compare"])
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--input")
    parser.add_argument("--run")
    parser.add_argument("--layout", default="long")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--closed", default="left")
    parser.add_argument("--stats", default="count,mean,std,min,max,first,last")
    parser.add_argument("--pivot", action="store_true")
    parser.add_argument("--sensors")
    args = parser.parse_args()
    if args.command == "make-long":
        make_long(args.dir)
    elif args.command == "make-wide":
        make_wide(args.dir)
    else:
        sys.exit(compare(args))


if __name__ == "__main__":
    main()
