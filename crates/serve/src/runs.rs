//! Triggered runs: what `POST /v1/runs` starts and `GET /v1/runs/{id}` reports, built for Logic
//! Apps' asynchronous pattern and its retries.
//!
//! A request names its run: the `run_id` it gives, or one derived from the resolved settings
//! (input, registry, output, devices, sensors, window; `last` resolves to whole clock periods),
//! so a retried POST names the same run. The first POST of a run writes its normalised request
//! create-only to `OUTPUT/_requests/RUN_ID.json`; a later POST with other settings under the
//! same id is refused (409). Runs wait in a bounded queue and run one at a time by default on
//! worker threads, each through the engine's exactly-once commit, so a run that was already
//! complete is not executed again and one that was stopped resumes where it stopped.
//!
//! Nothing about a run lives only in memory: a restarted server that is asked about a run it
//! does not know reads the request record and the run's own state from storage, answers from
//! them, and queues the run again when it is not complete (a restart resumes, never repeats).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::http::StatusCode;
use batchscore_io::{EXIT_FAILED_KEYS, ErrorClass, Location};
use batchscore_scheduler::{
    Progress, RunSpec, RunState, RunStatus, SchedulerError, StoredPlanCheck, TimeWindow,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ApiError;
use crate::metrics::{Metrics, StateLabels};

/// Where request records live, under the output.
const REQUESTS: &str = "_requests";
/// Failed series listed in a run's summary; the count is always given.
const MAX_LISTED_FAILURES: usize = 100;
/// Runs kept in memory; past it, finished ones are forgotten (storage still answers for them).
const MAX_KNOWN_RUNS: usize = 1024;

/// The body of `POST /v1/runs`. Input, registry and output come from the server's settings,
/// never from a request, and device lists from files (`@file`) are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Devices: `0..1000`, `0..=999`, `3,7,9` or `all` (the server's setting when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
    /// Long layout: sensors to cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<String>,
    /// Window start (inclusive), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Window end (exclusive), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The last whole period before now (`1h`), instead of `from`/`to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// The run id; by default derived from the settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Why a request could not be turned into a run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    pub class: ErrorClass,
    pub message: String,
}

/// Resolves requests into runs: the binary's settings (flags > environment > config file >
/// defaults), with the request's fields in the place of flags.
pub trait RunLauncher: Send + Sync + std::fmt::Debug + 'static {
    fn spec(&self, request: &RunRequest) -> Result<RunSpec, LaunchError>;
}

/// Units and rows of the running run, for progress answers.
#[derive(Debug, Default)]
struct RunProgress {
    units_total: AtomicUsize,
    units_done: AtomicUsize,
    rows_total: AtomicU64,
    rows_done: AtomicU64,
}

impl Progress for RunProgress {
    fn start(&self, units: usize, rows: u64) {
        self.units_total.store(units, Ordering::Relaxed);
        self.rows_total.store(rows, Ordering::Relaxed);
    }

    fn unit_done(&self, rows: u64, _devices: usize, _skipped: bool) {
        self.units_done.fetch_add(1, Ordering::Relaxed);
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Queued,
    Running {
        since: DateTime<Utc>,
    },
    Complete(Value),
    Failed(Value),
    /// Stopped by a shutdown: the next server resumes it.
    Interrupted,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running { .. } => "running",
            Phase::Complete(_) => "complete",
            Phase::Failed(_) => "failed",
            Phase::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug)]
struct Record {
    spec: RunSpec,
    /// The normalised request (what a restarted server re-resolves).
    request: RunRequest,
    phase: Phase,
    progress: Arc<RunProgress>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, Record>,
    queue: VecDeque<String>,
    stopping: bool,
}

/// What `GET /v1/runs/{id}` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub status: StatusCode,
    pub body: Value,
}

/// The request record stored under `_requests/`.
#[derive(Debug, Serialize, Deserialize)]
struct RequestRecord {
    run_id: String,
    request: RunRequest,
    created_at: String,
}

