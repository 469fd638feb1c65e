//! The JSON Azure Batch reads: a job schedule whose job manager task runs `batch fan-out`, a
//! one-off job with its task collection, and the shard tasks themselves. Field names and
//! semantics are those of the Batch REST API (`BatchJobSchedule`, `BatchJobSpecification`,
//! `BatchJobManagerTask`, `BatchTaskCreateOptions`), so the output goes to
//! `az batch job-schedule create --json-file`, `az batch job create --json-file` and
//! `az batch task create --json-file` unchanged.

use serde_json::{Map, Value, json};

use crate::azure::{BatchError, Cadence};

/// An application package the tasks run batchscore from (`--app-package batchscore:1.4.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPackage {
    pub id: String,
    /// `None`: the application's default version.
    pub version: Option<String>,
}

impl AppPackage {
    /// `ID` or `ID:VERSION`.
    pub fn parse(text: &str) -> Result<Self, BatchError> {
        let (id, version) = match text.split_once(':') {
            Some((id, version)) => (id, Some(version.to_string())),
            None => (text, None),
        };
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !word(id) || !version.as_deref().is_none_or(word) {
            return Err(BatchError::Invalid(format!(
                "application package `{text}`: use ID or ID:VERSION (letters, digits, '-', '_', '.')"
            )));
        }
        Ok(Self { id: id.to_string(), version })
    }

    /// The variable holding the package's directory on a Linux node: the id and version in
    /// lower case with every other character as `_` (`AZ_BATCH_APP_PACKAGE_batchscore_1_4_0`).
    pub fn env_var(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .collect()
        };
        match &self.version {
            Some(v) => format!("AZ_BATCH_APP_PACKAGE_{}_{}", clean(&self.id), clean(v)),
            None => format!("AZ_BATCH_APP_PACKAGE_{}", clean(&self.id)),
        }
    }

    fn reference(&self) -> Value {
        let mut r = json!({"applicationId": self.id});
        if let Some(v) = &self.version {
            r["version"] = json!(v);
        }
        r
    }

    /// `ID[:VERSION]`, as [`AppPackage::parse`] reads it.
    pub fn spec(&self) -> String {
        match &self.version {
            Some(v) => format!("{}:{v}", self.id),
            None => self.id.clone(),
        }
    }
}

/// How every task of the job (the job manager and the shards) gets and runs batchscore.
#[derive(Debug, Clone, Default)]
pub struct TaskTemplate {
    /// Packages deployed to the node; the first one holds the `batchscore` binary.
    pub app_packages: Vec<AppPackage>,
    /// A container image with `batchscore` on its PATH (the pool must be a container pool).
    pub image: Option<String>,
    /// The program to run, when neither of the above says (default `batchscore`, on PATH).
    pub program: Option<String>,
    /// Retries of a task that exits nonzero (Batch's `maxTaskRetryCount`).
    pub retries: u32,
    /// Longest run of one attempt (`maxWallClockTime`); `None`: unbounded.
    pub wall_clock_seconds: Option<i64>,
}

/// Characters Batch's word splitting and `sh` pass through unchanged: an argument made of
/// them needs no quoting, so what the shard receives is what was planned.
fn is_plain_word(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_graphic() && !b"'\"`\\".contains(&b))
}

impl TaskTemplate {
    /// The program as shell text inside `sh -c '...'`.
    fn program(&self) -> Result<String, BatchError> {
        if let Some(program) = &self.program {
            if !is_plain_word(program) {
                return Err(BatchError::Invalid(format!(
                    "program `{program}`: no spaces, quotes or backslashes"
                )));
            }
            return Ok(program.clone());
        }
        Ok(match (&self.image, self.app_packages.first()) {
            (None, Some(package)) => format!("\"${}/batchscore\"", package.env_var()),
            _ => "batchscore".to_string(),
        })
    }

    /// `/bin/sh -c 'exec PROGRAM "$@"' batchscore ARGS...`: Batch runs no shell of its own, the
    /// shell only finds the program (an application package's directory is a variable), and the
    /// arguments reach batchscore as the words given.
    pub fn command_line(&self, args: &[String]) -> Result<String, BatchError> {
        if let Some(bad) = args.iter().find(|a| !is_plain_word(a)) {
            return Err(BatchError::Invalid(format!(
                "argument `{bad}`: Azure Batch splits command lines without a shell, so task \
                 arguments cannot hold spaces, quotes or backslashes; put such a value in a \
                 config file (--config) or an environment setting (--env)"
            )));
        }
        Ok(format!("/bin/sh -c 'exec {} \"$@\"' batchscore {}", self.program()?, args.join(" ")))
    }

