//! Limits: overload, stalled uploads, silent connections, the connection cap, oversize and
//! malformed bodies, requests that reach for other locations.

use super::*;

#[test]
fn overload_answers_503_with_retry_after() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(
        ["--max-in-flight", "1", "--queue-wait", "50ms", "--request-timeout", "2s"]
            .map(String::from),
    );
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let row = r#"{"data": [{"device_id": 1, "temperature": 1}]}"#;
    let held = half_sent_score(&service, row);
    std::thread::sleep(Duration::from_millis(200));
    let client = client();
    let response =
        with_key(client.post(format!("{}/v1/score", service.url))).body(row).send().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(response.headers(), "retry-after"), "1");
    let (_, _, value) = body(response);
    assert_eq!(value["error"]["code"], "overloaded");
    // Health and status stay responsive while scoring is saturated.
    let started = Instant::now();
    assert_eq!(client.get(format!("{}/healthz", service.url)).send().unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let answer = finish_and_read(held, row);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let after =
        with_key(client.post(format!("{}/v1/score", service.url))).body(row).send().unwrap();
    assert_eq!(after.status(), 200, "the slot is free again");
    // A client that stops sending its body loses the slot after --request-timeout.
    let stalled = half_sent_score(&service, row);
    let started = Instant::now();
    let mut answer = String::new();
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = (&stalled).read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "timed out early: {:?}",
        started.elapsed()
    );
    let after =
        with_key(client.post(format!("{}/v1/score", service.url))).body(row).send().unwrap();
    assert_eq!(after.status(), 200, "the stalled request's slot is free again");
    let text = metrics_text(&client, &service);
    assert_eq!(metric(&text, "batchscore_overload_rejections_total", "/v1/score"), 1.0, "{text}");
}