/// The run queue, its workers, and every run this process has seen.
pub struct Runs {
    launcher: Arc<dyn RunLauncher>,
    output: Location,
    state: Mutex<State>,
    wake: Condvar,
    metrics: Arc<Metrics>,
    max_queued: usize,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("output", &self.output.url()).finish_non_exhaustive()
    }
}

fn time_text(us: i64) -> Option<String> {
    DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn launch_error(e: LaunchError) -> ApiError {
    match e.class {
        ErrorClass::Unavailable => ApiError::unavailable("storage_unavailable", e.message, 10),
        ErrorClass::Internal => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.message)
        }
        _ => ApiError::bad_request("invalid_run", e.message),
    }
}

fn scheduler_error(e: &SchedulerError) -> ApiError {
    let message = batchscore_io::error_chain(e);
    match e.class() {
        ErrorClass::Unavailable => ApiError::unavailable("storage_unavailable", message, 10),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message),
    }
}

/// The normalised request: the resolved selection and window, so that re-resolving it later
/// (a restarted server) gives the same run whatever `last` meant when it was first asked.
fn normalised(spec: &RunSpec, run_id: &str) -> RunRequest {
    let TimeWindow { from_us, to_us } = spec.window;
    RunRequest {
        devices: Some(spec.selection.canonical()),
        sensors: Some(spec.sensors.canonical()),
        from: from_us.and_then(time_text),
        to: to_us.and_then(time_text),
        last: None,
        run_id: Some(run_id.to_string()),
    }
}

