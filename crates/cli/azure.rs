//! Azure Batch from the command line: `batch plan --target azure-batch` writes the job schedule
//! (or one-off job) JSON, and `batch fan-out` is the job manager those jobs run, which fixes the
//! window, stores the run's plan and adds the shard tasks.

use anyhow::{Context, Result};
use chrono::Utc;

use batchscore_batch::azure::{
    AppPackage, BatchClient, Cadence, ClientOptions, Credential, JobSchedule, OneOffJob,
    TaskTemplate, shard_task,
};
use batchscore_io::Storage;
use batchscore_scheduler::TimeWindow;

use crate::cli::{AzureTaskArgs, BatchPlanArgs, FanOutArgs};
use crate::config::ConfigFile;
use crate::printer::{Printer, thousands};
use crate::runs::{
    check_pass_through, parse_shard_command, pinned_run_args, run_id_of, time_text, write_out,
};
use crate::settings;
use crate::usage::UsageError;

/// Retries of the job manager: a node lost or a Batch outage while it adds tasks.
const MANAGER_RETRIES: u32 = 3;
/// Longest attempt of the job manager: it plans and adds tasks, it scores nothing.
const MANAGER_WALL_CLOCK_SECONDS: i64 = 15 * 60;

fn usage(e: impl std::fmt::Display) -> UsageError {
    UsageError(e.to_string())
}

/// A period flag (`1h`, `0s`) in seconds; `0s` is allowed where a delay may be none.
fn period_or_zero(text: &str) -> Result<i64, UsageError> {
    if text.trim().trim_end_matches(char::is_alphabetic) == "0" {
        return Ok(0);
    }
    settings::parse_period(text)
}

/// How tasks get and run batchscore, from the flags `plan` and `fan-out` share.
fn task_template(
    task: &AzureTaskArgs,
    image: Option<String>,
    retries: u32,
) -> Result<TaskTemplate, UsageError> {
    let app_packages = task
        .app_packages
        .iter()
        .map(|p| AppPackage::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    if image.is_some() && !app_packages.is_empty() {
        return Err(UsageError(
            "--image and --app-package: a container task runs the image's batchscore; give one"
                .into(),
        ));
    }
    let wall_clock_seconds =
        task.task_wall_clock.as_deref().map(settings::parse_period).transpose()?;
    Ok(TaskTemplate {
        app_packages,
        image,
        program: task.program.clone(),
        retries,
        wall_clock_seconds,
    })
}

/// The flags that say the same to `fan-out` as they said to `plan`.
fn task_flags(task: &AzureTaskArgs, image: Option<&str>) -> Vec<String> {
    let mut flags = Vec::new();
    for p in &task.app_packages {
        flags.extend(["--app-package".to_string(), p.clone()]);
    }
    let optional = [
        ("--image", image),
        ("--program", task.program.as_deref()),
        ("--task-wall-clock", task.task_wall_clock.as_deref()),
        ("--api-version", task.api_version.as_deref()),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            flags.extend([flag.to_string(), value.to_string()]);
        }
    }
    flags
}

/// `NAME=VALUE` pairs for `commonEnvironmentSettings`.
fn environment(args: &BatchPlanArgs) -> Result<Vec<(String, String)>, UsageError> {
    let mut env = Vec::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(UsageError(format!("--env `{pair}`: use NAME=VALUE")));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(UsageError(format!(
                "--env `{pair}`: a variable name is letters, digits and '_'"
            )));
        }
        env.push((name.to_string(), value.to_string()));
    }
    if let Some(id) = &args.client_id {
        env.push(("AZURE_CLIENT_ID".to_string(), id.clone()));
    }
    Ok(env)
}