/// Reads until the server closes the connection (or 10 s pass); what it sent, if anything.
fn read_until_closed(mut stream: TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[test]
fn silent_connections_are_closed_and_open_connections_capped() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(["--header-timeout", "1s", "--max-connections", "2"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let addr = service.url.trim_start_matches("http://").to_string();
    // A client that connects and never sends its request head is let go.
    let started = Instant::now();
    let silent = TcpStream::connect(&addr).unwrap();
    assert!(read_until_closed(silent).is_some(), "a silent connection was kept open 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout");
    // So is one that stops in the middle of its head.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(read_until_closed(slow).is_some(), "a half-sent head was kept open 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout");
    // Two connections are open (heads half sent): a third is closed at once, unserved.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(&addr).unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_until_closed(third).unwrap_or_default();
    assert!(!answer.contains("200 OK"), "served beyond --max-connections: {answer}");
    // Finished heads are answered, and once they close there is room again.
    for s in &mut held {
        s.write_all(b"Host: x\r\nConnection: close\r\n\r\n").unwrap();
    }
    for s in held {
        assert!(read_until_closed(s).unwrap().starts_with("HTTP/1.1 200"));
    }
    let client = client();
    assert_eq!(client.get(format!("{}/healthz", service.url)).send().unwrap().status(), 200);
}

#[test]
fn oversize_malformed_and_out_of_bounds_requests_are_refused_with_reasons() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(["--max-body", "4KiB", "--max-rows", "10"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let post = |path: &str, body_text: String| {
        body(
            with_key(client.post(format!("{}{path}", service.url))).body(body_text).send().unwrap(),
        )
    };
    let cases: Vec<(&str, String, StatusCode, &str, &str)> = vec![
        ("/v1/score", "x".repeat(5000), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "4096"),
        (
            "/v1/score",
            json!({"data": vec![json!({"device_id": 1}); 11]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_rows",
            "at most 10",
        ),
        ("/v1/score", "{\"data\": [".into(), StatusCode::BAD_REQUEST, "malformed_json", "column"),
        (
            "/v1/score",
            "{\"data\": 5}".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "invalid type",
        ),
        (
            "/v1/score",
            "{\"rows\": []}".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "unknown field `rows`",
        ),
        ("/v1/score", "".into(), StatusCode::BAD_REQUEST, "empty_body", "no body"),
        ("/v1/score", "\u{0}\u{1}".into(), StatusCode::BAD_REQUEST, "malformed_json", "line 1"),
        // Regression: `[]` filled the request's fields by position and started a run of every
        // device.
        ("/v1/runs", "[]".into(), StatusCode::BAD_REQUEST, "malformed_json", "JSON object"),
        (
            "/v1/runs",
            " [\"0..5\"]".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "JSON object",
        ),
        ("/v1/runs", "\"all\"".into(), StatusCode::BAD_REQUEST, "malformed_json", "JSON object"),
        ("/v1/score", "[[]]".into(), StatusCode::BAD_REQUEST, "malformed_json", "JSON object"),
        (
            "/v1/runs",
            json!({"input": "/etc"}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "unknown field `input`",
        ),
        (
            "/v1/runs",
            json!({"output": "/tmp/elsewhere"}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "unknown field `output`",
        ),
        (
            "/v1/runs",
            json!({"devices": "@/etc/passwd"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_run",
            "@file",
        ),
        (
            "/v1/runs",
            json!({"run_id": "../escape"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_run",
            "run-id",
        ),
        (
            "/v1/runs",
            json!({"devices": "ten"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_run",
            "ten",
        ),
        (
            "/v1/runs",
            json!({"from": "yesterday"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_run",
            "yesterday",
        ),
        (
            "/v1/runs",
            json!({"last": "1h", "from": "2026-01-01"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_run",
            "cannot be combined",
        ),
    ];
    for (path, text, status, code, says) in cases {
        let (got, _, value) = post(path, text.clone());
        assert_eq!(got, status, "{path} {text:.60}: {value}");
        assert_eq!(value["error"]["code"], code, "{path} {text:.60}: {value}");
        let message = value["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path} {text:.60}: {message}");
    }
    for path in ["/v1/runs/..%2F..%2Fetc", "/v1/runs/_requests", "/v1/runs/.hidden"] {
        let (status, _, value) =
            body(with_key(client.get(format!("{}{path}", service.url))).send().unwrap());
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {value}");
    }
    // Nothing was written outside the output, and no run was started by any of these.
    assert!(
        !Path::new(&output).join("_requests").exists()
            || std::fs::read_dir(Path::new(&output).join("_requests")).unwrap().count() == 0
    );
}

/// Regression: a `POST /v1/runs` whose body came a byte every half second held its connection
/// past 45 s; the request timeout covered scoring only. Every route now answers 408 after it.
#[test]
fn a_trickled_body_on_any_route_is_cut_off_at_the_request_timeout() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(["--request-timeout", "2s"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let body = r#"{"devices": "0..2", "run_id": "trickled"}"#;
    let stream = sent_head(&service, "/v1/runs", body.len());
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // A byte every half second, 20 at most (10 s): the server must answer long before.
        for byte in body.as_bytes().iter().take(20) {
            if writer.write_all(&[*byte]).and_then(|()| writer.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let mut answer = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = stream;
    let _ = reader.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let _ = reader.shutdown(std::net::Shutdown::Both);
    trickle.join().unwrap();
    assert!(!Path::new(&output).join("_requests/trickled.json").exists(), "no run was started");
}

/// Regression: a wrong method answered 405 with an empty body; every other error is JSON.
#[test]
fn a_wrong_method_is_answered_in_json() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    for (method, path) in [
        (reqwest::Method::DELETE, "/v1/runs"),
        (reqwest::Method::GET, "/v1/score"),
        (reqwest::Method::PUT, "/v1/runs/x"),
        (reqwest::Method::POST, "/healthz"),
    ] {
        let request = client.request(method.clone(), format!("{}{path}", service.url));
        let (status, headers, value) = body(with_key(request).send().unwrap());
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(header(&headers, "content-type").starts_with("application/json"));
        assert_eq!(value["error"]["code"], "method_not_allowed", "{method} {path}: {value}");
    }
}

/// Regression: the plain port spoke HTTP/2 with prior knowledge, and the header timeout held
/// for HTTP/1 only, so connections that sent the 33-byte HTTP/2 preface (or one request and
/// then nothing) stayed open for good; 4,096 of them filled `--max-connections` and every new
/// connection, `/healthz` included, was reset. Now no connection outlives `--header-timeout`
/// unused, HTTP/2 prefaces are closed at once, and an unfinished head is at most 32 KiB.
#[test]
fn no_client_can_hold_connections_it_does_not_use() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(["--header-timeout", "1s", "--max-connections", "8"].map(String::from));
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let addr = service.url.trim_start_matches("http://").to_string();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    // Eight HTTP/2 clients with prior knowledge, and eight HTTP/1 clients gone idle after one
    // keep-alive request: the cap is full for at most the timeout.
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(preface).unwrap();
            s
        })
        .collect();
    for s in held.drain(..) {
        let answer = read_until_closed(s).expect("an HTTP/2 preface is closed, not held");
        assert!(!answer.contains("HTTP/2"), "{answer}");
    }
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for s in idle {
        let answer = read_until_closed(s).expect("an idle keep-alive connection is closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout");
    // Then the service answers everyone again.
    let client = client();
    assert_eq!(client.get(format!("{}/healthz", service.url)).send().unwrap().status(), 200);
    // An unfinished head past 32 KiB is refused at once, not buffered.
    let mut big = TcpStream::connect(&addr).unwrap();
    big.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ").unwrap();
    let _ = big.write_all(&[b'a'; 40 * 1024]);
    let answer = read_until_closed(big).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// Regression: the request counter was labelled with the raw method, so 2,000 requests with
/// made-up 4 KB methods grew `/metrics` from 2 KB to 8 MB.
#[test]
fn made_up_methods_do_not_grow_the_metrics() {
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let before = metrics_text(&client, &service).len();
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("X{i}{}", "M".repeat(4000)).as_bytes());
        let _ = client.request(method.unwrap(), format!("{}/healthz", service.url)).send();
    }
    let text = metrics_text(&client, &service);
    assert!(!text.contains("MMMM"), "a made-up method became a label");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.len() < before + 4096, "{} -> {} bytes", before, text.len());
}

/// Regression: nothing checked the open-file limit at start; under 256, idle connections used
/// every handle and rows were answered 200 `model_invalid` ("Too many open files"). The soft
/// limit is raised to the hard one, and a cap that does not fit beside storage is lowered,
/// saying so.
#[test]
fn the_connection_cap_fits_the_open_file_limit() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let mut child = Command::new("prlimit")
        .args(["--nofile=200:300", "--"])
        .arg(env!("CARGO_BIN_EXE_batchscore"))
        .args(["--no-config", "serve", "--listen", "127.0.0.1:0", "--max-connections", "1024"])
        .args(["--input", &f.readings(), "--registry", &f.registry(), "--output", &output])
        .env("BATCHSCORE_API_KEYS", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let said = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    // The hard limit, 300, less the handles kept for storage: 44 connections.
    assert!(said.contains("serving at most 44"), "{said}");
    assert!(said.contains("ulimit -n"), "{said}");
}