/// The run id a request without one gets: a digest of what the run reads and writes.
fn derived_run_id(spec: &RunSpec) -> String {
    let identity = json!({
        "input": spec.input.url(), "registry": spec.registry.url(), "output": spec.output.url(),
        "devices": spec.selection.canonical(), "sensors": spec.sensors.canonical(),
        "window": spec.window, "profile": spec.output_spec,
    });
    let digest = Sha256::digest(identity.to_string().as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("req-{hex}")
}

/// The 200/500 body of a run whose `_SUCCESS` exists (callers check the state first).
fn finished_view(status: &RunStatus) -> (Phase, RunView) {
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    body["failed_count"] = json!(status.failed.len());
    if let Some(list) = body.get_mut("failed").and_then(Value::as_array_mut) {
        list.truncate(MAX_LISTED_FAILURES);
    }
    match status.state {
        RunState::Failed => {
            let failed = json!({
                "run_id": status.run_id, "state": "failed", "class": "failed_keys", "exit_code": EXIT_FAILED_KEYS,
                "error": format!("{} series failed, more than the run tolerates (max_failed)", status.totals.devices_failed),
                "summary": body,
            });
            (
                Phase::Failed(failed.clone()),
                RunView { status: StatusCode::INTERNAL_SERVER_ERROR, body: failed },
            )
        }
        _ => (Phase::Complete(body.clone()), RunView { status: StatusCode::OK, body }),
    }
}

fn failed_body(run_id: &str, class: ErrorClass, error: &str) -> Value {
    json!({"run_id": run_id, "state": "failed", "class": class.name(), "exit_code": class.exit_code(), "error": error})
}

impl Runs {
    pub fn new(
        launcher: Arc<dyn RunLauncher>,
        output: Location,
        metrics: Arc<Metrics>,
        max_queued: usize,
    ) -> Self {
        Runs {
            launcher,
            output,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            metrics,
            max_queued,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `n` worker threads.
    pub fn start_workers(self: &Arc<Self>, n: usize) -> std::io::Result<Vec<JoinHandle<()>>> {
        (0..n.max(1))
            .map(|i| {
                let runs = self.clone();
                std::thread::Builder::new()
                    .name(format!("batchscore-run-{i}"))
                    .spawn(move || runs.work())
            })
            .collect()
    }

    /// Stops the workers after their current run (which the caller interrupts by cancelling
    /// the runs' storage); queued runs stay recorded in storage and resume on the next start.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    /// Sets the state gauges (called before metrics are rendered).
    pub fn update_metrics(&self) {
        let state = self.lock();
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for record in state.records.values() {
            *counts.entry(record.phase.name()).or_default() += 1;
        }
        for name in ["queued", "running", "complete", "failed", "interrupted"] {
            self.metrics
                .runs
                .get_or_create(&StateLabels { state: name.into() })
                .set(counts.get(name).copied().unwrap_or(0));
        }
        self.metrics.run_queue_depth.set(i64::try_from(state.queue.len()).unwrap_or(i64::MAX));
    }

    /// Starts (or finds) the run a request names; blocking (reads and writes storage).
    /// Returns the run id.
    pub fn submit(&self, request: RunRequest) -> Result<String, ApiError> {
        if request.devices.as_deref().is_some_and(|d| d.trim_start().starts_with('@')) {
            return Err(ApiError::bad_request(
                "invalid_run",
                "`devices` cannot name a file (@file) in a request",
            ));
        }
        let mut spec = self.launcher.spec(&request).map_err(launch_error)?;
        let run_id = request.run_id.clone().unwrap_or_else(|| derived_run_id(&spec));
        batchscore_scheduler::check_run_id(&run_id)
            .map_err(|e| ApiError::bad_request("invalid_run", e.to_string()))?;
        spec.run_id = Some(run_id.clone());
        let normal = normalised(&spec, &run_id);
        {
            let mut state = self.lock();
            let queue = state.queue.len();
            if let Some(record) = state.records.get_mut(&run_id) {
                if record.request != normal {
                    return Err(conflict(&run_id));
                }
                // Asking again for a run that failed (or was stopped) is the retry.
                if matches!(record.phase, Phase::Failed(_) | Phase::Interrupted) {
                    if queue >= self.max_queued {
                        return Err(Self::full(queue));
                    }
                    record.phase = Phase::Queued;
                    record.spec = spec;
                    state.queue.push_back(run_id.clone());
                    self.wake.notify_one();
                }
                return Ok(run_id);
            }
            self.has_room(&state)?;
        }
        self.check_existing_run(&spec, &run_id, &normal)?;
        let record = RequestRecord {
            run_id: run_id.clone(),
            request: normal.clone(),
            created_at: Utc::now().to_rfc3339(),
        };
        let path = format!("{REQUESTS}/{run_id}.json");
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let created = self
            .output
            .put_if_absent(&path, bytes::Bytes::from(bytes))
            .map_err(|e| scheduler_error(&SchedulerError::Io(e)))?;
        if !created {
            let stored = self.read_request(&run_id)?;
            if stored.is_some_and(|s| s.request != normal) {
                return Err(conflict(&run_id));
            }
        }
        let phase = match batchscore_scheduler::status(&self.output, &run_id) {
            Ok(status) if status.state != RunState::Incomplete => finished_view(&status).0,
            Ok(_) | Err(SchedulerError::RunNotFound { .. }) => Phase::Queued,
            Err(e) => return Err(scheduler_error(&e)),
        };
        self.insert(
            run_id.clone(),
            Record { spec, request: normal, phase, progress: Arc::default() },
        )?;
        Ok(run_id)
    }

    /// Refuses a run id whose run was not started for this request: one made by the CLI or
    /// another server, or one whose request record was damaged, planned with other settings.
    /// Answering with its state would report an unscored window as scored. A readable request
    /// record decides (it is this service's own word for what the run id stands for, and stays
    /// so when the registry is retrained later); without one, the run's own plan must agree
    /// with the request. Checked before the request record is written, so a refused request
    /// leaves nothing behind.
    fn check_existing_run(
        &self,
        spec: &RunSpec,
        run_id: &str,
        normal: &RunRequest,
    ) -> Result<(), ApiError> {
        if let Some(stored) = self.read_request(run_id)? {
            return match stored.request == *normal {
                true => Ok(()),
                false => Err(conflict(run_id)),
            };
        }
        let refused =
            |reason: String| ApiError::new(StatusCode::CONFLICT, "run_id_conflict", reason);
        match batchscore_scheduler::check_stored_plan(spec) {
            Ok(StoredPlanCheck::NoRun | StoredPlanCheck::Agrees) => Ok(()),
            Ok(StoredPlanCheck::NotComparable) => Err(refused(format!(
                "run `{run_id}` exists and holds no plan this server can compare with the \
                 request (an aggregation, or a run of an earlier build); use another run id"
            ))),
            Err(e @ SchedulerError::RunConflict { .. }) => {
                Err(refused(batchscore_io::error_chain(&e)))
            }
            Err(e @ SchedulerError::CorruptRecord { .. }) => Err(refused(format!(
                "run `{run_id}` cannot be taken for this request: {}",
                batchscore_io::error_chain(&e)
            ))),
            Err(e) => Err(scheduler_error(&e)),
        }
    }

    /// Records a run unless another request got there first; queues it when it is to run.
    /// Queues it only while the queue has room, checked under the same lock as the insert:
    /// 200 simultaneous requests with `--max-queued-runs 3` queued 8 when the check came first.
    fn insert(&self, run_id: String, record: Record) -> Result<(), ApiError> {
        let mut state = self.lock();
        if state.records.contains_key(&run_id) {
            return Ok(());
        }
        let queued = matches!(record.phase, Phase::Queued);
        if queued {
            self.has_room(&state)?;
        }
        if state.records.len() >= MAX_KNOWN_RUNS {
            state.records.retain(|_, r| !matches!(r.phase, Phase::Complete(_) | Phase::Failed(_)));
        }
        state.records.insert(run_id.clone(), record);
        if queued {
            state.queue.push_back(run_id);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// 503 when `--max-queued-runs` runs wait already.
    fn has_room(&self, state: &State) -> Result<(), ApiError> {
        match state.queue.len() {
            n if n >= self.max_queued => Err(Self::full(n)),
            _ => Ok(()),
        }
    }

    fn full(waiting: usize) -> ApiError {
        ApiError::unavailable(
            "queue_full",
            format!("{waiting} runs are waiting already; retry later"),
            30,
        )
    }

    fn read_request(&self, run_id: &str) -> Result<Option<RequestRecord>, ApiError> {
        let bytes = self
            .output
            .get_opt(&format!("{REQUESTS}/{run_id}.json"))
            .map_err(|e| scheduler_error(&SchedulerError::Io(e)))?;
        // A damaged record is treated as none: the run's own files still say where it stands.
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Where run `run_id` stands; blocking when this process does not know it (reads storage).
    pub fn view(&self, run_id: &str) -> Result<RunView, ApiError> {
        if batchscore_scheduler::check_run_id(run_id).is_err() {
            return Err(ApiError::not_found(format!("no run `{run_id}`")));
        }
        if let Some(view) = self.known(run_id) {
            return Ok(view);
        }
        let request = self.read_request(run_id)?;
        let status = match batchscore_scheduler::status(&self.output, run_id) {
            Ok(status) => Some(status),
            Err(SchedulerError::RunNotFound { .. }) => None,
            Err(e) => return Err(scheduler_error(&e)),
        };
        match (request, status) {
            (_, Some(status)) if status.state != RunState::Incomplete => {
                Ok(finished_view(&status).1)
            }
            // Ours, not finished: a server stopped while it was queued or running. Resume it.
            (Some(record), _) => {
                let spec = self.launcher.spec(&record.request).map_err(launch_error)?;
                let spec = RunSpec { run_id: Some(run_id.to_string()), ..spec };
                tracing::info!(run_id, "resuming a run started before this server");
                self.insert(
                    run_id.to_string(),
                    Record {
                        spec,
                        request: record.request,
                        phase: Phase::Queued,
                        progress: Arc::default(),
                    },
                )?;
                Ok(self.known(run_id).unwrap_or_else(|| pending(run_id, "queued", json!({}))))
            }
            // Started elsewhere (a batch job): reported, not driven from here.
            (None, Some(status)) => Ok(pending(
                run_id,
                "incomplete",
                json!({"units": status.units, "units_committed": status.units_committed, "note": "this run was not started by this service; it completes when its shards commit"}),
            )),
            (None, None) => Err(ApiError::not_found(format!("no run `{run_id}`"))),
        }
    }

    fn known(&self, run_id: &str) -> Option<RunView> {
        let state = self.lock();
        let record = state.records.get(run_id)?;
        let p = &record.progress;
        let progress = json!({
            "units_total": p.units_total.load(Ordering::Relaxed), "units_done": p.units_done.load(Ordering::Relaxed),
            "rows_total": p.rows_total.load(Ordering::Relaxed), "rows_done": p.rows_done.load(Ordering::Relaxed),
        });
        Some(match &record.phase {
            Phase::Queued => {
                let position = state.queue.iter().position(|id| id == run_id).map_or(0, |p| p + 1);
                pending(run_id, "queued", json!({"position": position}))
            }
            Phase::Running { since } => pending(
                run_id,
                "running",
                json!({"started_at": since.to_rfc3339(), "progress": progress}),
            ),
            Phase::Interrupted => pending(
                run_id,
                "interrupted",
                json!({"note": "the server is stopping; the run resumes when it is asked for again"}),
            ),
            Phase::Complete(body) => RunView { status: StatusCode::OK, body: body.clone() },
            Phase::Failed(body) => {
                RunView { status: StatusCode::INTERNAL_SERVER_ERROR, body: body.clone() }
            }
        })
    }

    /// A worker: runs queued runs until stopped.
    fn work(&self) {
        loop {
            let (run_id, spec, progress) = {
                let mut state = self.lock();
                let run_id = loop {
                    if state.stopping {
                        return;
                    }
                    if let Some(id) = state.queue.pop_front() {
                        break id;
                    }
                    state =
                        self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                };
                let Some(record) = state.records.get_mut(&run_id) else { continue };
                record.phase = Phase::Running { since: Utc::now() };
                record.progress = Arc::default();
                (run_id, record.spec.clone(), record.progress.clone())
            };
            self.metrics.runs_started.inc();
            tracing::info!(run_id, "run started");
            let phase = match batchscore_scheduler::run(&spec, progress.as_ref()) {
                Ok(_) => match batchscore_scheduler::status(&self.output, &run_id) {
                    Ok(status) if status.state != RunState::Incomplete => finished_view(&status).0,
                    // One shard of one that returned without `_SUCCESS`: a defect, not success.
                    Ok(_) => Phase::Failed(failed_body(
                        &run_id,
                        ErrorClass::Internal,
                        "the run ended without committing _SUCCESS",
                    )),
                    Err(e) => Phase::Failed(failed_body(
                        &run_id,
                        e.class(),
                        &batchscore_io::error_chain(&e),
                    )),
                },
                Err(e) if e.class() == ErrorClass::Interrupted => Phase::Interrupted,
                Err(e) => {
                    Phase::Failed(failed_body(&run_id, e.class(), &batchscore_io::error_chain(&e)))
                }
            };
            tracing::info!(run_id, state = phase.name(), "run finished");
            if let Some(record) = self.lock().records.get_mut(&run_id) {
                record.phase = phase;
            }
        }
    }
}

fn pending(run_id: &str, state: &str, extra: Value) -> RunView {
    let mut body = json!({"run_id": run_id, "state": state});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    RunView { status: StatusCode::ACCEPTED, body }
}

fn conflict(run_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "run_id_conflict",
        format!(
            "run `{run_id}` was started with other settings (devices, sensors or window); use another run id"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchscore_scheduler::{
        DeviceSelection, InputColumns, MaxFailed, OutputSpec, SensorSelection, Shard,
    };

    fn spec(
        storage: &batchscore_io::Storage,
        devices: &str,
        window: (Option<i64>, Option<i64>),
    ) -> RunSpec {
        RunSpec {
            input: storage.open("memory://in").unwrap(),
            registry: storage.open("memory://models").unwrap(),
            output: storage.open("memory://out").unwrap(),
            run_id: None,
            selection: DeviceSelection::parse(devices).unwrap(),
            sensors: SensorSelection::All,
            window: TimeWindow::new(window.0, window.1).unwrap(),
            columns: InputColumns::default(),
            output_spec: OutputSpec::default(),
            threads: 1,
            shard: Shard::new(0, 1).unwrap(),
            max_failed: MaxFailed::Count(0),
            min_part_rows: 1,
            chunk_rows: batchscore_scheduler::DEFAULT_CHUNK_ROWS,
            max_part_rows: 10,
            settings: json!({}),
            transform: None,
            drift: true,
        }
    }

    #[test]
    fn run_ids_follow_what_a_run_reads_not_how_it_was_spelled() {
        let storage = batchscore_io::Storage::new().unwrap();
        let hour = 3_600_000_000;
        let a = derived_run_id(&spec(&storage, "0..10", (Some(0), Some(hour))));
        assert_eq!(a, derived_run_id(&spec(&storage, "0..=9", (Some(0), Some(hour)))));
        assert_eq!(
            a,
            derived_run_id(&spec(&storage, "0,1,2,3,4,5,6,7,8,9", (Some(0), Some(hour))))
        );
        assert_ne!(a, derived_run_id(&spec(&storage, "0..11", (Some(0), Some(hour)))));
        assert_ne!(a, derived_run_id(&spec(&storage, "0..10", (Some(0), Some(2 * hour)))));
        assert_ne!(a, derived_run_id(&spec(&storage, "0..10", (None, Some(hour)))));
        assert!(batchscore_scheduler::check_run_id(&a).is_ok(), "{a}");
    }

    #[test]
    fn a_normalised_request_pins_the_window() {
        let storage = batchscore_io::Storage::new().unwrap();
        let normal = normalised(&spec(&storage, "0..=9", (Some(0), Some(3_600_000_000))), "r");
        assert_eq!(normal.devices.as_deref(), Some("0..10"));
        assert_eq!(normal.sensors.as_deref(), Some("all"));
        assert_eq!(normal.from.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(normal.to.as_deref(), Some("1970-01-01T01:00:00Z"));
        assert_eq!((normal.last, normal.run_id.as_deref()), (None, Some("r")));
        let open = normalised(&spec(&storage, "all", (None, None)), "r");
        assert_eq!((open.from, open.to), (None, None));
        // Requests are refused with unknown fields (input, registry, output among them).
        let refused = serde_json::from_str::<RunRequest>(r#"{"output": "/elsewhere"}"#);
        assert!(refused.unwrap_err().to_string().contains("unknown field `output`"));
    }

    #[derive(Debug)]
    struct Refuses;

    impl RunLauncher for Refuses {
        fn spec(&self, _: &RunRequest) -> Result<RunSpec, LaunchError> {
            Err(LaunchError { class: ErrorClass::Usage, message: "not in this test".into() })
        }
    }

    /// Regression: with `--max-queued-runs 3` and 200 simultaneous `POST /v1/runs`, the queue
    /// reached 8 (the room was checked before, not with, the insert).
    #[test]
    fn the_queue_never_holds_more_than_its_bound_under_concurrency() {
        let storage = batchscore_io::Storage::new().unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let runs = Runs::new(Arc::new(Refuses), storage.open("memory://out").unwrap(), metrics, 3);
        let template = spec(&storage, "0..1", (None, None));
        let refused = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for i in 0..200 {
                let (runs, template, refused) = (&runs, &template, &refused);
                scope.spawn(move || {
                    let record = Record {
                        spec: template.clone(),
                        request: RunRequest { run_id: Some(format!("r{i}")), ..Default::default() },
                        phase: Phase::Queued,
                        progress: Arc::default(),
                    };
                    if runs.insert(format!("r{i}"), record).is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(runs.lock().queue.len(), 3);
        assert_eq!(refused.load(Ordering::Relaxed), 197);
    }
}
