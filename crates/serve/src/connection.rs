//! One accepted connection, served over HTTP/1.1 only, and never held open by a client that is
//! not using it.
//!
//! A connection is closed once it has gone `--header-timeout` without a byte from its client
//! while no request of it is in flight: a client that connects and says nothing, one that sits
//! idle between keep-alive requests, one that sent the 33-byte HTTP/2 preface and stopped (on a
//! server that spoke h2c, that held a connection for good, and 4,096 of them locked every client
//! out). hyper's own head timeout bounds a head that is being sent slowly, and the route-wide
//! request timeout a body. HTTP/2 with prior knowledge is not served: a preface is a malformed
//! HTTP/1 head, answered by closing the connection (Stream Analytics, Logic Apps and Container
//! Apps' ingress speak HTTP/1.1 to the container).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::app::Peer;

/// The largest unfinished request head a connection may buffer: with `--max-connections` it
/// bounds what unfinished heads take in all (1,024 × 32 KiB = 32 MiB at the defaults; hyper's
/// default was about 400 KiB each). Entra ID tokens are a few KiB.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;

/// File handles kept beside connections: storage requests, model files, the listener, logs.
const HANDLES_BESIDE_CONNECTIONS: u64 = 256;

/// Raises the process's open-file limit to its hard limit and returns the connections that fit
/// in it beside what storage needs: `max_connections`, or fewer (logged) when the limit is too
/// small. Under a limit of 256, idle connections used every handle and model loads failed with
/// "Too many open files".
pub(crate) fn fit_open_files(max_connections: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if let (Some(current), hard) = (limit.current, limit.maximum)
        && hard.is_none_or(|hard| hard > current)
    {
        let raised = Rlimit { current: hard, maximum: hard };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = hard,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let Some(soft) = soft else { return max_connections };
    let room =
        usize::try_from(soft.saturating_sub(HANDLES_BESIDE_CONNECTIONS)).unwrap_or(usize::MAX);
    if room >= max_connections {
        return max_connections;
    }
    let fitted = room.max(1);
    tracing::warn!(
        open_files = soft,
        max_connections,
        fitted,
        "the open-file limit leaves room for fewer connections than --max-connections: serving \
         at most {fitted} (raise `ulimit -n` to keep the setting)"
    );
    fitted
}

/// When the client last sent a byte, and how many of its requests are being answered.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    last_read_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn last_read(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }
}

/// A request being answered; dropped with its response future.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The answer is activity too: idle time counts from the end of the last request.
        self.0.touch();
    }
}

/// The socket, noting every read that brought bytes.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 server side every connection gets.
pub(crate) fn builder(
    header_timeout: Duration,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

/// Serves one connection until it ends, the client leaves it idle for `idle`, or `watcher`'s
/// shutdown drains it.
pub(crate) async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    idle: Duration,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let activity = Arc::new(Activity::new());
    let counted = activity.clone();
    // Each request knows its peer (forwarded headers are believed from trusted proxies only)
    // and counts as in flight until its response is ready.
    let service =
        tower::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            let in_flight = InFlight::new(&counted);
            let answer = app.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(in_flight);
                response
            }
        });
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    // Not `serve_connection_with_upgrades`: it ignores `http1_only` and would serve h2c.
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    let connection = watcher.watch(connection.into_owned());
    tokio::pin!(connection);
    let mut deadline = activity.last_read() + idle;
    loop {
        tokio::select! {
            // A connection's errors (a client that vanished, a malformed head) are its own.
            _ = &mut connection => return,
            () = tokio::time::sleep_until(deadline) => {
                let quiet_since = activity.last_read();
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    deadline = Instant::now() + idle;
                } else if quiet_since + idle <= Instant::now() {
                    // Dropping the connection closes the socket.
                    return;
                } else {
                    deadline = quiet_since + idle;
                }
            }
        }
    }
}
