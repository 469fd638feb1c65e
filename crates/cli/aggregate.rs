//! `batchscore aggregate`: its settings (flags > environment > `[aggregate]` > defaults, on the
//! shared resolution in `settings`), the job, and its summary.

use anyhow::Result;
use chrono::Utc;

use batchscore_features::{Closed, Stat};
use batchscore_io::Storage;
use batchscore_scheduler::{RunReport, Shard, TransformSpec, UnitTransform};
use chrono::DateTime;

use crate::cli::{AggregateArgs, ClosedArg, SummaryFormat};
use crate::config::ConfigFile;
use crate::printer::{Printer, thousands};
use crate::progress::Reporter;
use crate::settings::{aggregation, common, job_settings, part_rows, required, threads, usage};
use crate::usage::UsageError;

pub fn aggregate(
    args: &AggregateArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let spec = aggregate_spec(args, config, storage, Utc::now())?;
    let reporter = Reporter::new(crate::commands::interactive(printer), "aggregate");
    let report = batchscore_scheduler::transform(&spec, &reporter)?;
    match args.summary {
        SummaryFormat::Json => printer.out(&serde_json::to_string_pretty(&report.manifest)?),
        SummaryFormat::Text => printer.out(&render_summary(&report, spec.threads)),
    }
    Ok(0)
}

fn render_summary(r: &RunReport, threads: usize) -> String {
    let t = &r.manifest.totals;
    let readings: u64 = r.manifest.devices.iter().map(|d| d.rows).sum();
    let secs = r.elapsed.as_secs_f64();
    let state = if r.complete {
        "complete: _SUCCESS written"
    } else {
        "shard committed; waiting for other shards"
    };
    let what =
        if r.manifest.devices.iter().any(|d| d.sensor.is_some()) { "series  " } else { "devices " };
    let mut lines = vec![
        format!("batchscore aggregate {}  [{}]  ({state})", r.run_id, r.manifest.scope),
        format!("  output    {}/  (read it with --input {}/)", r.output_url, r.output_url),
        format!("  {what}  {}", thousands(t.devices_scored)),
        format!("  rows      {} readings into {} windows", thousands(readings), thousands(t.rows)),
        format!(
            "  units     {} of {} in the plan ({} already committed by an earlier attempt), {} part files",
            t.units, r.plan_units, r.units_skipped, t.parts
        ),
        format!(
            "  time      {secs:.2} s, {} windows written now on {threads} threads",
            thousands(r.rows_scored_now),
        ),
    ];
    if t.duplicate_rows > 0 {
        lines.insert(
            4,
            format!(
                "  note      {} readings repeat the (device, sensor, timestamp) of another",
                thousands(t.duplicate_rows)
            ),
        );
    }
    lines.extend(crate::commands::sensors_warning(r));
    lines.join("\n")
}

/// Resolves `batchscore aggregate`: flags > environment > `[aggregate]` > defaults.
fn aggregate_spec(
    args: &AggregateArgs,
    config: &ConfigFile,
    storage: &Storage,
    now: DateTime<Utc>,
) -> Result<TransformSpec, UsageError> {
    let c = common(&args.input, config, now)?;
    let output = required(
        args.output.clone(),
        "--output",
        "BATCHSCORE_AGGREGATE_OUTPUT",
        "(no config key: aggregated data is another dataset than the runs' output)",
    )?;
    let mut aggregate = config.aggregate.clone().unwrap_or_default();
    if let Some(every) = &args.every {
        aggregate.every = Some(every.clone());
    }
    if let Some(offset) = &args.offset {
        aggregate.offset = offset.clone();
    }
    if let Some(closed) = args.closed {
        aggregate.closed = match closed {
            ClosedArg::Left => Closed::Left,
            ClosedArg::Right => Closed::Right,
        };
    }
    if let Some(stats) = &args.stats {
        aggregate.stats = Stat::parse_list(stats).map_err(usage)?;
    }
    aggregate.pivot |= args.pivot;
    aggregate.dedupe &= !args.keep_duplicates;
    let aggregation = aggregation(&aggregate, &c.sensors)?;
    let shard =
        Shard::new(args.shard_index.unwrap_or(0), args.shard_count.unwrap_or(1)).map_err(usage)?;
    let threads = threads(args.input.threads.or(config.run.threads))?;
    let (min_part_rows, max_part_rows) = part_rows(args.min_part_rows, args.max_part_rows, config)?;
    let mut settings = c.raw;
    if let Some(map) = settings.as_object_mut() {
        map.remove("registry");
    }
    settings["aggregate"] = aggregation.describe();
    let settings =
        job_settings(settings, &output, shard, threads, (min_part_rows, max_part_rows), storage);
    Ok(TransformSpec {
        input: storage.open(&c.input).map_err(usage)?,
        output: storage.open(&output).map_err(usage)?,
        run_id: args.run_id.clone(),
        selection: c.selection,
        sensors: c.sensors,
        window: c.window,
        columns: c.columns,
        transform: std::sync::Arc::new(aggregation),
        threads,
        shard,
        min_part_rows,
        max_part_rows,
        settings,
    })
}