/// `batch plan --target azure-batch`.
pub fn plan(args: &BatchPlanArgs, printer: Printer) -> Result<u8> {
    let pool = args
        .pool
        .clone()
        .ok_or_else(|| UsageError("azure-batch needs --pool: the pool the jobs run on".into()))?;
    if args.parallelism.is_some() {
        return Err(UsageError(
            "--parallelism: Azure Batch runs as many shards at once as the pool has task slots; \
             size the pool (or its autoscale formula) instead"
                .into(),
        )
        .into());
    }
    crate::runs::check_shards(args.shards)?;
    let template = task_template(&args.azure, args.image.clone(), args.retries)?;
    let env = environment(args)?;
    let now = Utc::now();
    let (text, next) = match &args.every {
        Some(every) => {
            let cadence =
                Cadence::new(settings::parse_period(every)?, period_or_zero(&args.delay)?)
                    .map_err(usage)?;
            // The shards' command for the next slot must parse now, not at 03:05 on every node.
            let (from, to) = cadence.window_for(cadence.first_run_after(now.timestamp_micros()));
            let window = TimeWindow::new(Some(from), Some(to)).map_err(usage)?;
            let sample =
                pinned_run_args(&args.run_args, &run_id_of(&args.name, Some(from)), &window);
            parse_shard_command(&sample, args.shards)?;
            let start_window = match &args.start_window {
                Some(text) => settings::parse_period(text)?,
                None => ((cadence.every_seconds() - cadence.delay_seconds()) / 2).max(60),
            };
            let job_wall_clock = match &args.job_wall_clock {
                Some(text) => settings::parse_period(text)?,
                None => cadence.every_seconds(),
            };
            let mut manager_args: Vec<String> =
                ["batch", "fan-out", "--name", &args.name].map(String::from).to_vec();
            manager_args.extend([
                "--shards".to_string(),
                args.shards.to_string(),
                "--every".to_string(),
                every.clone(),
                "--delay".to_string(),
                args.delay.clone(),
                "--retries".to_string(),
                args.retries.to_string(),
            ]);
            manager_args.extend(task_flags(&args.azure, args.image.as_deref()));
            manager_args.push("--".to_string());
            manager_args.extend(args.run_args.iter().cloned());
            let schedule = JobSchedule {
                id: args.name.clone(),
                pool,
                cadence,
                start_window_seconds: start_window,
                first_run_us: cadence.first_run_after(now.timestamp_micros()),
                job_wall_clock_seconds: job_wall_clock,
                template,
                manager_retries: MANAGER_RETRIES,
                manager_wall_clock_seconds: MANAGER_WALL_CLOCK_SECONDS,
                manager_args,
                env,
            };
            let json = schedule.to_json().map_err(usage)?;
            // A line a shell takes as it is (tests/azure_batch.rs runs it with the real CLI).
            let next = format!(
                "next: az batch job-schedule create --account-name ACCOUNT --json-file FILE \
                 # first job {}; each scores the interval before it",
                json["schedule"]["doNotRunUntil"].as_str().unwrap_or("")
            );
            (serde_json::to_string_pretty(&json)?, next)
        }
        None => {
            if args.from.is_none() && args.to.is_none() && args.last.is_none() {
                return Err(UsageError(
                    "azure-batch needs --every PERIOD (a job schedule) or --from/--to or --last \
                     (one run)"
                        .into(),
                )
                .into());
            }
            let window =
                settings::window(args.from.clone(), args.to.clone(), args.last.clone(), now)?;
            let run_id = run_id_of(&args.name, window.from_us);
            let run_args = pinned_run_args(&args.run_args, &run_id, &window);
            parse_shard_command(&run_args, args.shards)?;
            let tasks = (0..args.shards)
                .map(|i| shard_task(&template, &run_args, i, args.shards))
                .collect::<Result<Vec<_>, _>>()
                .map_err(usage)?;
            let job_wall_clock =
                args.job_wall_clock.as_deref().map(settings::parse_period).transpose()?;
            let job = OneOffJob {
                id: run_id.clone(),
                pool,
                env,
                job_wall_clock_seconds: job_wall_clock,
                tasks,
            };
            let json = job.to_json().map_err(usage)?;
            let next = format!(
                "next: jq .job FILE > job.json; jq .tasks FILE > tasks.json; \
                 az batch job create --json-file job.json; \
                 az batch task create --job-id {run_id} --json-file tasks.json; \
                 az batch job set --job-id {run_id} --on-all-tasks-complete terminatejob"
            );
            (serde_json::to_string_pretty(&json)?, next)
        }
    };
    write_out(args.out.as_deref(), &text, printer)?;
    printer.note(&next);
    Ok(0)
}

