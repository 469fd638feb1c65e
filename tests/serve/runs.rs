//! Runs over HTTP: the Logic Apps sequence, idempotent and conflicting starts, status URLs,
//! failed runs, two servers on one output, a server killed mid-run, SIGTERM.

use super::*;

#[test]
fn logic_apps_sequence_retries_and_conflicts_run_once() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let start =
        json!({"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z", "devices": "0..20"});

    // The Logic Apps HTTP action: POST, 202 + absolute Location + Retry-After, polls, 200.
    let first = body(
        with_key(client.post(format!("{}/v1/runs", service.url))).json(&start).send().unwrap(),
    );
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.2);
    let location = header(&first.1, "location");
    let run_id = first.2["run_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{}/v1/runs/{run_id}", service.url));
    assert_eq!(header(&first.1, "retry-after"), "1");
    let (status, summary, _) = poll(&client, first);
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["state"], "complete");
    assert_eq!(summary["totals"]["devices_scored"], 20);
    assert_eq!(summary["totals"]["rows"], 20 * ROWS as u64);

    // The action retried (a lost answer): the same run, answered from storage, not run again.
    let again = body(
        with_key(client.post(format!("{}/v1/runs", service.url))).json(&start).send().unwrap(),
    );
    assert_eq!(again.0, StatusCode::ACCEPTED);
    assert_eq!(header(&again.1, "location"), location);
    let (status, repeat, polls) = poll(&client, again);
    assert_eq!((status, polls), (StatusCode::OK, 1));
    assert_eq!(repeat["totals"], summary["totals"]);
    // The same settings spelled differently name the same run.
    let spelled = json!({"devices": "0..=19", "to": "2027-01-01 00:00:00", "from": "2026-01-01"});
    let same = body(
        with_key(client.post(format!("{}/v1/runs", service.url))).json(&spelled).send().unwrap(),
    );
    assert_eq!(same.2["run_id"], run_id.as_str());

    // Another request under the same run id is refused, not merged.
    let conflicting = json!({"run_id": run_id, "devices": "0..5"});
    let (status, _, error) = body(
        with_key(client.post(format!("{}/v1/runs", service.url)))
            .json(&conflicting)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "run_id_conflict");

    // Sixteen callers start another run at the same moment: one run id, one execution.
    let other =
        json!({"devices": "20..30", "from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"});
    let locations: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let answer = with_key(client.post(format!("{}/v1/runs", service.url)))
                        .json(&other)
                        .send()
                        .unwrap();
                    assert_eq!(answer.status(), StatusCode::ACCEPTED);
                    header(answer.headers(), "location")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(locations.iter().all(|l| *l == locations[0]), "{locations:?}");
    let raced = body(with_key(client.get(&locations[0])).send().unwrap());
    assert_eq!(poll(&client, raced).0, StatusCode::OK);

    let text = metrics_text(&client, &service);
    assert_eq!(metric(&text, "batchscore_runs_started_total", ""), 2.0, "{text}");
    assert_eq!(metric(&text, "batchscore_runs", "state=\"complete\""), 2.0);

    // One run directory, complete, every row once; `batchscore status` agrees.
    let run = Path::new(&output).join(&run_id);
    assert_eq!(scored_rows(&run).len(), 20 * ROWS);
    expect_code(&["status", "--output", &output, "--run-id", &run_id], 0);
    let dirs: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs.len(), 4, "{dirs:?}");
    assert!(dirs.contains(&"_requests".to_string()) && dirs.contains(&"_runs".to_string()));

    let (status, _, missing) =
        body(with_key(client.get(format!("{}/v1/runs/no-such-run", service.url))).send().unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert!(!service.log().contains(KEY), "the API key reached the log");
}

