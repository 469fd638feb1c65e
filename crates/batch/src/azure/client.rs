//! The Batch REST calls the job manager makes: read its job, add the shard tasks. Requests
//! carry an Entra bearer token, the API version and a client request id; transient answers
//! (408, 429, 5xx, no answer) are retried with backoff, and a token is fetched again once on
//! 401.
//!
//! Adding tasks follows the service's rules for Add Task Collection: at most 100 tasks and
//! under 1 MB per call; results come per task and in any order; `servererror` items are resent
//! unchanged with the same ids, `clienterror` items are not, except "task exists", which means
//! an earlier attempt (a retried job manager, or a call whose answer was lost) added it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use crate::azure::error::is_transient_status;
use crate::azure::{API_VERSION, AccessToken, BATCH_RESOURCE, BatchError, Credential};

/// At most this many tasks per Add Task Collection call.
pub const MAX_TASKS_PER_CALL: usize = 100;
/// A call's body must be under 1 MB; keep a margin below it.
const MAX_BODY_BYTES: usize = 1_000_000;

/// Attempts of one request, with exponential backoff between them.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(15),
        }
    }
}

impl Retry {
    /// Calls `f` until it succeeds, fails for good (`false`), or the attempts are spent.
    pub(crate) fn run<T>(
        &self,
        mut f: impl FnMut() -> Result<T, (BatchError, bool)>,
    ) -> Result<T, BatchError> {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match f() {
                Ok(value) => return Ok(value),
                Err((error, transient)) => {
                    if !transient || attempt >= self.attempts {
                        return Err(error);
                    }
                    tracing::warn!(attempt, error = %error, "retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
            }
        }
    }
}

/// Why a request got no answer, without the URL reqwest repeats (the caller names it).
pub(crate) fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "no answer"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") }
}

/// How the client talks to Batch.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub api_version: String,
    /// Per request.
    pub timeout: Duration,
    pub retry: Retry,
    /// Rounds of resending `servererror` tasks before giving up.
    pub resend_rounds: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            timeout: Duration::from_secs(60),
            retry: Retry::default(),
            resend_rounds: 8,
        }
    }
}

/// What the job manager reads of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub id: String,
    /// When Batch created the job (microseconds since the epoch).
    pub created_us: i64,
    pub state: String,
}

/// What adding the tasks did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Added by this call.
    pub added: usize,
    /// Already in the job (added by an earlier attempt).
    pub existed: usize,
    /// Tasks resent after a `servererror` or a lost answer.
    pub resent: usize,
    /// Add Task Collection calls made.
    pub calls: usize,
}

/// A client of one Batch account, signed in as `credential`.
#[derive(Debug)]
pub struct BatchClient {
    base: String,
    options: ClientOptions,
    http: Client,
    credential: Credential,
    token: Mutex<Option<AccessToken>>,
    requests: AtomicU64,
}

/// A task's outcome in an Add Task Collection answer.
enum Outcome {
    Added,
    Existed,
    Resend,
    Refused(String),
}

impl BatchClient {
    /// `account_url` is `AZ_BATCH_ACCOUNT_URL` (`https://ACCOUNT.REGION.batch.azure.com`).
    pub fn new(
        account_url: &str,
        credential: Credential,
        options: ClientOptions,
    ) -> Result<Self, BatchError> {
        let parsed = url::Url::parse(account_url)
            .map_err(|e| BatchError::Invalid(format!("Batch account URL `{account_url}`: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(BatchError::Invalid(format!(
                "Batch account URL `{account_url}`: use https://ACCOUNT.REGION.batch.azure.com"
            )));
        }
        let http = Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| BatchError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: account_url.trim_end_matches('/').to_string(),
            options,
            http,
            credential,
            token: Mutex::new(None),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests sent to the Batch service (not counting the token's).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn bearer(&self, fresh: bool) -> Result<String, BatchError> {
        let mut slot = self.token.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let stale =
            slot.as_ref().is_none_or(|t| fresh || t.expires_within(Duration::from_secs(300)));
        if stale {
            *slot = Some(self.credential.token(&self.http, BATCH_RESOURCE, &self.options.retry)?);
        }
        Ok(slot.as_ref().map(|t| t.secret.clone()).unwrap_or_default())
    }

