//! `batchscore report`: its numbers against an independent count over the scored rows, its
//! refusals, and the HTML page in a real browser (headless Chromium through playwright-core:
//! scripts/browser/check-report.mjs): every chart and table renders, the console stays empty
//! and nothing but the file itself is requested.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::drift::{SHIFTED, shifted_copy};

const BROKEN: i64 = 5;

/// A complete run over drifted readings with one failed series (a damaged model).
fn drifted_run_with_a_failure(dir: &Path) -> (String, String) {
    let moved = dir.join("moved");
    shifted_copy(&moved);
    let registry = dir.join("registry");
    copy_dir(Path::new(&fixture().registry()), &registry);
    corrupt_model(&registry, &BROKEN.to_string());
    let output = dir.join("out").display().to_string();
    let stdout = run_job(
        &moved.display().to_string(),
        &registry.display().to_string(),
        &output,
        &["--max-failed", "1", "--summary", "json"],
        0,
    );
    let summary: serde_json::Value =
        serde_json::from_str(&stdout[..stdout.rfind('}').unwrap() + 1]).unwrap();
    (output, summary["run_id"].as_str().unwrap().to_string())
}

fn report_json(output: &str, run_id: &str) -> serde_json::Value {
    let args = ["report", "--output", output, "--run-id", run_id, "--format", "json", "--to", "-"];
    serde_json::from_str(&expect_code(&args, 0)).unwrap()
}

#[test]
fn numbers_match_a_count_over_the_scored_rows() {
    let dir = tempdir();
    let (output, run_id) = drifted_run_with_a_failure(dir.path());
    let r = report_json(&output, &run_id);
    let rows = scored_rows(&Path::new(&output).join(&run_id));

    // Anomalies per hour, counted here from the parts.
    let mut hours: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    let mut series: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for ((device, ts), (_, _, anomaly)) in &rows {
        let h = hours.entry(ts.div_euclid(3_600_000_000) * 3_600_000_000).or_default();
        let s = series.entry(*device).or_default();
        h.0 += 1;
        s.0 += 1;
        if *anomaly {
            h.1 += 1;
            s.1 += 1;
        }
    }
    let per_hour: BTreeMap<i64, (u64, u64)> = r["per_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let n = |k: &str| h[k].as_u64().unwrap();
            (h["hour_us"].as_i64().unwrap(), (n("rows"), n("anomalies")))
        })
        .collect();
    assert_eq!(per_hour, hours);
    assert_eq!(r["totals"]["rows"].as_u64().unwrap(), rows.len() as u64);

    // The 20 highest anomaly rates, in order (ties: more anomalies, then device).
    let mut expected: Vec<(i64, u64, u64)> =
        series.iter().map(|(d, (n, a))| (*d, *n, *a)).collect();
    expected.sort_by(|x, y| {
        let (rx, ry) = (x.2 as f64 / x.1 as f64, y.2 as f64 / y.1 as f64);
        ry.total_cmp(&rx).then(y.2.cmp(&x.2)).then(x.0.cmp(&y.0))
    });
    let top: Vec<(i64, u64, u64)> = r["top_series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device"].as_i64().unwrap(),
                s["rows"].as_u64().unwrap(),
                s["anomalies"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(top, expected[..20]);
    assert_eq!(r["timelines"].as_array().unwrap().len(), 6);
    let worst = &r["timelines"][0];
    assert_eq!(worst["key"], r["top_series"][0]["key"]);
    assert_eq!(
        worst["anomaly_points"].as_array().unwrap().len() as u64,
        worst["anomalies"].as_u64().unwrap().min(500)
    );

    // Scores: every row counted once, normal and anomalous apart.
    let h = &r["scores"];
    let sum = |k: &str| h[k].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("normal") + sum("anomalous"), rows.len() as u64);
    assert_eq!(sum("anomalous"), r["totals"]["anomalies"].as_u64().unwrap());

    // Drift: the shifted (device, temperature) pairs come first; the failure is listed.
    let drift: Vec<(String, String)> = r["drift"]["rows"].as_array().unwrap()[..3]
        .iter()
        .map(|d| (d["key"].as_str().unwrap().into(), d["status"].as_str().unwrap().into()))
        .collect();
    for (key, status) in &drift {
        assert!(SHIFTED.contains(&key.parse().unwrap()) && status == "significant", "{drift:?}");
    }
    assert_eq!(r["failures_total"], 1);
    assert_eq!(r["failures"][0]["key"], BROKEN.to_string());
    assert_eq!(r["failures"][0]["stage"], "model_invalid");
}