/// A variable Batch sets on its nodes.
fn batch_env(name: &'static str) -> Result<String, batchscore_batch::azure::BatchError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(batchscore_batch::azure::BatchError::MissingEnv { name })
}

/// `batch fan-out`: the job manager of an Azure Batch job.
pub fn fan_out(args: &FanOutArgs, printer: Printer) -> Result<u8> {
    check_pass_through(&args.run_args)?;
    crate::runs::check_shards(args.shards)?;
    let account = batch_env("AZ_BATCH_ACCOUNT_URL")?;
    let job_id = batch_env("AZ_BATCH_JOB_ID")?;
    let template = task_template(&args.task, args.image.clone(), args.retries)?;

    // The shards' settings, resolved as each shard will resolve them (their --config and
    // --storage-option included): the plan stored here is the one they check against.
    let probe = parse_shard_command(&args.run_args, args.shards)?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config = ConfigFile::resolve(probe.config.as_deref(), !probe.no_config, &cwd)?;
    let options = settings::storage_options(&probe.storage_options, &config, std::env::vars())?;
    let storage = Storage::with_options(options)?;

    let credential = Credential::from_identity(&storage.options().azure_identity());
    tracing::info!(identity = %credential.describe(), account = %account, "signing in to Azure Batch");
    let mut client_options = ClientOptions::default();
    if let Some(v) = &args.task.api_version {
        client_options.api_version = v.clone();
    }
    let client = BatchClient::new(&account, credential, client_options)?;

    let window = fixed_window(args, &client, &job_id)?;
    let run_id = run_id_of(&args.name, window.from_us);
    let run_args = pinned_run_args(&args.run_args, &run_id, &window);
    let cli = parse_shard_command(&run_args, args.shards)?;
    let crate::cli::Command::Run(run) = &cli.command else {
        return Err(UsageError("the shards' command is not `run`".into()).into());
    };
    let spec = settings::run_spec(run, &config, &storage, Utc::now())?;
    let stored = batchscore_scheduler::store_plan(&spec)?;

    let tasks = (0..args.shards)
        .map(|i| shard_task(&template, &run_args, i, args.shards))
        .collect::<Result<Vec<_>, _>>()?;
    let report = client.add_tasks(&job_id, &tasks)?;
    let span = |us: Option<i64>| us.map_or("-".to_string(), time_text);
    printer.out(&format!(
        "fan-out {job_id}: run {run_id}, window {} to {}\n  plan      {} units, {} rows ({})\n  \
         output    {}/\n  tasks     {} shards: {} added, {} already in the job, {} resent; \
         {} calls, {} requests to Batch",
        span(window.from_us),
        span(window.to_us),
        stored.units,
        thousands(stored.rows),
        if stored.existed { "stored by an earlier attempt" } else { "stored now" },
        stored.output_url,
        args.shards,
        report.added,
        report.existed,
        report.resent,
        report.calls,
        client.requests(),
    ));
    Ok(0)
}

/// The window of this job: given (`--from/--to`), or the last whole interval before the job's
/// creation time (asked of Batch, or `--scheduled-time`).
fn fixed_window(args: &FanOutArgs, client: &BatchClient, job_id: &str) -> Result<TimeWindow> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        return Ok(settings::window(Some(from.clone()), Some(to.clone()), None, Utc::now())?);
    }
    let every = args
        .every
        .as_deref()
        .ok_or_else(|| UsageError("fan-out needs --every or --from/--to".into()))?;
    let cadence = Cadence::new(settings::parse_period(every)?, period_or_zero(&args.delay)?)
        .map_err(usage)?;
    let created = match &args.scheduled_time {
        Some(t) => settings::parse_time(t)?.timestamp_micros(),
        None => {
            let job = client.job(job_id)?;
            tracing::info!(job = %job.id, state = %job.state, "job read");
            job.created_us
        }
    };
    let (from, to) = cadence.window_for(created);
    Ok(TimeWindow::new(Some(from), Some(to)).map_err(usage)?)
}