    /// One request, retried while the answer is transient; the parsed JSON body.
    fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BatchError> {
        let url = format!("{}{path}", self.base);
        let mut refreshed = false;
        self.options.retry.run(|| {
            let token = self.bearer(false).map_err(|e| {
                let transient = e.class() == batchscore_io::ErrorClass::Unavailable;
                (e, transient)
            })?;
            let mut request = match method {
                "GET" => self.http.get(&url),
                _ => self.http.post(&url),
            }
            .query(&[("api-version", self.options.api_version.as_str())])
            .bearer_auth(token)
            .header("client-request-id", request_id())
            .header("return-client-request-id", "true")
            .header("ocp-date", chrono::Utc::now().to_rfc2822().replace("+0000", "GMT"));
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json; odata=minimalmetadata")
                    .body(body.to_string());
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = request.send().map_err(|e| {
                let reason = transport_reason(&e);
                (BatchError::Transport { method, url: url.clone(), reason }, true)
            })?;
            let status = response.status().as_u16();
            if status == 401 && !refreshed {
                // A token revoked or rotated early: one fresh token, then the answer stands.
                refreshed = true;
                self.bearer(true).map_err(|e| (e, false))?;
                let error = status_error(method, &url, response);
                return Err((error, true));
            }
            if !(200..300).contains(&status) {
                let error = status_error(method, &url, response);
                return Err((error, is_transient_status(status)));
            }
            response.json::<Value>().map_err(|e| {
                (BatchError::Response { url: url.clone(), reason: format!("not JSON: {e}") }, true)
            })
        })
    }

    /// `GET /jobs/{job}`.
    pub fn job(&self, job_id: &str) -> Result<JobInfo, BatchError> {
        let path = format!("/jobs/{}", encode(job_id));
        let v = self.send("GET", &path, None)?;
        let bad = |reason: &str| BatchError::Response {
            url: format!("{}{path}", self.base),
            reason: reason.to_string(),
        };
        let created = v["creationTime"].as_str().ok_or_else(|| bad("no creationTime"))?;
        let created = chrono::DateTime::parse_from_rfc3339(created)
            .map_err(|e| bad(&format!("creationTime `{created}`: {e}")))?;
        Ok(JobInfo {
            id: v["id"].as_str().unwrap_or(job_id).to_string(),
            created_us: created.timestamp_micros(),
            state: v["state"].as_str().unwrap_or("").to_string(),
        })
    }

    /// Adds `tasks` (each with an `id`) to `job_id`, in calls within the service's limits.
    /// Tasks the job already has count as added; `servererror` tasks are resent; any other
    /// refusal is an error naming the tasks and the service's reasons, after every other task
    /// has been added.
    pub fn add_tasks(&self, job_id: &str, tasks: &[Value]) -> Result<AddReport, BatchError> {
        let path = format!("/jobs/{}/addtaskcollection", encode(job_id));
        let mut report = AddReport::default();
        let mut refused: Vec<(String, String)> = Vec::new();
        let mut pending: Vec<&Value> = tasks.iter().collect();
        let mut round = 0;
        let mut backoff = self.options.retry.initial_backoff;
        while !pending.is_empty() {
            round += 1;
            if round > self.options.resend_rounds {
                return Err(BatchError::ServerErrors {
                    job: job_id.to_string(),
                    ids: pending.iter().map(|t| task_id(t).to_string()).collect(),
                    attempts: self.options.resend_rounds,
                });
            }
            if round > 1 {
                report.resent += pending.len();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(self.options.retry.max_backoff);
            }
            let mut again = Vec::new();
            let mut queue = chunks(&pending)?;
            // Popped from the back: the first chunk goes first.
            queue.reverse();
            while let Some(chunk) = queue.pop() {
                let body = json!({"value": chunk});
                report.calls += 1;
                let answer = match self.send("POST", &path, Some(&body)) {
                    Ok(answer) => answer,
                    Err(BatchError::Status { status, code, .. })
                        if (status == 413 || code.as_deref() == Some("RequestBodyTooLarge"))
                            && chunk.len() > 1 =>
                    {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        queue.push(a.to_vec());
                        queue.push(b.to_vec());
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let outcomes = outcomes(&answer);
                for task in chunk {
                    let id = task_id(task);
                    match outcomes.get(&id.to_ascii_lowercase()) {
                        Some(Outcome::Added) => report.added += 1,
                        Some(Outcome::Existed) => report.existed += 1,
                        Some(Outcome::Refused(why)) => refused.push((id.to_string(), why.clone())),
                        // servererror, or no result for it: resend unchanged, same id.
                        Some(Outcome::Resend) | None => again.push(task),
                    }
                }
            }
            pending = again;
        }
        if !refused.is_empty() {
            return Err(BatchError::Refused { job: job_id.to_string(), refused });
        }
        Ok(report)
    }
}

fn task_id(task: &Value) -> &str {
    task["id"].as_str().unwrap_or("")
}

/// Splits tasks into calls of at most 100 tasks and under 1 MB each.
fn chunks<'a>(tasks: &[&'a Value]) -> Result<Vec<Vec<&'a Value>>, BatchError> {
    let mut out: Vec<Vec<&Value>> = Vec::new();
    let mut current: Vec<&Value> = Vec::new();
    // `{"value":[` ... `]}`
    let mut bytes = 12;
    for task in tasks {
        let size = task.to_string().len() + 1;
        if size + 12 > MAX_BODY_BYTES {
            return Err(BatchError::Invalid(format!(
                "task {} is {size} bytes: a task must fit in one call (1 MB)",
                task_id(task)
            )));
        }
        if current.len() == MAX_TASKS_PER_CALL || bytes + size > MAX_BODY_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 12;
        }
        bytes += size;
        current.push(task);
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// Each task's outcome by lower-cased id (Batch ids are case-insensitive).
fn outcomes(answer: &Value) -> HashMap<String, Outcome> {
    let mut map = HashMap::new();
    for item in answer["value"].as_array().into_iter().flatten() {
        let Some(id) = item["taskId"].as_str() else { continue };
        let code = item["error"]["code"].as_str().unwrap_or("");
        let outcome = match item["status"].as_str().unwrap_or("") {
            "success" => Outcome::Added,
            "clienterror" if code == "TaskExists" => Outcome::Existed,
            "clienterror" => {
                let message = item["error"]["message"]["value"]
                    .as_str()
                    .or_else(|| item["error"]["message"].as_str())
                    .unwrap_or("");
                Outcome::Refused(format!("{code}: {message}"))
            }
            _ => Outcome::Resend,
        };
        map.insert(id.to_ascii_lowercase(), outcome);
    }
    map
}