#[test]
fn incomplete_missing_and_csv_runs_are_refused() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let missing = expect_code(&["report", "--output", &output, "--run-id", "run-nope"], 2);
    assert!(missing.contains("no run `run-nope`"), "{missing}");

    let shard = ["--shard-index", "0", "--shard-count", "2", "--run-id", "half"];
    run_job(&f.readings(), &f.registry(), &output, &shard, 0);
    let incomplete = expect_code(&["report", "--output", &output, "--run-id", "half"], 2);
    assert!(incomplete.contains("not complete"), "{incomplete}");

    let csv = ["--output-format", "csv", "--run-id", "csv"];
    run_job(&f.readings(), &f.registry(), &output, &csv, 0);
    let refused = expect_code(&["report", "--output", &output, "--run-id", "csv"], 4);
    assert!(refused.contains("reports read Parquet parts"), "{refused}");
}

#[test]
fn a_run_that_scored_nothing_still_has_a_report() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let args = ["--devices", "500..503", "--run-id", "empty", "--max-failed", "0"];
    run_job(&f.readings(), &f.registry(), &output, &args, 0);
    let r = report_json(&output, "empty");
    assert_eq!(r["totals"]["rows"], 0);
    assert_eq!(r["totals"]["devices_no_input"], 3);
    assert_eq!(r["per_hour"], serde_json::json!([]));
    assert!(r["scores"].is_null() && r["timelines"] == serde_json::json!([]));
    assert_eq!(r["drift"]["rows_total"], 0);
    let html = expect_code(&["report", "--output", &output, "--run-id", "empty", "--to", "-"], 0);
    assert!(html.contains("No rows were scored.") && html.ends_with("</html>\n"), "{html}");
}

