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

mod auth;
mod limits;
mod runs;
mod scoring;

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

/// Opens a scoring request and sends all of it but its last byte: the server has accepted it
/// and waits for the rest.
fn half_sent_score(service: &Service, body: &str) -> TcpStream {
    let mut stream = sent_head(service, "/v1/score", body.len());
    stream.write_all(&body.as_bytes()[..body.len() - 1]).unwrap();
    stream.flush().unwrap();
    stream
}

/// Opens a POST to `path` and sends its head only, announcing a body of `length` bytes.
fn sent_head(service: &Service, path: &str, length: usize) -> TcpStream {
    let addr = service.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        length
    );
    stream.write_all(head.as_bytes()).unwrap();
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