    /// The fields every task of the job shares.
    fn common(&self, task: &mut Map<String, Value>) {
        if !self.app_packages.is_empty() {
            task.insert(
                "applicationPackageReferences".into(),
                self.app_packages.iter().map(AppPackage::reference).collect(),
            );
        }
        if let Some(image) = &self.image {
            task.insert(
                "containerSettings".into(),
                json!({"imageName": image, "containerRunOptions": "--rm",
                       "workingDirectory": "taskWorkingDirectory"}),
            );
        }
        // One pool-wide non-admin user: the same file permissions on every attempt and node.
        task.insert(
            "userIdentity".into(),
            json!({"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}),
        );
    }

    fn constraints(&self, retention: &str) -> Value {
        let mut c = json!({"maxTaskRetryCount": self.retries, "retentionTime": retention});
        if let Some(s) = self.wall_clock_seconds {
            c["maxWallClockTime"] = json!(iso_duration(s));
        }
        c
    }
}

/// An ISO 8601 duration as Batch writes them (`PT1H`, `PT1H30M`, `P1D`).
pub fn iso_duration(seconds: i64) -> String {
    if seconds > 0 && seconds % 86_400 == 0 {
        return format!("P{}D", seconds / 86_400);
    }
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || (h == 0 && m == 0) {
        out.push_str(&format!("{s}S"));
    }
    out
}

/// A shard task's id: stable across job manager attempts, so a resend adds nothing twice, and
/// the name of the shard's manifest in the run (`shard-00007-of-00032`).
pub fn shard_task_id(index: u32, count: u32) -> String {
    format!("shard-{index:05}-of-{count:05}")
}

/// Exit code 2 (usage: every shard would fail alike) ends the job once its retries are spent;
/// every other failure, including a task that could not start, leaves the other shards
/// running. Batch's default for nonzero codes is to terminate the job, so each case is
/// spelled out.
fn exit_conditions() -> Value {
    json!({
        "exitCodes": [{"code": 2, "exitOptions": {"jobAction": "terminate"}}],
        "preProcessingError": {"jobAction": "none"},
        "fileUploadError": {"jobAction": "none"},
        "default": {"jobAction": "none"},
    })
}

/// Shard `index` of `count` of the run `run_args` describe (every flag already pinned: run id,
/// window). The shard's index and count travel as environment settings, which `batchscore
/// run` reads (`BATCHSCORE_SHARD_INDEX`, `BATCHSCORE_SHARD_COUNT`).
pub fn shard_task(
    template: &TaskTemplate,
    run_args: &[String],
    index: u32,
    count: u32,
) -> Result<Value, BatchError> {
    let mut args = vec!["run".to_string()];
    args.extend(run_args.iter().cloned());
    let mut task = Map::new();
    task.insert("id".into(), json!(shard_task_id(index, count)));
    task.insert("displayName".into(), json!(format!("batchscore shard {index} of {count}")));
    task.insert("commandLine".into(), json!(template.command_line(&args)?));
    task.insert(
        "environmentSettings".into(),
        json!([
            {"name": "BATCHSCORE_SHARD_INDEX", "value": index.to_string()},
            {"name": "BATCHSCORE_SHARD_COUNT", "value": count.to_string()},
        ]),
    );
    task.insert("constraints".into(), template.constraints("P7D"));
    task.insert("exitConditions".into(), exit_conditions());
    template.common(&mut task);
    Ok(Value::Object(task))
}

/// The parts of a job every run of batchscore has: the pool, the environment the tasks share,
/// the end when all tasks complete, and a bound on its length.
fn job_specification(
    pool: &str,
    env: &[(String, String)],
    wall_clock_seconds: Option<i64>,
    on_all_tasks_complete: &str,
) -> Map<String, Value> {
    let mut job = Map::new();
    job.insert("poolInfo".into(), json!({"poolId": pool}));
    job.insert("onAllTasksComplete".into(), json!(on_all_tasks_complete));
    job.insert("onTaskFailure".into(), json!("performexitoptionsjobaction"));
    let mut constraints = json!({"maxTaskRetryCount": 0});
    if let Some(s) = wall_clock_seconds {
        constraints["maxWallClockTime"] = json!(iso_duration(s));
    }
    job.insert("constraints".into(), constraints);
    if !env.is_empty() {
        job.insert(
            "commonEnvironmentSettings".into(),
            env.iter().map(|(name, value)| json!({"name": name, "value": value})).collect(),
        );
    }
    job
}

/// A Batch id: letters, digits, `-`, `_`, at most 64 characters.
fn check_id(what: &str, id: &str) -> Result<(), BatchError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BatchError::Invalid(format!(
            "{what} `{id}`: Azure Batch ids are 1-64 letters, digits, '-' and '_'"
        )))
    }
}