/// Opens `page` in headless Chromium (scripts/browser/check-report.mjs): what rendered, as JSON.
/// The page's screenshot is kept as `NAME` among the suite's artefacts
/// (`target/tmp/report-artefacts/`), to look at as a person would.
fn open_in_chromium(browser: &str, page: &Path, name: &str) -> serde_json::Value {
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join(name);
    let out = Command::new("node")
        .arg(Path::new(browser).join("check-report.mjs"))
        .arg(page)
        .arg(&shot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot of the page");
    eprintln!("screenshot: {}", shot.display());
    serde_json::from_str(stdout.trim()).unwrap()
}

/// The chart's bars of the anomaly colour, as the page lays them out.
fn anomaly_bars(chart: &serde_json::Value) -> Vec<(f64, f64, f64, f64)> {
    chart["bars"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["fill"] == "#d62728")
        .map(|b| {
            let f = |k: &str| b[k].as_f64().unwrap();
            (f("x"), f("y"), f("width"), f("height"))
        })
        .collect()
}

/// An axis label that is a count written with decimals (`2500.0`).
fn decimal_count(label: &str) -> bool {
    let digits = label.replace(',', "");
    digits.split_once('.').is_some_and(|(whole, fraction)| {
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The browser check's directory (scripts/browser), or None where the suite does not ask for
/// the browser test.
fn browser() -> Option<String> {
    let dir = std::env::var("BATCHSCORE_BROWSER").ok();
    if dir.is_none() {
        assert!(
            std::env::var("BATCHSCORE_TEST_SKLEARN").is_err(),
            "BATCHSCORE_BROWSER is not set but the suite requires the browser test"
        );
        eprintln!("skipped: BATCHSCORE_BROWSER is not set (scripts/test.sh sets it)");
    }
    dir
}

#[test]
fn the_html_report_renders_in_chromium_without_errors_or_requests() {
    let Some(browser) = browser() else { return };
    let dir = tempdir();
    let (output, run_id) = drifted_run_with_a_failure(dir.path());
    let written = expect_code(&["report", "--output", &output, "--run-id", &run_id], 0);
    // Beside the run's other tables, not in the folder readers take for scored rows.
    let page = Path::new(&output).join("_runs").join(&run_id).join("report.html");
    assert!(written.contains("_runs") && written.contains("report.html"), "{written}");
    let r = open_in_chromium(&browser, &page, "report.png");
    assert_eq!(r["console"], serde_json::json!([]), "console messages");
    assert_eq!(r["pageErrors"], serde_json::json!([]), "page errors");
    let requests = r["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "only the file itself: {requests:?}");
    assert_eq!(r["external"], 0);
    let sections: Vec<&str> =
        r["sections"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(
        sections,
        ["summary", "per-hour", "top-series", "scores", "timelines", "drift", "failures"]
    );

    // Each chart has a visible size, drawn shapes and its labels.
    let charts = &r["charts"];
    for (name, count) in [("perHour", 1), ("topSeries", 1), ("scores", 1), ("timelines", 6)] {
        let svgs = charts[name].as_array().unwrap();
        assert_eq!(svgs.len(), count, "{name}");
        for svg in svgs {
            let size = svg["size"].as_array().unwrap();
            assert!(
                size[0].as_f64().unwrap() > 300.0 && size[1].as_f64().unwrap() > 100.0,
                "{name}: {svg}"
            );
            assert!(svg["shapes"].as_u64().unwrap() > 10, "{name}: {svg}");
        }
    }
    // Regression: the highest-rates bars were drawn as a staircase, each filled to the chart's
    // top; each is now a bar of its own row, highest rate on top, as long as its rate.
    let bars = anomaly_bars(&charts["topSeries"][0]);
    assert_eq!(bars.len(), 20, "{bars:?}");
    for pair in bars.windows(2) {
        let ((_, y0, w0, h0), (_, y1, w1, h1)) = (pair[0], pair[1]);
        assert!((h0 - h1).abs() <= 1.0 && h0 < 22.0, "rows of one height: {bars:?}");
        assert!(y1 > y0 + h0 - 0.5, "one below the other, not overlapping: {bars:?}");
        assert!(w1 <= w0 + 0.5, "highest rate first: {bars:?}");
    }
    // Regression: counts were labelled with decimals (`2500.0` rows).
    for name in ["perHour", "scores"] {
        let texts = charts[name][0]["texts"].as_array().unwrap();
        let decimals: Vec<_> =
            texts.iter().filter_map(|t| t.as_str()).filter(|t| decimal_count(t)).collect();
        assert!(decimals.is_empty(), "{name}: {decimals:?}");
    }
    let labels = charts["topSeries"][0]["texts"].to_string();
    let top = report_json(&output, &run_id);
    assert!(labels.contains(top["top_series"][0]["key"].as_str().unwrap()), "{labels}");
    let timeline_title = charts["timelines"][0]["texts"].to_string();
    assert!(
        timeline_title.contains(&format!("model {}", top["timelines"][0]["key"].as_str().unwrap()))
    );
    assert!(charts["scores"][0]["texts"].to_string().contains("anomaly"));

    // Tables: top 20, drift with the shifted pairs first, the failure with its reason.
    let tables = &r["tables"];
    assert_eq!(tables["topSeries"].as_array().unwrap().len(), 20);
    let drift = tables["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 50);
    for row in &drift[..3] {
        assert_eq!(row[1], "temperature");
        assert_eq!(row[2], "significant");
    }
    let failures = tables["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0][0], BROKEN.to_string());
    assert_eq!(failures[0][2], "model_invalid");
    let summary = tables["summary"].to_string();
    assert!(summary.contains("3 devices drifted, PSI > 0.25"), "{summary}");
}

/// Regression: a one-hour run's "anomalies per hour" chart was one bar the width of the chart.
#[test]
fn a_one_hour_run_draws_one_narrow_bar() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let window = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T01:00:00Z"];
    let mut args = vec!["--run-id", "hour"];
    args.extend(window);
    run_job(&f.readings(), &f.registry(), &output, &args, 0);
    let r = report_json(&output, "hour");
    assert_eq!(r["per_hour"].as_array().unwrap().len(), 1, "{}", r["per_hour"]);
    expect_code(&["report", "--output", &output, "--run-id", "hour"], 0);
    let page = Path::new(&output).join("_runs/hour/report.html");
    let r = open_in_chromium(&browser, &page, "one-hour-report.png");
    let chart = &r["charts"]["perHour"][0];
    let width = chart["size"][0].as_f64().unwrap();
    let bars = anomaly_bars(chart);
    assert_eq!(bars.len(), 1, "{bars:?}");
    assert!(bars[0].2 < width / 8.0, "a bar of {} px in a chart of {width} px", bars[0].2);
}