#[test]
fn status_urls_follow_the_public_url_or_the_forwarded_host() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let client = client();
    let start = json!({"run_id": "located", "devices": "0..2"});
    let location = |service: &Service, headers: &[(&str, &str)]| {
        let mut request = with_key(client.post(format!("{}/v1/runs", service.url))).json(&start);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        header(answer.headers(), "location")
    };
    // Regression: without a public URL the Location followed any client's X-Forwarded-Host
    // (or Host), so a client could send pollers elsewhere. Only a trusted proxy's count.
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let forwarded =
        [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "batchscore.example.net")];
    let own = format!("{}/v1/runs/located", service.url);
    assert_eq!(location(&service, &forwarded), own);
    assert_eq!(location(&service, &[("Host", "evil.example")]), own);
    drop(service);
    // Behind a proxy on this host that terminates TLS: its forwarded scheme and host.
    let mut args = fixture_args(&output);
    args.extend(["--trusted-proxies", "127.0.0.1,::1"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    assert_eq!(location(&service, &forwarded), "https://batchscore.example.net/v1/runs/located");
    // A forwarded host that is not a host name is not echoed into the Location.
    let odd = location(&service, &[("X-Forwarded-Host", "evil.example/<script>")]);
    assert_eq!(odd, format!("{}/v1/runs/located", service.url));
    drop(service);
    // A configured public URL (with a path prefix) wins over the request's headers.
    let mut args = fixture_args(&output);
    args.extend(["--public-url", "https://api.example.net/scoring"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    assert_eq!(location(&service, &forwarded), "https://api.example.net/scoring/v1/runs/located");
}

#[test]
fn failed_runs_answer_an_error_status_with_their_class_and_exit_code() {
    let f = fixture();
    let dir = tempdir();
    let client = client();
    let env = [("BATCHSCORE_API_KEYS", KEY)];
    // Devices 5..10 have readings but no model: more failed series than the run tolerates.
    let registry = subset_registry(dir.path(), "0..5");
    let output = dir.path().join("out").display().to_string();
    let args = [
        "--input",
        &f.readings(),
        "--registry",
        &registry,
        "--output",
        &output,
        "--poll-after",
        "1",
    ];
    let service = Service::start(&args, &env);
    let first = body(
        with_key(client.post(format!("{}/v1/runs", service.url)))
            .json(&json!({"devices": "0..10"}))
            .send()
            .unwrap(),
    );
    let (status, failed, _) = poll(&client, first);
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{failed}");
    assert_eq!(
        (failed["state"].as_str(), failed["class"].as_str(), failed["exit_code"].as_u64()),
        (Some("failed"), Some("failed_keys"), Some(3)),
        "{failed}"
    );
    assert_eq!(failed["summary"]["failed_count"], 5, "{failed}");
    drop(service);

    // Input that is not there (a usage error) and a damaged file (bad input): the run fails
    // with the class and exit code `batchscore run` would.
    let empty = dir.path().join("empty");
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join("part-0.parquet"), b"PAR1 this is not parquet PAR1").unwrap();
    for (input, class, code, says) in
        [(&empty, "usage", 2, "empty"), (&damaged, "bad_input", 4, "part-0.parquet")]
    {
        let args = [
            "--input",
            input.to_str().unwrap(),
            "--registry",
            &registry,
            "--output",
            &output,
            "--poll-after",
            "1",
        ];
        let service = Service::start(&args, &env);
        let first = body(
            with_key(client.post(format!("{}/v1/runs", service.url)))
                .json(&json!({}))
                .send()
                .unwrap(),
        );
        let (status, failed, _) = poll(&client, first);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{failed}");
        assert_eq!(
            (failed["class"].as_str(), failed["exit_code"].as_u64()),
            (Some(class), Some(code)),
            "{failed}"
        );
        assert!(failed["error"].as_str().unwrap().contains(says), "{failed}");
    }
}

#[test]
fn two_servers_on_one_output_commit_a_run_once() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let env = [("BATCHSCORE_API_KEYS", KEY)];
    let a = Service::start(&strs(&fixture_args(&output)), &env);
    let b = Service::start(&strs(&fixture_args(&output)), &env);
    let client = client();
    let start = json!({"run_id": "shared", "devices": "0..30"});
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&a, &b]
            .map(|s| {
                let (client, start) = (&client, &start);
                scope.spawn(move || {
                    body(
                        with_key(client.post(format!("{}/v1/runs", s.url)))
                            .json(start)
                            .send()
                            .unwrap(),
                    )
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut totals = Vec::new();
    for answer in answers {
        let (status, summary, _) = poll(&client, answer);
        assert_eq!(status, StatusCode::OK, "{summary}");
        totals.push(summary["totals"].clone());
    }
    assert_eq!(totals[0], totals[1]);
    assert_eq!(scored_rows(&Path::new(&output).join("shared")).len(), DEVICES as usize * ROWS);
}

/// A config for runs like interrupt.rs's uninterrupted one (same units, so the same bytes).
fn workload_config(dir: &Path, output: &str) -> String {
    let w = crate::interrupt::workload();
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            "[paths]\ninput = {:?}\nregistry = {:?}\noutput = {output:?}\n[run]\nthreads = 1\nmin_part_rows = 5000\nmax_part_rows = 15000\n[serve]\npoll_after = 1\n",
            w.readings, w.models
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Polls (without Retry-After waits) until `done` holds for the run's answer; bounded.
fn wait_for(client: &Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, _, value) = body(with_key(client.get(url)).send().unwrap());
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {value}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check_same_as_uninterrupted(run: &Path) {
    let w = crate::interrupt::workload();
    let got = crate::interrupt::committed(run);
    assert_eq!(got.keys().collect::<Vec<_>>(), w.clean.keys().collect::<Vec<_>>());
    for (path, bytes) in &w.clean {
        assert!(got[path] == *bytes, "{path} differs from the uninterrupted run's");
    }
}

#[test]
fn a_server_killed_mid_run_resumes_it_when_polled_after_restart() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let config = workload_config(dir.path(), &output);
    let env = [("BATCHSCORE_API_KEYS", KEY)];
    let client = client();
    let service = Service::start(&["--config", &config], &env);
    let first = body(
        with_key(client.post(format!("{}/v1/runs", service.url)))
            .json(&json!({"run_id": "r"}))
            .send()
            .unwrap(),
    );
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.2);
    let status_url = format!("{}/v1/runs/r", service.url);
    wait_for(&client, &status_url, |v| {
        v["state"] == "running" && v["progress"]["units_done"].as_u64() >= Some(2)
    });
    // The HTTP side answers while the run has the cores (not a timing test: a bound far above
    // any healthy answer, that a server blocked behind its run would miss).
    for url in [format!("{}/healthz", service.url), status_url.clone()] {
        let started = Instant::now();
        assert!(with_key(client.get(&url)).send().unwrap().status().is_success());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{url} took {:?} during a run",
            started.elapsed()
        );
    }
    drop(service); // SIGKILL, mid-run
    let run = Path::new(&output).join("r");
    assert!(
        !run.join("_SUCCESS").exists(),
        "the run finished before the kill; the workload is too small"
    );

    // A new server knows nothing in memory: the poll finds the request record and resumes.
    let service = Service::start(&["--config", &config], &env);
    let status_url = format!("{}/v1/runs/r", service.url);
    let resumed = body(with_key(client.get(&status_url)).send().unwrap());
    assert_eq!(resumed.0, StatusCode::ACCEPTED, "{}", resumed.2);
    let (status, summary, _) = poll(&client, resumed);
    assert_eq!(status, StatusCode::OK, "{summary}");
    check_same_as_uninterrupted(&run);
    assert!(
        service.log().contains("resuming a run started before this server"),
        "{}",
        service.log()
    );
}

#[test]
fn sigterm_finishes_requests_in_flight_and_leaves_the_run_resumable() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let config = workload_config(dir.path(), &output);
    let env = [("BATCHSCORE_API_KEYS", KEY)];
    let client = client();
    let service = Service::start(&["--config", &config], &env);
    body(
        with_key(client.post(format!("{}/v1/runs", service.url)))
            .json(&json!({"run_id": "r"}))
            .send()
            .unwrap(),
    );
    // A scoring request in flight (all but its last byte sent), then SIGTERM the moment the
    // run has committed a unit, so that most of the run is still to do.
    let row = r#"{"data": [{"device_id": 1, "temperature": 1, "pressure": 2, "vibration": 3, "humidity": 4, "rpm": 5, "voltage": 6, "current": 7, "flow_rate": 8}]}"#;
    let in_flight = half_sent_score(&service, row);
    wait_for(&client, &format!("{}/v1/runs/r", service.url), |v| {
        v["progress"]["units_done"].as_u64() >= Some(1)
    });
    let addr = service.url.clone();
    let pid = service.pid();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once the server stops accepting.
    assert!(client.get(format!("{addr}/healthz")).send().is_err(), "still accepting after SIGTERM");
    let answer = finish_and_read(in_flight, row);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"score\""), "{answer}");
    let status = service.stop("-0");
    assert_eq!(status.code(), Some(0));
    let run = Path::new(&output).join("r");
    assert!(!run.join("_SUCCESS").exists(), "the run should have been stopped before its end");

    let service = Service::start(&["--config", &config], &env);
    let resumed = body(with_key(client.get(format!("{}/v1/runs/r", service.url))).send().unwrap());
    let (status, summary, _) = poll(&client, resumed);
    assert_eq!(status, StatusCode::OK, "{summary}");
    check_same_as_uninterrupted(&run);
}

