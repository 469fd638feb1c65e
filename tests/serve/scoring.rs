//! Real-time scoring: `/metrics` read by Prometheus' parser, scores bit-identical to
//! `batchscore run`, a new model picked up without a restart.

use super::*;

#[test]
fn metrics_parse_with_prometheus_own_parser() {
    let Ok(python) = std::env::var("BATCHSCORE_PYTHON") else {
        eprintln!("skipped: BATCHSCORE_PYTHON unset (scripts/test.sh sets it)");
        return;
    };
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let rows = json!({"data": [full_row(1, 1.0), full_row(1, 2.0), {"device_id": 99999}]});
    for _ in 0..3 {
        with_key(client.post(format!("{}/v1/score", service.url))).json(&rows).send().unwrap();
    }
    let text = metrics_text(&client, &service);
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {"type": family.type, "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(text.as_bytes()).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the parser refused /metrics:\n{}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    for (name, kind) in [
        ("batchscore_http_requests", "counter"),
        ("batchscore_http_request_duration_seconds", "histogram"),
        ("batchscore_rows_scored", "counter"),
        ("batchscore_score_row_errors", "counter"),
        ("batchscore_model_cache_hits", "counter"),
        ("batchscore_model_cache_misses", "counter"),
        ("batchscore_model_cache_bytes", "gauge"),
        ("batchscore_runs", "gauge"),
        ("batchscore_run_queue_depth", "gauge"),
        ("batchscore_build_info", "gauge"),
    ] {
        assert_eq!(families[name]["type"], kind, "{name}: {families}");
    }
    let sample = |family: &str, name: &str| -> f64 {
        families[family]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s[0] == name)
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    assert_eq!(sample("batchscore_rows_scored", "batchscore_rows_scored_total"), 6.0);
    assert_eq!(sample("batchscore_score_row_errors", "batchscore_score_row_errors_total"), 3.0);
    assert_eq!(sample("batchscore_model_cache_misses", "batchscore_model_cache_misses_total"), 1.0);
    assert_eq!(sample("batchscore_model_cache_hits", "batchscore_model_cache_hits_total"), 2.0);
    let buckets: Vec<&Value> = families["batchscore_http_request_duration_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s[0] == "batchscore_http_request_duration_seconds_bucket"
                && s[1]["route"] == "/v1/score"
        })
        .collect();
    assert!(
        buckets.len() > 5 && buckets.iter().any(|s| s[1]["le"] == "+Inf" && s[2] == 3.0),
        "{buckets:?}"
    );
    // No label carries a device id.
    assert!(!text.contains("device"), "{text}");
}

/// The fixture's readings as JSON rows, with (device, timestamp) of each.
fn reading_rows() -> Vec<((i64, i64), Value)> {
    let f = fixture();
    let mut rows = Vec::new();
    let mut files: Vec<_> = walk(Path::new(&f.readings()));
    files.sort();
    for file in files {
        for batch in read_parquet(&file) {
            let device =
                batch.column_by_name("device_id").unwrap().as_primitive::<Int64Type>().clone();
            let ts = batch
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let schema = batch.schema();
            let sensors: Vec<(String, arrow::array::Float64Array)> = schema
                .fields()
                .iter()
                .filter(|field| !["device_id", "timestamp"].contains(&field.name().as_str()))
                .map(|field| {
                    let column = arrow::compute::cast(
                        batch.column_by_name(field.name()).unwrap(),
                        &arrow::datatypes::DataType::Float64,
                    )
                    .unwrap();
                    (field.name().clone(), column.as_primitive::<Float64Type>().clone())
                })
                .collect();
            for i in 0..batch.num_rows() {
                let mut row = serde_json::Map::new();
                row.insert("device_id".into(), json!(device.value(i)));
                row.insert("timestamp".into(), json!(ts.value(i)));
                for (name, values) in &sensors {
                    let value =
                        if values.is_null(i) { Value::Null } else { json!(values.value(i)) };
                    row.insert(name.clone(), value);
                }
                rows.push(((device.value(i), ts.value(i)), Value::Object(row)));
            }
        }
    }
    rows
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}

