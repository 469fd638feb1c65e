//! The commands that span processes: `status` reads where a run of many shards stands, and
//! `batch plan` writes the job that starts those shards on an engine.

use anyhow::Result;
use chrono::Utc;

use batchscore_io::{Location, Storage};
use batchscore_scheduler::{RunState, TimeWindow};

use crate::cli::{BatchPlanArgs, Cli, StatusArgs, SummaryFormat, TargetArg};
use crate::commands::EXIT_PARTIAL;
use crate::config::ConfigFile;
use crate::printer::{Printer, thousands};
use crate::settings;
use crate::usage::UsageError;

/// Flags `batch plan` fixes for every shard, which the shards' own flags must not set.
const PINNED_RUN_FLAGS: [&str; 7] =
    ["--run-id", "--from", "--to", "--last", "--shard-index", "--shard-count", "--shard-index-env"];

/// Refuses run flags that `batch plan` or `batch fan-out` fix for every shard.
pub fn check_pass_through(run_args: &[String]) -> Result<(), UsageError> {
    if let Some(flag) = run_args.iter().find(|a| {
        PINNED_RUN_FLAGS.iter().any(|p| a.as_str() == *p || a.starts_with(&format!("{p}=")))
    }) {
        return Err(UsageError(format!(
            "{flag} is fixed by `batch plan` for every shard (use its --from/--to/--last and \
             --shards), not passed through"
        )));
    }
    Ok(())
}

fn at(us: i64) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A window bound as the shards' `--from`/`--to` take it (RFC 3339, UTC).
pub fn time_text(us: i64) -> String {
    at(us).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The run id of job `name` scoring the window starting at `from_us`: the same for every
/// attempt, and for a one-off job that finishes a scheduled run.
pub fn run_id_of(name: &str, from_us: Option<i64>) -> String {
    match from_us {
        Some(from) => format!("{name}-{}", at(from).format("%Y%m%dT%H%M%SZ")),
        None => name.to_string(),
    }
}

/// The shards' `batchscore run` flags: those passed through, then the pinned run id and window.
pub fn pinned_run_args(run_args: &[String], run_id: &str, window: &TimeWindow) -> Vec<String> {
    let mut args = run_args.to_vec();
    args.extend(["--run-id".to_string(), run_id.to_string()]);
    for (flag, us) in [("--from", window.from_us), ("--to", window.to_us)] {
        if let Some(us) = us {
            args.extend([flag.to_string(), time_text(us)]);
        }
    }
    args
}

/// The shards' command must parse as it will on every node: a typo fails here, not on 1,000
/// nodes at once. Returns the parsed command.
pub fn parse_shard_command(run_args: &[String], shards: u32) -> Result<Cli, UsageError> {
    let mut command: Vec<String> = ["batchscore", "run"].map(String::from).to_vec();
    command.extend(run_args.iter().cloned());
    command.extend(["--shard-count".to_string(), shards.to_string()]);
    <Cli as clap::Parser>::try_parse_from(&command).map_err(|e| {
        UsageError(format!("the shards' command `{}` does not parse: {e}", command.join(" ")))
    })
}

/// Refuses a shard count no run can have, before anything is built for it.
pub fn check_shards(shards: u32) -> Result<(), UsageError> {
    if shards == 0 {
        return Err(UsageError("--shards must be at least 1".into()));
    }
    batchscore_scheduler::Shard::new(0, shards)
        .map_err(|e| UsageError(format!("--shards: {e}")))?;
    Ok(())
}

/// `batchscore batch plan`: the job for one run as shards of an engine's array construct.
pub fn batch_plan(args: &BatchPlanArgs, printer: Printer) -> Result<u8> {
    use batchscore_batch::{Engine, JobSpec};
    check_pass_through(&args.run_args)?;
    check_shards(args.shards)?;
    if args.target == TargetArg::AzureBatch {
        return crate::azure::plan(args, printer);
    }
    let window =
        settings::window(args.from.clone(), args.to.clone(), args.last.clone(), Utc::now())?;
    let run_id = run_id_of(&args.name, window.from_us);
    let run_args = pinned_run_args(&args.run_args, &run_id, &window);
    parse_shard_command(&run_args, args.shards)?;
    let mut command: Vec<String> = ["batchscore", "run"].map(String::from).to_vec();
    command.extend(run_args);
    command.extend(["--shard-count".to_string(), args.shards.to_string()]);
    let engine = match args.target {
        TargetArg::Kubernetes => Engine::Kubernetes,
        TargetArg::Slurm => Engine::Slurm,
        TargetArg::AwsBatch | TargetArg::AzureBatch => Engine::AwsBatch,
    };
    let spec = JobSpec {
        name: args.name.clone(),
        shards: args.shards,
        parallelism: args.parallelism.unwrap_or(args.shards),
        retries: args.retries,
        command,
        image: args.image.clone(),
        queue: args.queue.clone(),
        job_definition: args.job_definition.clone(),
    };
    let text = batchscore_batch::template(engine, &spec).map_err(|e| UsageError(e.to_string()))?;
    write_out(args.out.as_deref(), &text, printer)?;
    Ok(0)
}

/// Writes a template to `out`, or to stdout.
pub fn write_out(out: Option<&str>, text: &str, printer: Printer) -> Result<(), UsageError> {
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| UsageError(format!("cannot write the template to {path}: {e}")))?;
            printer.note(&format!("wrote {path}"));
        }
        None => printer.out(text.trim_end()),
    }
    Ok(())
}

