//! The service's Prometheus metrics, in one explicit registry (no global recorder): request
//! counts by route and status, latency histograms, rows scored, runs by state, the model cache,
//! the run queue and overload rejections. Names follow Prometheus' conventions: one `batchscore_`
//! prefix, base units (`_seconds`, `_bytes`), `_total` on counters (added by the encoder), and no
//! per-device labels (unbounded cardinality).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets in seconds: from 250 µs (a cached one-row score) to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route template (`/v1/runs/{id}`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the service keeps, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub rows_scored: Counter,
    pub row_errors: Counter,
    pub overload_rejections: Family<RouteLabels, Counter>,
    pub auth_failures: Counter,
    pub model_cache_hits: Counter,
    pub model_cache_misses: Counter,
    pub model_cache_bytes: Gauge,
    pub model_cache_entries: Gauge,
    pub registry_reloads: Counter,
    pub score_in_flight: Gauge,
    pub runs: Family<StateLabels, Gauge>,
    pub runs_started: Counter,
    pub run_queue_depth: Gauge,
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("batchscore");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            rows_scored: Counter::default(),
            row_errors: Counter::default(),
            overload_rejections: Family::default(),
            auth_failures: Counter::default(),
            model_cache_hits: Counter::default(),
            model_cache_misses: Counter::default(),
            model_cache_bytes: Gauge::default(),
            model_cache_entries: Gauge::default(),
            registry_reloads: Counter::default(),
            score_in_flight: Gauge::default(),
            runs: Family::default(),
            runs_started: Counter::default(),
            run_queue_depth: Gauge::default(),
            registry: Registry::default(),
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&BuildLabels { version: version.to_string() }).set(1);
        registry.register("build_info", "The running build", build);
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response, by route",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register("rows_scored", "Rows scored by /v1/score", m.rows_scored.clone());
        registry.register(
            "score_row_errors",
            "Rows of /v1/score answered with an error entry (no model, missing feature)",
            m.row_errors.clone(),
        );
        registry.register(
            "overload_rejections",
            "Requests answered 503 because the service was at its limit, by route",
            m.overload_rejections.clone(),
        );
        registry.register("auth_failures", "Requests refused with 401", m.auth_failures.clone());
        registry.register(
            "model_cache_hits",
            "Model lookups served from the cache",
            m.model_cache_hits.clone(),
        );
        registry.register(
            "model_cache_misses",
            "Model lookups that read the registry",
            m.model_cache_misses.clone(),
        );
        registry.register_with_unit(
            "model_cache",
            "Model file bytes held in the cache",
            Unit::Bytes,
            m.model_cache_bytes.clone(),
        );
        registry.register(
            "model_cache_entries",
            "Models held in the cache",
            m.model_cache_entries.clone(),
        );
        registry.register(
            "registry_reloads",
            "Times a changed registry index was picked up",
            m.registry_reloads.clone(),
        );
        registry.register(
            "score_requests_in_flight",
            "Scoring requests being served",
            m.score_in_flight.clone(),
        );
        registry.register("runs", "Runs this process knows, by state", m.runs.clone());
        registry.register(
            "runs_started",
            "Runs executed by this process (resumptions included)",
            m.runs_started.clone(),
        );
        registry.register(
            "run_queue_depth",
            "Runs waiting for a worker",
            m.run_queue_depth.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one answered request.
    /// Counts one request. Every label takes its value from a fixed set (route templates,
    /// standard methods, status codes), so no client can grow the series: 2,000 requests with
    /// made-up 4 KB methods grew `/metrics` from 2 KB to 8 MB.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method_label(method).to_string(),
                status: status.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route: route.to_string() })
            .observe(seconds);
    }
}

/// A request method as a label: the standard ones, `other` for the rest.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] =
        ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    KNOWN.into_iter().find(|known| *known == method).unwrap_or("other")
}

#[cfg(test)]
mod label_tests {
    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(super::method_label("POST"), "POST");
        assert_eq!(super::method_label(&"X".repeat(4096)), "other");
        assert_eq!(super::method_label("post"), "other");
    }
}