/// An hourly (or any interval) job schedule on an existing pool whose job manager runs
/// `batch fan-out`.
#[derive(Debug, Clone)]
pub struct JobSchedule {
    pub id: String,
    pub pool: String,
    pub cadence: Cadence,
    /// How late a job may start (`startWindow`) before its slot is skipped.
    pub start_window_seconds: i64,
    /// The first job's time (`doNotRunUntil`), microseconds since the epoch.
    pub first_run_us: i64,
    /// Longest a job runs before Batch ends it; at most the interval, so one slow run cannot
    /// make the next slots go missing.
    pub job_wall_clock_seconds: i64,
    pub template: TaskTemplate,
    /// Job manager: retries and its longest attempt.
    pub manager_retries: u32,
    pub manager_wall_clock_seconds: i64,
    /// `batch fan-out ...`: the job manager's arguments.
    pub manager_args: Vec<String>,
    /// Environment every task of every job gets (`commonEnvironmentSettings`).
    pub env: Vec<(String, String)>,
}

impl JobSchedule {
    /// The `POST /jobschedules` body.
    pub fn to_json(&self) -> Result<Value, BatchError> {
        check_id("job schedule id", &self.id)?;
        self.cadence.check_start_window(self.start_window_seconds)?;
        if self.job_wall_clock_seconds > self.cadence.every_seconds() {
            return Err(BatchError::Invalid(format!(
                "a job wall clock of {} s is longer than the interval: a slow run would make the \
                 next slots go missing (a schedule runs one job at a time)",
                self.job_wall_clock_seconds
            )));
        }
        let first = chrono::DateTime::from_timestamp_micros(self.first_run_us)
            .ok_or_else(|| BatchError::Invalid("first run time out of range".into()))?;
        let mut manager = Map::new();
        manager.insert("id".into(), json!("fan-out"));
        manager.insert("displayName".into(), json!("batchscore fan-out: plan and add shard tasks"));
        manager
            .insert("commandLine".into(), json!(self.template.command_line(&self.manager_args)?));
        let manager_template = TaskTemplate {
            retries: self.manager_retries,
            wall_clock_seconds: Some(self.manager_wall_clock_seconds),
            ..self.template.clone()
        };
        manager.insert("constraints".into(), manager_template.constraints("P1D"));
        // The job ends when its shards do (onAllTasksComplete), not when the manager exits.
        manager.insert("killJobOnCompletion".into(), json!(false));
        // The manager only adds tasks: it must not keep a node from shards.
        manager.insert("runExclusive".into(), json!(false));
        manager.insert("requiredSlots".into(), json!(1));
        self.template.common(&mut manager);
        let mut job = job_specification(
            &self.pool,
            &self.env,
            Some(self.job_wall_clock_seconds),
            "terminatejob",
        );
        job.insert("displayName".into(), json!(format!("batchscore {}", self.id)));
        job.insert("jobManagerTask".into(), Value::Object(manager));
        Ok(json!({
            "id": self.id,
            "displayName": format!("batchscore {} every {}", self.id, iso_duration(self.cadence.every_seconds())),
            "schedule": {
                "doNotRunUntil": first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "startWindow": iso_duration(self.start_window_seconds),
                "recurrenceInterval": iso_duration(self.cadence.every_seconds()),
            },
            "jobSpecification": Value::Object(job),
        }))
    }
}

/// One run as a job and its task collection, for a run outside the schedule (a backfill, or
/// finishing an interval whose job was cut off).
#[derive(Debug, Clone)]
pub struct OneOffJob {
    pub id: String,
    pub pool: String,
    pub env: Vec<(String, String)>,
    pub job_wall_clock_seconds: Option<i64>,
    pub tasks: Vec<Value>,
}