/// Regression: `POST /v1/runs` with the run id of a run made by the CLI (or whose request
/// record was damaged before a restart) and other devices answered 202 and then 200
/// "complete" with the other run's summary: a Logic App took an unscored window as scored.
/// The run's own plan and the request must agree, else 409 naming what differs.
#[test]
fn a_run_id_of_another_run_is_a_conflict_naming_what_differs() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    run_job(
        &f.readings(),
        &f.registry(),
        &output,
        &["--run-id", "cli-run", "--devices", "0..2"],
        0,
    );
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let start = |request: &Value| {
        body(
            with_key(client.post(format!("{}/v1/runs", service.url))).json(request).send().unwrap(),
        )
    };
    let (status, _, error) = start(&json!({"run_id": "cli-run", "devices": "5..9"}));
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "run_id_conflict");
    assert!(error["error"]["message"].as_str().unwrap().contains("device selection"), "{error}");
    assert!(
        !Path::new(&output).join("_requests/cli-run.json").exists(),
        "a refused request leaves no record that would refuse the right one"
    );
    // The same devices as the CLI's run: that run, answered as complete.
    let first = start(&json!({"run_id": "cli-run", "devices": "0..2"}));
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.2);
    let (status, summary, _) = poll(&client, first);
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["totals"]["devices_scored"], 2);

    // A request record damaged, the server restarted: the run's plan still decides.
    let served = json!({"run_id": "served", "devices": "3..5"});
    let (status, summary, _) = poll(&client, start(&served));
    assert_eq!(status, StatusCode::OK, "{summary}");
    drop(service);
    std::fs::write(Path::new(&output).join("_requests/served.json"), b"{damaged").unwrap();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let (status, _, error) = body(
        with_key(client.post(format!("{}/v1/runs", service.url)))
            .json(&json!({"run_id": "served", "devices": "10..20"}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("device selection"), "{error}");
}