#[test]
fn real_time_scores_are_bit_identical_to_the_batch_job() {
    let f = fixture();
    let dir = tempdir();
    let batch_out = dir.path().join("batch");
    run_job(&f.readings(), &f.registry(), &batch_out.display().to_string(), &[], 0);
    let batch = scored_rows(&run_dir(&batch_out));
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let rows = reading_rows();
    assert_eq!(rows.len(), batch.len());
    let mut compared = 0;
    for chunk in rows.chunks(997) {
        // A device without a model in the middle: an error entry in its place, the others scored.
        let mut data: Vec<Value> = chunk.iter().map(|(_, row)| row.clone()).collect();
        data.insert(1, json!({"device_id": 424242, "temperature": 1.0}));
        let (status, _, answer) = body(
            with_key(client.post(format!("{}/v1/score", service.url)))
                .json(&json!({"data": data}))
                .send()
                .unwrap(),
        );
        assert_eq!(status, StatusCode::OK, "{answer}");
        let answer = answer.as_array().unwrap();
        assert_eq!(answer.len(), chunk.len() + 1);
        assert_eq!(answer[1]["code"], "model_missing", "{}", answer[1]);
        let results = answer.iter().take(1).chain(answer.iter().skip(2));
        for ((key, _), result) in chunk.iter().zip(results) {
            let (score, decision, anomaly) = batch[key];
            assert_eq!(result["score"].as_f64().unwrap().to_bits(), score, "{key:?}: {result}");
            assert_eq!(
                result["decision"].as_f64().unwrap().to_bits(),
                decision,
                "{key:?}: {result}"
            );
            assert_eq!(result["is_anomaly"].as_bool().unwrap(), anomaly, "{key:?}");
            assert!(result["model_version"].as_str().is_some_and(|v| v.len() == 16), "{result}");
            compared += 1;
        }
    }
    assert_eq!(compared, DEVICES as usize * ROWS);
    // One row a request (Stream Analytics with a batch size of 1): the same bits.
    for (key, row) in rows.iter().step_by(97).take(60) {
        let (status, _, answer) = body(
            with_key(client.post(format!("{}/v1/score", service.url)))
                .json(&json!({"data": [row]}))
                .send()
                .unwrap(),
        );
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (score, decision, _) = batch[key];
        assert_eq!(answer[0]["score"].as_f64().unwrap().to_bits(), score, "{key:?}: {answer}");
        assert_eq!(
            answer[0]["decision"].as_f64().unwrap().to_bits(),
            decision,
            "{key:?}: {answer}"
        );
    }
}

#[test]
fn a_changed_registry_is_picked_up_without_a_restart() {
    let f = fixture();
    let dir = tempdir();
    let registry = subset_registry(dir.path(), "0..5");
    let output = dir.path().join("out").display().to_string();
    let args = [
        "--input",
        &f.readings(),
        "--registry",
        &registry,
        "--output",
        &output,
        "--registry-refresh",
        "200ms",
    ];
    let service = Service::start(&args, &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let row = json!({"data": [full_row(20, 1.0)]});
    let score = || {
        body(with_key(client.post(format!("{}/v1/score", service.url))).json(&row).send().unwrap())
            .2
    };
    assert_eq!(score()[0]["code"], "model_missing");
    let ready = body(client.get(format!("{}/readyz", service.url)).send().unwrap()).2;
    assert_eq!(ready["models"], 5);
    expect_code(
        &[
            "train",
            "--input",
            &f.readings(),
            "--registry",
            &registry,
            "--devices",
            "20..21",
            "--seed",
            "3",
        ],
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = score();
        if answer[0]["score"].is_number() || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer[0]["score"].is_number(), "the new model was not picked up: {answer}");
    assert_eq!(body(client.get(format!("{}/readyz", service.url)).send().unwrap()).2["models"], 6);
}

/// Regression: one `1e400` in one row failed the whole request with 400 (Stream Analytics
/// fails its job on any status but 200 and 503), and a key given twice in a row kept its last
/// value silently. Both are now that row's error; the other rows are scored.
#[test]
fn a_row_that_cannot_be_read_fails_alone() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let good = full_row(1, 20.0).to_string();
    let huge = good.replacen("20.0", "1e400", 1);
    let twice = good.replacen('{', r#"{"device_id": 2, "#, 1);
    assert!(huge.contains("1e400") && twice.matches("device_id").count() == 2);
    let request = format!(r#"{{"data": [{good}, {huge}, {twice}, {good}]}}"#);
    let (status, _, answer) = body(
        with_key(client.post(format!("{}/v1/score", service.url))).body(request).send().unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    let rows = answer.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows[0]["score"].is_number() && rows[3]["score"] == rows[0]["score"], "{answer}");
    assert_eq!(rows[1]["code"], "bad_value", "{answer}");
    assert_eq!(rows[2]["code"], "bad_row", "{answer}");
    assert!(rows[2]["error"].as_str().unwrap().contains("`device_id` appears twice"), "{answer}");
}

/// Regression: a row whose model was damaged was answered with the registry's path (the
/// reason is for the log), and a row missing a feature listed every feature of its model, so
/// an answer could be 11 times its request.
#[test]
fn row_errors_say_what_without_the_registry_or_every_feature() {
    let f = fixture();
    let dir = tempdir();
    let registry = dir.path().join("registry");
    copy_dir(Path::new(&f.registry()), &registry);
    corrupt_model(&registry, "3");
    let output = dir.path().join("out").display().to_string();
    let registry_s = registry.display().to_string();
    let args = ["--input", &f.readings(), "--registry", &registry_s, "--output", &output];
    let service = Service::start(&args, &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let request = json!({"data": [full_row(3, 20.0), {"device_id": 1}]});
    let (status, _, answer) = body(
        with_key(client.post(format!("{}/v1/score", service.url))).json(&request).send().unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0]["code"], "model_invalid", "{answer}");
    let said = answer.to_string();
    assert!(!said.contains(&registry_s) && !said.contains("packs/"), "{said}");
    assert_eq!(answer[1]["code"], "feature_missing", "{answer}");
    assert!(!answer[1]["error"].as_str().unwrap().contains("pressure, "), "{answer}");
    assert!(service.log().contains("a model could not be loaded"), "the reason is logged");
}
