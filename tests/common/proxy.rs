//! A fault-injecting HTTP proxy on 127.0.0.1 for storage tests.
//!
//! It sits between `batchscore` and Azurite (point `AZURITE_BLOB_STORAGE_URL` at it), forwards
//! every request, counts requests, and fails a seeded share of them the way cloud storage fails:
//! 503 and 500 answers, 429 throttling, connections reset before the request reaches the server
//! or after the server acted on it but before the answer arrives, and slow answers. One request
//! per connection keeps framing trivial: the upstream answer is relayed until the server closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Status503,
    Status500,
    Status429,
    /// Connection closed before forwarding: the server never sees the request.
    ResetBefore,
    /// Forwarded and answered by the server, then the connection closed without the answer.
    ResetAfter,
    /// Answer delayed by [`SLOW`].
    Slow,
}

/// Delay of a slow answer.
pub const SLOW: Duration = Duration::from_millis(1500);

const FAULTS: [Fault; 6] = [
    Fault::Status503,
    Fault::Status500,
    Fault::Status429,
    Fault::ResetBefore,
    Fault::ResetAfter,
    Fault::Slow,
];

#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    faults: BTreeMap<String, u64>,
    /// Request lines, in order of arrival (method and path, no query).
    log: Vec<String>,
}

/// Faults aimed at some requests: those whose path (query included) contains `needle` pass
/// `pass` times, then meet `fault`: every one after (an outage, as a storage account failing
/// for good), or only the next one.
#[derive(Debug)]
struct Outage {
    needle: String,
    pass: u64,
    seen: Mutex<u64>,
    fault: Fault,
    lasting: bool,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    stats: Arc<Mutex<Stats>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Forwards to `upstream` (`127.0.0.1:PORT`), failing `fault_share` of the requests.
    pub fn start(upstream: &str, fault_share: f64, seed: u64) -> Self {
        Self::start_with(upstream, fault_share, seed, None)
    }

    /// Forwards to `upstream`; requests whose path contains `needle` pass `pass` times and then
    /// meet a lasting outage (503 to every request).
    pub fn outage_after(upstream: &str, needle: &str, pass: u64) -> Self {
        let outage = Outage {
            needle: needle.to_string(),
            pass,
            seen: Mutex::new(0),
            fault: Fault::Status503,
            lasting: true,
        };
        Self::start_with(upstream, 0.0, 1, Some(Arc::new(outage)))
    }

    /// Forwards to `upstream`; the first request whose path contains `needle` reaches the
    /// server, which acts on it, but its answer is lost (the connection closes).
    pub fn lose_answer_once(upstream: &str, needle: &str) -> Self {
        let outage = Outage {
            needle: needle.to_string(),
            pass: 0,
            seen: Mutex::new(0),
            fault: Fault::ResetAfter,
            lasting: false,
        };
        Self::start_with(upstream, 0.0, 1, Some(Arc::new(outage)))
    }

    fn start_with(
        upstream: &str,
        fault_share: f64,
        seed: u64,
        outage: Option<Arc<Outage>>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("the proxy binds a loopback port");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let upstream = upstream.to_string();
        let rng = Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
        let shared = stats.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = {
                    let mut rng = rng.lock().unwrap();
                    if rng.random_bool(fault_share) {
                        Some(FAULTS[rng.random_range(0..FAULTS.len())])
                    } else {
                        None
                    }
                };
                tokio::spawn(serve(
                    client,
                    upstream.clone(),
                    fault,
                    outage.clone(),
                    shared.clone(),
                ));
            }
        });
        Self { addr, stats, runtime: Some(runtime) }
    }

    /// The URL to give object_store's emulator mode.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.stats.lock().unwrap().requests
    }

    /// Injected faults, by kind.
    pub fn faults(&self) -> BTreeMap<String, u64> {
        self.stats.lock().unwrap().faults.clone()
    }

    /// Method and path of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.stats.lock().unwrap().log.clone()
    }

    /// Forgets the counts so far.
    pub fn reset_counts(&self) {
        *self.stats.lock().unwrap() = Stats::default();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Reads one request: head (up to the blank line) and body (Content-Length or chunked).
async fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut body = buf[head_end..].to_vec();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Keep the chunked framing as is; read until the last chunk and the final CRLF.
        while !body.ends_with(b"0\r\n\r\n") {
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while body.len() < len {
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some((head, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request head with `Connection: close`, so the server ends the answer by closing.
fn close_after(head: &str) -> String {
    let mut lines: Vec<&str> = head.trim_end().split("\r\n").collect();
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"))
}

async fn serve(
    mut client: TcpStream,
    upstream: String,
    mut fault: Option<Fault>,
    outage: Option<Arc<Outage>>,
    stats: Arc<Mutex<Stats>>,
) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let method = request_line.split(' ').next().unwrap_or_default().to_string();
    let path = request_line.split(' ').nth(1).unwrap_or_default();
    if let Some(outage) = outage
        && path.contains(&outage.needle)
    {
        let mut seen = outage.seen.lock().unwrap();
        *seen += 1;
        if *seen > outage.pass && (outage.lasting || *seen == outage.pass + 1) {
            fault = Some(outage.fault);
        }
    }
    {
        let mut s = stats.lock().unwrap();
        s.requests += 1;
        s.log.push(format!("{method} {}", path.split('?').next().unwrap_or_default()));
        if let Some(f) = fault {
            *s.faults.entry(format!("{f:?}")).or_default() += 1;
        }
    }
    let status = |code: &str| {
        format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    };
    match fault {
        Some(Fault::Status503) => {
            let _ = client.write_all(&status("503 Service Unavailable")).await;
            return;
        }
        Some(Fault::Status500) => {
            let _ = client.write_all(&status("500 Internal Server Error")).await;
            return;
        }
        Some(Fault::Status429) => {
            let _ = client.write_all(&status("429 Too Many Requests")).await;
            return;
        }
        Some(Fault::ResetBefore) => return,
        // Longer than the tests' request timeout: the client gives up and retries, while this
        // request still reaches the server late, as a slow network delivers it.
        Some(Fault::Slow) => tokio::time::sleep(SLOW).await,
        Some(Fault::ResetAfter) | None => {}
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server.write_all(close_after(&head).as_bytes()).await.is_err()
        || server.write_all(&body).await.is_err()
    {
        return;
    }
    let mut answer = Vec::new();
    if server.read_to_end(&mut answer).await.is_err() {
        return;
    }
    if fault == Some(Fault::ResetAfter) {
        // The server has acted on the request; the client never learns the outcome.
        return;
    }
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}