/// Exit code of `status` for a run that is not complete yet: EX_TEMPFAIL, "ask again later".
const EXIT_INCOMPLETE: u8 = 75;

/// Where runs live: `--output` (or BATCHSCORE_OUTPUT), else the config's `paths.output`.
pub fn output_location(
    flag: Option<&str>,
    config: &ConfigFile,
    storage: &Storage,
) -> Result<Location> {
    let output = flag
        .map(String::from)
        .or_else(|| config.location(&config.paths.output))
        .ok_or_else(|| {
            UsageError(
                "missing --output: pass it, set BATCHSCORE_OUTPUT, or set `paths.output` in the \
                 config file"
                    .into(),
            )
        })?;
    Ok(storage.open(&output).map_err(|e| UsageError(e.to_string()))?)
}

/// `batchscore status`: where a run stands, from its output alone.
pub fn status(
    args: &StatusArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let output = output_location(args.output.as_deref(), config, storage)?;
    let s = batchscore_scheduler::status(&output, &args.run_id)?;
    let code = match s.state {
        RunState::Complete => 0,
        RunState::Failed => EXIT_PARTIAL,
        RunState::Incomplete => EXIT_INCOMPLETE,
    };
    if args.summary == SummaryFormat::Json {
        printer.out(&serde_json::to_string_pretty(&s)?);
        return Ok(code);
    }
    let committed = s.shards.iter().filter(|sh| sh.committed).count();
    let state = match s.state {
        RunState::Complete => "complete".to_string(),
        RunState::Failed => "complete, with more failures than the run tolerates".to_string(),
        RunState::Incomplete => {
            format!("incomplete: {committed} of {} shards committed", s.shards.len())
        }
    };
    let t = &s.totals;
    let mut lines = vec![
        format!("run {}  ({state})", s.run_id),
        format!("  output    {}/", s.url),
        format!("  units     {} of {} committed", s.units_committed, s.units),
        format!(
            "  rows      {} scored, {} anomalies; {} series scored, {} failed, {} without input",
            thousands(t.rows),
            thousands(t.anomalies),
            thousands(t.devices_scored),
            thousands(t.devices_failed),
            thousands(t.devices_no_input)
        ),
    ];
    if let Some(drift) = &s.drift {
        let table = crate::printer::table_url(&s.url, &drift.table);
        lines.push(format!("  drift     {} ({table})", drift.line()));
    }
    let missing: Vec<&str> =
        s.shards.iter().filter(|sh| !sh.committed).map(|sh| sh.name.as_str()).collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).copied().collect();
        let more = missing.len().saturating_sub(shown.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        lines.push(format!("  waiting   {}{more}", shown.join(", ")));
    }
    for sh in s.shards.iter().filter(|sh| !sh.committed) {
        if let Some(e) = &sh.error {
            lines.push(format!(
                "  shard     {} last failed at {} ({}): {}",
                sh.name, e.at, e.class, e.error
            ));
        }
    }
    for d in s.failed.iter().take(10) {
        lines.push(format!(
            "  failed    {}: {}: {}",
            d.model_key(),
            d.stage.as_deref().unwrap_or("?"),
            d.reason.as_deref().unwrap_or("")
        ));
    }
    printer.out(&lines.join("\n"));
    Ok(code)
}