/// The service's error document (`{"code", "message": {"value"}}`) as an error.
fn status_error(method: &'static str, url: &str, response: Response) -> BatchError {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = doc["code"].as_str().map(str::to_string);
    let message = doc["message"]["value"]
        .as_str()
        .or_else(|| doc["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().next().unwrap_or("").chars().take(300).collect());
    let hint = match status {
        403 => " (does the identity hold the \"Azure Batch Job Submitter\" role on the account?)",
        _ => "",
    };
    BatchError::Status {
        method,
        url: url.to_string(),
        status,
        code,
        message: format!("{message}{hint}"),
    }
}

/// A path segment: job ids made by a schedule hold `:`, which paths allow; anything else
/// outside the unreserved set is escaped.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A random-enough GUID-shaped id that lets Batch support find one request.
fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    let hex = format!("{a:016x}{b:016x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_hold_at_most_100_tasks_and_under_a_megabyte() {
        let small: Vec<Value> = (0..250).map(|i| json!({"id": format!("t{i}")})).collect();
        let refs: Vec<&Value> = small.iter().collect();
        let sizes: Vec<usize> = chunks(&refs).unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        // 30 KB tasks: 33 fit under 1 MB.
        let big: Vec<Value> =
            (0..70).map(|i| json!({"id": format!("t{i}"), "pad": "x".repeat(30_000)})).collect();
        let refs: Vec<&Value> = big.iter().collect();
        for chunk in chunks(&refs).unwrap() {
            assert!(json!({"value": chunk}).to_string().len() < MAX_BODY_BYTES);
        }
        let huge = json!({"id": "h", "pad": "x".repeat(MAX_BODY_BYTES)});
        assert!(chunks(&[&huge]).is_err());
    }

    #[test]
    fn outcomes_read_ids_case_insensitively() {
        let answer = json!({"value": [
            {"status": "success", "taskId": "A"},
            {"status": "clienterror", "taskId": "b", "error": {"code": "TaskExists"}},
            {"status": "clienterror", "taskId": "c", "error": {"code": "InvalidPropertyValue", "message": {"value": "bad"}}},
            {"status": "servererror", "taskId": "d"},
        ]});
        let o = outcomes(&answer);
        assert!(matches!(o.get("a"), Some(Outcome::Added)));
        assert!(matches!(o.get("b"), Some(Outcome::Existed)));
        assert!(
            matches!(o.get("c"), Some(Outcome::Refused(why)) if why == "InvalidPropertyValue: bad")
        );
        assert!(matches!(o.get("d"), Some(Outcome::Resend)));
    }

    #[test]
    fn job_ids_of_schedules_stay_readable_in_paths() {
        assert_eq!(encode("hourly:job-1"), "hourly:job-1");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(request_id().len(), 36);
    }
}