impl OneOffJob {
    /// `{"job": POST /jobs body, "tasks": [task, ...]}`. `tasks` is the JSON array that
    /// `az batch task create --json-file` takes as a collection (it adds them 100 a call,
    /// through addtaskcollection); the REST body's `{"value": [...]}` wrapper would be taken
    /// as one task without an id. The job is created with `onAllTasksComplete: noaction`
    /// because a job without tasks counts as complete; switch it to `terminatejob` once the
    /// tasks are in.
    pub fn to_json(&self) -> Result<Value, BatchError> {
        check_id("job id", &self.id)?;
        let mut job =
            job_specification(&self.pool, &self.env, self.job_wall_clock_seconds, "noaction");
        job.insert("id".into(), json!(self.id));
        job.insert("displayName".into(), json!(format!("batchscore {}", self.id)));
        Ok(json!({"job": Value::Object(job), "tasks": self.tasks}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> TaskTemplate {
        TaskTemplate {
            app_packages: vec![AppPackage::parse("batchscore:1.4.0").unwrap()],
            retries: 3,
            wall_clock_seconds: Some(3000),
            ..TaskTemplate::default()
        }
    }

    #[test]
    fn packages_name_their_linux_variable() {
        let p = AppPackage::parse("Batch-Score:1.4.0").unwrap();
        assert_eq!(p.env_var(), "AZ_BATCH_APP_PACKAGE_batch_score_1_4_0");
        assert_eq!(AppPackage::parse("bs").unwrap().env_var(), "AZ_BATCH_APP_PACKAGE_bs");
        for bad in ["", ":1", "a b", "x:", "a:b c"] {
            assert!(AppPackage::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shard_tasks_pass_words_unchanged_and_refuse_what_a_split_would_change() {
        let args = vec!["--input".to_string(), "az://c/in".to_string()];
        let task = shard_task(&template(), &args, 7, 32).unwrap();
        assert_eq!(task["id"], "shard-00007-of-00032");
        assert_eq!(
            task["commandLine"],
            "/bin/sh -c 'exec \"$AZ_BATCH_APP_PACKAGE_batchscore_1_4_0/batchscore\" \"$@\"' \
             batchscore run --input az://c/in"
        );
        assert_eq!(task["environmentSettings"][0]["value"], "7");
        assert_eq!(task["constraints"]["maxWallClockTime"], "PT50M");
        assert_eq!(task["exitConditions"]["default"]["jobAction"], "none");
        for bad in ["a b", "it's", "x\"y", "back\\slash", ""] {
            let args = vec![bad.to_string()];
            assert!(shard_task(&template(), &args, 0, 1).is_err(), "{bad:?}");
        }
        let image = TaskTemplate { image: Some("acr.io/bs:1".into()), ..TaskTemplate::default() };
        let task = shard_task(&image, &[], 0, 1).unwrap();
        assert_eq!(task["containerSettings"]["imageName"], "acr.io/bs:1");
        assert!(task["commandLine"].as_str().unwrap().contains("exec batchscore \"$@\""));
    }

    #[test]
    fn durations_read_as_batch_writes_them() {
        assert_eq!(iso_duration(3600), "PT1H");
        assert_eq!(iso_duration(5400), "PT1H30M");
        assert_eq!(iso_duration(86_400), "P1D");
        assert_eq!(iso_duration(45), "PT45S");
        assert_eq!(iso_duration(0), "PT0S");
    }

    #[test]
    fn a_schedule_never_lets_one_job_eat_the_next_slot() {
        let schedule = JobSchedule {
            id: "hourly".into(),
            pool: "pool".into(),
            cadence: Cadence::new(3600, 300).unwrap(),
            start_window_seconds: 1800,
            first_run_us: 1_700_000_000_000_000,
            job_wall_clock_seconds: 3600,
            template: template(),
            manager_retries: 3,
            manager_wall_clock_seconds: 900,
            manager_args: vec!["batch".into(), "fan-out".into()],
            env: vec![("AZURE_CLIENT_ID".into(), "cid".into())],
        };
        let v = schedule.to_json().unwrap();
        let job = &v["jobSpecification"];
        assert_eq!(job["onAllTasksComplete"], "terminatejob");
        assert_eq!(job["jobManagerTask"]["killJobOnCompletion"], false);
        assert_eq!(job["jobManagerTask"]["runExclusive"], false);
        assert_eq!(job["constraints"]["maxWallClockTime"], "PT1H");
        assert_eq!(v["schedule"]["recurrenceInterval"], "PT1H");
        assert_eq!(job["commonEnvironmentSettings"][0]["name"], "AZURE_CLIENT_ID");
        let long = JobSchedule { job_wall_clock_seconds: 7200, ..schedule.clone() };
        assert!(long.to_json().is_err());
        let late = JobSchedule { start_window_seconds: 3400, ..schedule.clone() };
        assert!(late.to_json().is_err());
        let bad_id = JobSchedule { id: "a b".into(), ..schedule };
        assert!(bad_id.to_json().is_err());
    }
}
