//! `batchscore serve` driven over loopback with a real HTTP client: the Logic Apps
//! asynchronous sequence, retried and conflicting starts, a server killed mid-run and
//! restarted, SIGTERM with a request in flight, API keys and Entra-style tokens (a key pair
//! made here, its key set served on loopback), overload, oversize and malformed bodies,
//! `/metrics` read by Prometheus' own Python parser, and real-time scores bit-identical to
//! `batchscore run`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use crate::common::*;

const KEY: &str = "test-key-0123456789abcdef";
const OTHER_KEY: &str = "second-key-0123456789abcdef";

/// A running `batchscore serve`; killed when dropped, so no test leaves one behind.
struct Service {
    child: Option<Child>,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Service {
    /// Starts `batchscore serve ARGS` on a free loopback port and waits for its first line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut command = crate::common::command();
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let mut service = Service { child: Some(child), url: String::new(), log };
        let Some(url) = first.and_then(|l| l.strip_prefix("listening on ").map(String::from))
        else {
            let status = service.child.as_mut().unwrap().wait().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            panic!("serve did not start ({status}):\n{}", service.log());
        };
        service.url = url;
        service
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// Sends `signal` and waits (at most 60 s) for the exit.
    fn stop(mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill").args([signal, &self.pid()]).status().unwrap();
        assert!(status.success());
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop after {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

fn with_key(request: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    request.bearer_auth(KEY)
}

fn body(response: Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// What Logic Apps does with a 202: wait `Retry-After` seconds, GET `Location`, again while the
/// answer is 202. Returns the final answer and the number of polls (bounded: 120).
fn poll(
    client: &Client,
    first: (StatusCode, reqwest::header::HeaderMap, Value),
) -> (StatusCode, Value, usize) {
    let (mut status, mut headers, mut value) = first;
    let mut polls = 0;
    while status == StatusCode::ACCEPTED {
        assert!(polls < 120, "still 202 after {polls} polls: {value}");
        let location = header(&headers, "location");
        assert!(
            location.starts_with("http://127.0.0.1:"),
            "Location must be absolute: {location:?}"
        );
        let wait: u64 = header(&headers, "retry-after").parse().expect("Retry-After in seconds");
        std::thread::sleep(Duration::from_secs(wait));
        (status, headers, value) = body(with_key(client.get(&location)).send().unwrap());
        polls += 1;
    }
    (status, value, polls)
}

/// One sample of a metric in the text exposition (`name{labels} value`), summed over labels
/// containing `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics_text(client: &Client, service: &Service) -> String {
    let response = with_key(client.get(format!("{}/metrics", service.url))).send().unwrap();
    assert_eq!(response.status(), 200);
    response.text().unwrap()
}

fn fixture_args(output: &str) -> Vec<String> {
    let f = fixture();
    ["--input", &f.readings(), "--registry", &f.registry(), "--output", output, "--poll-after", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

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
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    assert!(dirs.contains(&"_requests".to_string()));

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
    // Behind an ingress that terminates TLS: the forwarded scheme and host.
    let service = Service::start(&strs(&fixture_args(&output)), &[("BATCHSCORE_API_KEYS", KEY)]);
    let forwarded =
        [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "batchscore.example.net")];
    assert_eq!(location(&service, &forwarded), "https://batchscore.example.net/v1/runs/located");
    // A Host that is not a host name is not echoed into the Location.
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

/// Opens a scoring request and sends all of it but its last byte: the server has accepted it
/// and waits for the rest.
fn half_sent_score(service: &Service, body: &str) -> TcpStream {
    let addr = service.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/score HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body.as_bytes()[..body.len() - 1]).unwrap();
    stream.flush().unwrap();
    stream
}

fn finish_and_read(mut stream: TcpStream, body: &str) -> String {
    stream.write_all(&body.as_bytes()[body.len() - 1..]).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    while !answer.contains("\r\n\r\n[") || !answer.trim_end().ends_with(']') {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    answer
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

// ---- auth -------------------------------------------------------------------------------

/// A JWKS endpoint on loopback, counting its fetches.
struct KeySetServer {
    url: String,
    fetches: Arc<AtomicUsize>,
}

fn serve_key_set(document: String) -> KeySetServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    KeySetServer { url, fetches }
}

/// An RSA key pair made by openssl for this test.
fn rsa_key(dir: &Path, name: &str) -> jsonwebtoken::EncodingKey {
    let path = dir.join(name);
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("openssl makes the test's key pair");
    assert!(status.success());
    jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&path).unwrap()).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(key: &jsonwebtoken::EncodingKey, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

const TENANT_ISSUER: &str = "https://sts.windows.net/00000000-0000-0000-0000-000000000001/";
const AUDIENCE: &str = "api://batchscore";

#[test]
fn keys_and_tokens_are_checked_and_never_logged() {
    let dir = tempdir();
    let signing = rsa_key(dir.path(), "signing.pem");
    let stranger = rsa_key(dir.path(), "stranger.pem");
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, jsonwebtoken::Algorithm::RS256)
            .unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serve_key_set(json!({"keys": [jwk]}).to_string());
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, format!("# rotation: both keys are valid\n{OTHER_KEY}\n")).unwrap();
    let output = dir.path().join("out").display().to_string();
    let mut args = fixture_args(&output);
    args.extend(
        [
            "--api-keys-file",
            &keys_file.display().to_string(),
            "--jwt-jwks-url",
            &jwks.url,
            "--jwt-issuer",
            TENANT_ISSUER,
            "--jwt-audience",
            AUDIENCE,
        ]
        .map(String::from),
    );
    let service = Service::start(&strs(&args), &[("BATCHSCORE_API_KEYS", KEY)]);
    let client = client();
    let url = format!("{}/metrics", service.url);
    let get = |auth: Option<String>| {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().unwrap();
        let challenge = header(response.headers(), "www-authenticate");
        let (status, _, value) = body(response);
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(challenge, "Bearer");
        }
        (status, value)
    };
    let claims = |extra: Value| {
        let mut c = json!({"iss": TENANT_ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() - 10, "oid": "logic-app-identity"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let bearer = |t: &str| Some(format!("Bearer {t}"));

    // Probes are open; everything else needs a key or a token.
    assert_eq!(client.get(format!("{}/healthz", service.url)).send().unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/readyz", service.url)).send().unwrap().status(), 200);
    assert_eq!(get(None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(bearer("wrong-key-0123456789abcdef")).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(format!("Basic {KEY}"))).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(bearer(KEY)).0, StatusCode::OK);
    assert_eq!(get(bearer(OTHER_KEY)).0, StatusCode::OK, "the second key (rotation) is accepted");

    assert_eq!(get(bearer(&token(&signing, "k1", claims(json!({}))))).0, StatusCode::OK);
    for (why, bad) in [
        ("expired", token(&signing, "k1", claims(json!({"exp": now() - 3600})))),
        ("another audience", token(&signing, "k1", claims(json!({"aud": "api://someone-else"})))),
        (
            "another issuer",
            token(&signing, "k1", claims(json!({"iss": "https://sts.windows.net/other/"}))),
        ),
        ("not valid yet", token(&signing, "k1", claims(json!({"nbf": now() + 3600})))),
        ("signed by a stranger", token(&stranger, "k1", claims(json!({})))),
        ("unknown key id", token(&stranger, "k9", claims(json!({})))),
        ("no audience", token(&signing, "k1", json!({"iss": TENANT_ISSUER, "exp": now() + 600}))),
    ] {
        let (status, value) = get(bearer(&bad));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {value}");
    }
    let (_, value) = get(bearer(&token(&signing, "k1", claims(json!({"exp": now() - 3600})))));
    assert!(value["error"]["message"].as_str().unwrap().contains("expired"), "{value}");
    let (_, value) = get(bearer(&token(&signing, "k1", claims(json!({"aud": "api://x"})))));
    assert!(value["error"]["message"].as_str().unwrap().contains("audience"), "{value}");
    // The key set is cached: one fetch for the first token, one more for the unknown kid,
    // then none however many tokens come.
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    assert!((1..=2).contains(&fetched), "{fetched} key set fetches");
    for _ in 0..5 {
        get(bearer(&token(&stranger, "k9", claims(json!({})))));
        get(bearer(&token(&signing, "k1", claims(json!({})))));
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        fetched,
        "unknown kids must not refetch the key set each time"
    );

    let text = metrics_text(&client, &service);
    assert!(metric(&text, "batchscore_auth_failures_total", "") >= 10.0);
    let log = service.log();
    assert!(log.contains("principal=\"token:logic-app-identity\""), "{log}");
    assert!(log.contains("principal=\"api-key#1\""), "{log}");
    for secret in [KEY, OTHER_KEY] {
        assert!(!log.contains(secret), "a key reached the log");
    }
    assert!(!log.contains("eyJ"), "a token reached the log");
}

#[test]
fn only_loopback_may_go_without_authentication() {
    let f = fixture();
    let dir = tempdir();
    let output = dir.path().join("out").display().to_string();
    let args = [
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--input",
        &f.readings(),
        "--registry",
        &f.registry(),
        "--output",
        &output,
    ];
    let out = expect_code(&args, 2);
    assert!(out.contains("no API key or token issuer"), "{out}");
    let out = expect_code(
        &[
            "serve",
            "--input",
            &f.readings(),
            "--registry",
            &f.registry(),
            "--output",
            &output,
            "--jwt-audience",
            "x",
        ],
        2,
    );
    assert!(out.contains("--entra-tenant or --jwt-jwks-url"), "{out}");
    let short = command()
        .args(["serve", "--input", &f.readings(), "--registry", &f.registry(), "--output", &output])
        .env("BATCHSCORE_API_KEYS", "short")
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&short.stderr).contains("short\""), "the key was echoed");
}

// ---- limits and malformed input ------------------------------------------------------------

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

/// A registry of the fixture's models for `devices` only.
fn subset_registry(dir: &Path, devices: &str) -> String {
    let f = fixture();
    let registry = dir.join("registry").display().to_string();
    let args = [
        "train",
        "--input",
        &f.readings(),
        "--registry",
        &registry,
        "--devices",
        devices,
        "--seed",
        "3",
    ];
    expect_code(&args, 0);
    registry
}

/// A wide row with every sensor of the fixture's models.
fn full_row(device: i64, value: f64) -> Value {
    let mut row = json!({"device_id": device});
    for sensor in [
        "temperature",
        "pressure",
        "vibration",
        "humidity",
        "rpm",
        "voltage",
        "current",
        "flow_rate",
    ] {
        row[sensor] = json!(value);
    }
    row
}

// ---- scores --------------------------------------------------------------------------------

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
