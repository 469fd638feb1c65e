//! Settings resolved once, in one place: flags > environment > config file > defaults.
//!
//! clap already merges flags with their environment variables (a flag wins), so each setting
//! here is `flag_or_env.or(config).unwrap_or(default)`, and the result is a validated spec of the
//! scheduler crate: nothing downstream sees a raw string.

use batchscore_detectors::{
    Contamination, IsolationForestParams, MaxFeatures, MaxSamples, PcaComponents, PcaParams,
};
use std::sync::Arc;
use std::time::Duration;

use batchscore_features::{AggregateConfig, Aggregation};
use batchscore_io::{RetrySettings, Storage, StorageOptions};
use batchscore_scheduler::{
    DeviceSelection, InputColumns, Layout, MaxFailed, OutputFormat, OutputProfile, OutputSpec,
    RunSpec, SensorSelection, Shard, TimeWindow, TrainParams, TrainSpec, Transform, sensor_order,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::json;

use crate::cli::{DetectorArg, FormatArg, InputArgs, LayoutChoice, ProfileArg, RunArgs, TrainArgs};
use crate::config::ConfigFile;

pub(crate) use crate::units::part_rows;
use crate::usage::UsageError;

pub(crate) fn usage(e: impl std::fmt::Display) -> UsageError {
    UsageError(e.to_string())
}

/// Default bounds on rows per work unit and part file.
/// Default rows read per training unit.
const DEFAULT_TRAIN_UNIT_ROWS: u64 = 500_000;

pub(crate) fn required(
    value: Option<String>,
    flag: &str,
    env: &str,
    key: &str,
) -> Result<String, UsageError> {
    value.ok_or_else(|| {
        UsageError(format!("missing {flag}: pass it, set {env}, or set `{key}` in the config file"))
    })
}

/// The largest `@file` device list read: 64 MiB (some ten million ids, one a line).
const MAX_DEVICE_LIST_BYTES: u64 = 64 << 20;

/// The device selection, reading `@file` from disk (at most [`MAX_DEVICE_LIST_BYTES`], so that
/// `@/dev/zero` or a wrong file is an error, not a process that grows until it is killed).
pub fn selection(text: Option<String>) -> Result<DeviceSelection, UsageError> {
    use std::io::Read;
    let text = text.unwrap_or_else(|| "all".into());
    let text = match text.strip_prefix('@') {
        Some(path) => {
            let cannot =
                |e: std::io::Error| UsageError(format!("cannot read device list {path}: {e}"));
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_DEVICE_LIST_BYTES + 1).read_to_end(&mut bytes))
                .map_err(cannot)?;
            if bytes.len() as u64 > MAX_DEVICE_LIST_BYTES {
                return Err(UsageError(format!(
                    "device list {path} is larger than {} MiB",
                    MAX_DEVICE_LIST_BYTES >> 20
                )));
            }
            String::from_utf8(bytes)
                .map_err(|_| UsageError(format!("device list {path} is not UTF-8 text")))?
        }
        None => text,
    };
    DeviceSelection::parse(&text).map_err(usage)
}

/// Parses RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, UsageError> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(dt.and_utc());
        }
    }
    if let Some(dt) =
        NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(dt.and_utc());
    }
    Err(UsageError(format!(
        "`{text}` is not a time: use RFC 3339 (2026-01-01T00:00:00Z), `2026-01-01 00:00:00` or `2026-01-01`"
    )))
}

/// The longest `--last` period: ten years. Longer periods reach back before any telemetry, and
/// a bound keeps the window arithmetic far from overflow.
const MAX_PERIOD_SECONDS: i64 = 3650 * 86_400;

/// Parses a period such as `90s`, `15m`, `1h` or `1d` into seconds (at most ten years).
pub fn parse_period(text: &str) -> Result<i64, UsageError> {
    let (n, unit) = number_and_unit(text);
    let n: i64 = n.parse().map_err(|_| UsageError(format!("`{text}` is not a period like 1h")))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(UsageError(format!("`{text}`: the unit must be s, m, h or d")));
        }
    };
    if n <= 0 {
        return Err(UsageError(format!("`{text}` must be positive")));
    }
    match n.checked_mul(seconds) {
        Some(total) if total <= MAX_PERIOD_SECONDS => Ok(total),
        _ => Err(UsageError(format!("`{text}` is longer than the longest period, 3650d"))),
    }
}

/// A count (`256`) or a fraction (`0.5`): scikit-learn's convention for `max_samples`,
/// `max_features` and (for PCA) `n_components`, told apart by a decimal point.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CountOrFraction {
    Count(usize),
    Fraction(f64),
}

fn count_or_fraction(name: &str, text: &str) -> Result<CountOrFraction, UsageError> {
    let bad = || UsageError(format!("{name} `{text}`: give a count (256) or a fraction (0.5)"));
    if text.contains('.') {
        text.parse().map(CountOrFraction::Fraction).map_err(|_| bad())
    } else {
        text.parse().map(CountOrFraction::Count).map_err(|_| bad())
    }
}

pub fn window(
    from: Option<String>,
    to: Option<String>,
    last: Option<String>,
    now: DateTime<Utc>,
) -> Result<TimeWindow, UsageError> {
    if let Some(last) = last {
        if from.is_some() || to.is_some() {
            return Err(UsageError("`last` cannot be combined with `from`/`to`".into()));
        }
        // The last whole period, aligned to the clock (e.g. 13:00-14:00 when run at 14:05), so
        // every retry within the next period selects the same rows and derives the same run id.
        let period = parse_period(&last)? * 1_000_000;
        let end = now.timestamp_micros().div_euclid(period) * period;
        return TimeWindow::new(Some(end - period), Some(end)).map_err(usage);
    }
    let from = from.map(|t| parse_time(&t)).transpose()?.map(|t| t.timestamp_micros());
    let to = to.map(|t| parse_time(&t)).transpose()?.map(|t| t.timestamp_micros());
    TimeWindow::new(from, to).map_err(usage)
}

/// Worker threads: 0 or unset means all cores.
pub fn threads(value: Option<usize>) -> Result<usize, UsageError> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    match value {
        None | Some(0) => Ok(available),
        Some(n) if n > 4096 => Err(UsageError(format!("--threads {n} is more than 4096"))),
        Some(n) => Ok(n),
    }
}

/// The input-side settings shared by run and train.
pub(crate) struct Common {
    pub(crate) input: String,
    /// Required by `run` and `train` ([`Common::registry`]), unused by `aggregate`.
    pub(crate) registry: Option<String>,
    pub(crate) selection: DeviceSelection,
    pub(crate) sensors: SensorSelection,
    pub(crate) window: TimeWindow,
    pub(crate) columns: InputColumns,
    pub(crate) raw: serde_json::Value,
}

pub(crate) fn common(
    args: &InputArgs,
    config: &ConfigFile,
    now: DateTime<Utc>,
) -> Result<Common, UsageError> {
    let input = required(
        args.input.clone().or_else(|| config.location(&config.paths.input)),
        "--input",
        "BATCHSCORE_INPUT",
        "paths.input",
    )?;
    let registry = args.registry.clone().or_else(|| config.location(&config.paths.registry));
    let devices = args.devices.clone().or_else(|| config.select.devices.clone());
    let selection = selection(devices.clone())?;
    let (from, to, last) = if args.from.is_some() || args.to.is_some() || args.last.is_some() {
        (args.from.clone(), args.to.clone(), args.last.clone())
    } else {
        (config.select.from.clone(), config.select.to.clone(), config.select.last.clone())
    };
    let window = window(from.clone(), to.clone(), last.clone(), now)?;
    let sensors = match args.sensors.as_ref().or(config.select.sensors.as_ref()) {
        Some(text) => SensorSelection::parse(text).map_err(usage)?,
        None => SensorSelection::All,
    };
    let mut columns = config.columns.clone().unwrap_or_default();
    if let Some(layout) = args.layout {
        columns.layout = match layout {
            LayoutChoice::Auto => Layout::Auto,
            LayoutChoice::Wide => Layout::Wide,
            LayoutChoice::Long => Layout::Long,
        };
    }
    let raw = json!({
        "input": input, "registry": registry, "devices": selection.canonical(),
        "sensors": sensors.canonical(), "from": from, "to": to, "last": last,
        "window_us": window, "columns": columns,
    });
    Ok(Common { input, registry, selection, sensors, window, columns, raw })
}

impl Common {
    fn registry(&self) -> Result<String, UsageError> {
        required(self.registry.clone(), "--registry", "BATCHSCORE_REGISTRY", "paths.registry")
    }
}

/// Splits `15m`, `16MiB` or `30` into the number and its unit.
fn number_and_unit(text: &str) -> (&str, &str) {
    let t = text.trim();
    t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()))
}

/// Parses a duration such as `250ms`, `30s`, `3m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, UsageError> {
    let (n, unit) = number_and_unit(text);
    let n: u64 =
        n.parse().map_err(|_| UsageError(format!("`{text}` is not a duration like 30s")))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(UsageError(format!("`{text}`: the unit must be ms, s, m or h"))),
    };
    Ok(Duration::from_millis(n.saturating_mul(millis)))
}

/// Parses a size such as `16MiB`, `512KiB`, `1GiB` or a number of bytes.
pub fn parse_size(text: &str) -> Result<usize, UsageError> {
    let (n, unit) = number_and_unit(text);
    let n: usize =
        n.parse().map_err(|_| UsageError(format!("`{text}` is not a size like 16MiB")))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(UsageError(format!("`{text}`: the unit must be B, KiB, MiB or GiB"))),
    };
    n.checked_mul(scale).ok_or_else(|| UsageError(format!("`{text}` is too large")))
}

/// Resolves storage options: `--storage-option` flags > environment (object_store's own
/// variable names) > the config file's `[storage]` > defaults.
pub fn storage_options(
    flags: &[String],
    config: &ConfigFile,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<StorageOptions, UsageError> {
    let s = &config.storage;
    let mut options = StorageOptions::default();
    for (key, value) in &s.options {
        let value = match value {
            toml::Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        options
            .set(key, value)
            .map_err(|e| UsageError(format!("config file [storage.options]: {e}")))?;
    }
    options.set_from_env(env);
    for flag in flags {
        // The flag is not echoed: a malformed one may hold a secret.
        let (key, value) = flag
            .split_once('=')
            .ok_or_else(|| UsageError("--storage-option: expected KEY=VALUE".into()))?;
        options.set(key, value).map_err(|e| UsageError(format!("--storage-option: {e}")))?;
    }
    let defaults = RetrySettings::default();
    let duration = |value: &Option<String>, default: Duration| {
        value.as_deref().map_or(Ok(default), parse_duration)
    };
    let retry = RetrySettings {
        max_retries: s.max_retries.unwrap_or(defaults.max_retries),
        timeout: duration(&s.retry_timeout, defaults.timeout)?,
        initial_backoff: duration(&s.initial_backoff, defaults.initial_backoff)?,
        max_backoff: duration(&s.max_backoff, defaults.max_backoff)?,
    };
    options.set_retry(retry).map_err(usage)?;
    if let Some(n) = s.max_concurrent_requests {
        options.set_max_concurrent_requests(n).map_err(usage)?;
    }
    if let Some(size) = &s.multipart_part_size {
        options.set_multipart_part_size(parse_size(size)?).map_err(usage)?;
    }
    Ok(options)
}

/// Where a shard's index (and count) came from.
const FROM_FLAGS: &str = "--shard-index/--shard-count (or BATCHSCORE_SHARD_INDEX/_COUNT)";

/// This process's shard, and where it came from. Index: `--shard-index` (or
/// `BATCHSCORE_SHARD_INDEX`), else the variable `--shard-index-env` names, else the engine's
/// own variable: Kubernetes Indexed Jobs `JOB_COMPLETION_INDEX`, AWS Batch array jobs
/// `AWS_BATCH_JOB_ARRAY_INDEX`, Slurm arrays `SLURM_ARRAY_TASK_ID` (less
/// `SLURM_ARRAY_TASK_MIN`), else 0. Count: `--shard-count` (or `BATCHSCORE_SHARD_COUNT`), else
/// the engine's (`AWS_BATCH_JOB_ARRAY_SIZE`, `SLURM_ARRAY_TASK_COUNT`; Kubernetes has none: the
/// Job's `completions` must be passed), else the config file, else 1.
fn shard(
    args: &RunArgs,
    config: &ConfigFile,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Shard, String), UsageError> {
    let number = |name: &str, value: String| -> Result<u32, UsageError> {
        value.trim().parse().map_err(|_| {
            UsageError(format!("{name}=`{value}` is not a shard number (0 to 4294967295)"))
        })
    };
    let var = |name: &str| -> Result<Option<u32>, UsageError> {
        env(name).map(|v| number(name, v)).transpose()
    };
    let named = args.shard_index_env.clone().or_else(|| config.run.shard_index_env.clone());
    // (index, count, source) from the engine's variables, if the process runs under one.
    let engine: Option<(u32, Option<u32>, &str)> = if let Some(i) = var("JOB_COMPLETION_INDEX")? {
        Some((i, None, "JOB_COMPLETION_INDEX (Kubernetes Indexed Job)"))
    } else if let Some(i) = var("AWS_BATCH_JOB_ARRAY_INDEX")? {
        Some((
            i,
            var("AWS_BATCH_JOB_ARRAY_SIZE")?,
            "AWS_BATCH_JOB_ARRAY_INDEX/_SIZE (AWS Batch array job)",
        ))
    } else if let Some(id) = var("SLURM_ARRAY_TASK_ID")? {
        let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let count = var("SLURM_ARRAY_TASK_COUNT")?;
        if let (Some(max), Some(count)) = (var("SLURM_ARRAY_TASK_MAX")?, count)
            && u64::from(max) + 1 != u64::from(min) + u64::from(count)
        {
            return Err(UsageError(format!(
                "the Slurm array holds {count} tasks from {min} to {max}: shards need a \
                 contiguous array such as --array=0-{}",
                count.saturating_sub(1)
            )));
        }
        let index = id.checked_sub(min).ok_or_else(|| {
            UsageError(format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"))
        })?;
        Some((index, count, "SLURM_ARRAY_TASK_ID/_COUNT (Slurm array)"))
    } else {
        None
    };
    let (index, index_from) = match (args.shard_index, &named, engine) {
        (Some(i), _, _) => (i, FROM_FLAGS.to_string()),
        (None, Some(name), _) => {
            let value = env(name)
                .ok_or_else(|| UsageError(format!("shard index variable {name} is not set")))?;
            (number(name, value)?, name.clone())
        }
        (None, None, Some((i, _, from))) => (i, from.to_string()),
        (None, None, None) => (0, "default".to_string()),
    };
    // The engine's count goes with the engine's index: it outranks the config file only when
    // the index came from the engine too.
    let from_engine = engine.is_some() && args.shard_index.is_none() && named.is_none();
    let engine_count = engine.and_then(|(_, count, _)| count);
    let count = args
        .shard_count
        .or(engine_count.filter(|_| from_engine))
        .or(config.run.shard_count)
        .or(engine_count);
    let count = match count {
        Some(n) => n,
        None if from_engine => {
            return Err(UsageError(format!(
                "{index_from} gives this process's shard index but not the shard count: pass \
                 --shard-count (or BATCHSCORE_SHARD_COUNT), e.g. the Job's completions"
            )));
        }
        None => 1,
    };
    let shard = Shard::new(index, count).map_err(usage)?;
    Ok((shard, index_from))
}

/// Resolves `batchscore run`.
pub fn run_spec(
    args: &RunArgs,
    config: &ConfigFile,
    storage: &Storage,
    now: DateTime<Utc>,
) -> Result<RunSpec, UsageError> {
    let c = common(&args.input, config, now)?;
    let registry = c.registry()?;
    let output = required(
        args.output.clone().or_else(|| config.location(&config.paths.output)),
        "--output",
        "BATCHSCORE_OUTPUT",
        "paths.output",
    )?;
    let (shard, shard_from) = shard(args, config, |name| std::env::var(name).ok())?;
    let max_failed = args
        .max_failed
        .clone()
        .or_else(|| config.run.max_failed.clone())
        .unwrap_or_else(|| "0".into());
    let max_failed = MaxFailed::parse(&max_failed).map_err(usage)?;
    let threads = threads(args.input.threads.or(config.run.threads))?;
    let (min_part_rows, max_part_rows) = part_rows(args.min_part_rows, args.max_part_rows, config)?;
    let output_spec = OutputSpec {
        profile: match args.profile {
            Some(ProfileArg::Scored) => OutputProfile::Scored,
            Some(ProfileArg::Reference) => OutputProfile::Reference,
            None => config.run.profile.unwrap_or_default(),
        },
        format: match args.output_format {
            Some(FormatArg::Parquet) => OutputFormat::Parquet,
            Some(FormatArg::Csv) => OutputFormat::Csv,
            None => config.run.output_format.unwrap_or_default(),
        },
    };
    let transform = run_transform(args.aggregate, config, &c.sensors)?;
    let drift = !args.no_drift && config.run.drift.unwrap_or(true);
    let mut settings = c.raw;
    settings["drift"] = json!(drift);
    if let Some(t) = &transform {
        settings["aggregate"] = t.describe();
    }
    settings["output_spec"] = json!(output_spec);
    settings["shard_from"] = json!(shard_from);
    settings["max_failed"] = json!(max_failed);
    let settings =
        job_settings(settings, &output, shard, threads, (min_part_rows, max_part_rows), storage);
    Ok(RunSpec {
        input: storage.open(&c.input).map_err(usage)?,
        registry: storage.open(&registry).map_err(usage)?,
        output: storage.open(&output).map_err(usage)?,
        run_id: args.run_id.clone(),
        selection: c.selection,
        sensors: c.sensors,
        window: c.window,
        columns: c.columns,
        output_spec,
        threads,
        shard,
        max_failed,
        min_part_rows,
        max_part_rows,
        chunk_rows: batchscore_scheduler::DEFAULT_CHUNK_ROWS,
        settings,
        transform,
        drift,
    })
}

/// The aggregation a run applies before scoring: `--aggregate` or `[run] aggregate = true`
/// turn it on, `[aggregate]` says what it does.
fn run_transform(
    flag: bool,
    config: &ConfigFile,
    sensors: &SensorSelection,
) -> Result<Option<Transform>, UsageError> {
    if !(flag || config.run.aggregate.unwrap_or(false)) {
        return Ok(None);
    }
    let section = config.aggregate.as_ref().ok_or_else(|| {
        UsageError(
            "--aggregate (or `[run] aggregate = true`) aggregates readings as the config's \
             [aggregate] section says, and the config has none (see configs/sample.toml)"
                .into(),
        )
    })?;
    Ok(Some(Arc::new(aggregation(section, sensors)?)))
}

/// The aggregation `section` describes; pivot columns follow the named sensors in the order
/// outputs list sensors (integers by value, then names).
pub(crate) fn aggregation(
    section: &AggregateConfig,
    sensors: &SensorSelection,
) -> Result<Aggregation, UsageError> {
    let sensors: Option<Vec<String>> = sensors.names().map(|names| {
        let mut names: Vec<String> = names.iter().cloned().collect();
        names.sort_by(|a, b| sensor_order(a, b));
        names
    });
    Aggregation::new(section, sensors.as_deref()).map_err(usage)
}

fn max_samples(text: &str) -> Result<MaxSamples, UsageError> {
    if text == "auto" {
        return Ok(MaxSamples::Auto);
    }
    Ok(match count_or_fraction("max_samples", text)? {
        CountOrFraction::Count(n) => MaxSamples::Count(n),
        CountOrFraction::Fraction(f) => MaxSamples::Fraction(f),
    })
}

fn max_features(text: &str) -> Result<MaxFeatures, UsageError> {
    if text == "all" {
        return Ok(MaxFeatures::All);
    }
    Ok(match count_or_fraction("max_features", text)? {
        CountOrFraction::Count(n) => MaxFeatures::Count(n),
        CountOrFraction::Fraction(f) => MaxFeatures::Fraction(f),
    })
}

fn contamination(text: &str) -> Result<Contamination, UsageError> {
    if text == "auto" {
        Ok(Contamination::Auto)
    } else {
        text.parse()
            .map(Contamination::Fraction)
            .map_err(|_| UsageError(format!("contamination `{text}`")))
    }
}

/// A job's settings as its manifests record them: the shared ones plus where it writes, which
/// shard it is, its threads, unit bounds and storage options, scrubbed of credentials.
pub(crate) fn job_settings(
    mut settings: serde_json::Value,
    output: &str,
    shard: Shard,
    threads: usize,
    (min_part_rows, max_part_rows): (u64, u64),
    storage: &Storage,
) -> serde_json::Value {
    settings["output"] = json!(output);
    settings["shard"] = json!(shard);
    settings["threads"] = json!(threads);
    settings["min_part_rows"] = json!(min_part_rows);
    settings["max_part_rows"] = json!(max_part_rows);
    settings["storage_options"] = json!(storage.options().redacted());
    scrubbed(settings, storage)
}

/// The settings with every credential removed from every string (URLs with SAS tokens or
/// passwords, secret option values), as manifests record them.
pub(crate) fn scrubbed(value: serde_json::Value, storage: &Storage) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(storage.scrub(&text)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| scrubbed(v, storage)).collect())
        }
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, scrubbed(v, storage))).collect())
        }
        other => other,
    }
}

/// Resolves `batchscore train`.
pub fn train_spec(
    args: &TrainArgs,
    config: &ConfigFile,
    storage: &Storage,
    now: DateTime<Utc>,
) -> Result<TrainSpec, UsageError> {
    let c = common(&args.input, config, now)?;
    let registry = c.registry()?;
    let t = &config.train;
    let defaults = IsolationForestParams::default();
    let params = IsolationForestParams {
        n_estimators: args.n_estimators.or(t.n_estimators).unwrap_or(defaults.n_estimators),
        max_samples: match args.max_samples.as_ref().or(t.max_samples.as_ref()) {
            Some(s) => max_samples(s)?,
            None => defaults.max_samples,
        },
        max_features: match args.max_features.as_ref().or(t.max_features.as_ref()) {
            Some(s) => max_features(s)?,
            None => defaults.max_features,
        },
        bootstrap: args.bootstrap || t.bootstrap.unwrap_or(defaults.bootstrap),
        contamination: match args.contamination.as_ref().or(t.contamination.as_ref()) {
            Some(s) => contamination(s)?,
            None => defaults.contamination,
        },
        seed: args.seed.or(t.seed).unwrap_or(defaults.seed),
    };
    let detector = match (args.detector, t.detector.as_deref()) {
        (Some(DetectorArg::Pca), _) | (None, Some("pca")) => DetectorArg::Pca,
        (Some(DetectorArg::Iforest), _) | (None, Some("iforest") | None) => DetectorArg::Iforest,
        (None, Some(other)) => {
            return Err(UsageError(format!("[train] detector `{other}`: use iforest or pca")));
        }
    };
    let params = match detector {
        DetectorArg::Iforest => TrainParams::IsolationForest(params.check().map_err(usage)?),
        DetectorArg::Pca => {
            let components = match args.components.as_ref().or(t.components.as_ref()) {
                None => PcaParams::default().components,
                Some(text) => match count_or_fraction("components", text)? {
                    CountOrFraction::Count(n) => PcaComponents::Count(n),
                    CountOrFraction::Fraction(f) => PcaComponents::Variance(f),
                },
            };
            let contamination = match params.contamination {
                Contamination::Fraction(f) => f,
                // PCA has no natural offset: "auto" (the IsolationForest default) means 1 %.
                Contamination::Auto => PcaParams::default().contamination,
            };
            let standardize = args.standardize || t.standardize.unwrap_or(false);
            let params = PcaParams { components, contamination, standardize };
            TrainParams::Pca(params.check().map_err(usage)?)
        }
    };
    if detector == DetectorArg::Iforest && (args.standardize || t.standardize == Some(true)) {
        // Trees split each feature on its own scale: standardising changes nothing.
        return Err(UsageError(
            "standardize applies to --detector pca (an IsolationForest is scale-invariant)".into(),
        ));
    }
    Ok(TrainSpec {
        input: storage.open(&c.input).map_err(usage)?,
        registry: storage.open(&registry).map_err(usage)?,
        selection: c.selection,
        sensors: c.sensors,
        window: c.window,
        columns: c.columns,
        features: args.features.clone().or_else(|| t.features.clone()),
        params,
        threads: threads(args.input.threads.or(t.threads))?,
        unit_rows: t.unit_rows.unwrap_or(DEFAULT_TRAIN_UNIT_ROWS),
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text a user could type: numbers of any size, units, signs, separators and junk.
    fn flag_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[-+]?[0-9]{0,25}(ms|s|m|h|d|KiB|MiB|GiB|B|%|\\.[0-9]{0,5})?",
            "[0-9,.=@ -]{0,40}",
            "[0-9]{0,20}\\.\\.=?[-]?[0-9]{0,20}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?)?",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Regression (`--last 2251799813685248d` panicked): no value parser panics, and every
        /// accepted period and window is sane.
        #[test]
        fn value_parsers_never_panic(text in flag_text()) {
            if let Ok(seconds) = parse_period(&text) {
                prop_assert!(seconds > 0 && seconds <= MAX_PERIOD_SECONDS);
            }
            let _ = parse_duration(&text);
            let _ = parse_size(&text);
            let _ = parse_time(&text);
            let _ = count_or_fraction("x", &text);
            let _ = max_samples(&text);
            let _ = max_features(&text);
            let _ = contamination(&text);
            let _ = DeviceSelection::parse(&text);
            let _ = SensorSelection::parse(&text);
            let _ = MaxFailed::parse(&text);
            let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
            if let Ok(w) = window(None, None, Some(text.clone()), now) {
                // The last whole period before now: it holds `now - period`, not `now`.
                let period = parse_period(&text).unwrap_or_default() * 1_000_000;
                let now_us = now.timestamp_micros();
                prop_assert!(w.contains(now_us - period) && !w.contains(now_us), "{text}");
            }
            let _ = window(Some(text.clone()), Some(text.clone()), None, now);
        }
    }

    /// `batchscore run ARGS`, as clap parses it.
    fn run_args(args: &[&str]) -> RunArgs {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(
            ["batchscore", "run"].iter().chain(args).copied().collect::<Vec<_>>(),
        )
        .unwrap();
        match cli.command {
            crate::cli::Command::Run(args) => args,
            _ => unreachable!("a run command"),
        }
    }

    fn shard_of(args: &[&str], env: &[(&str, &str)]) -> Result<(u32, u32, String), String> {
        let env: std::collections::HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        shard(&run_args(args), &ConfigFile::default(), |name| env.get(name).cloned())
            .map(|(s, from)| (s.index(), s.count(), from))
            .map_err(|e| e.0)
    }

    #[test]
    fn shards_come_from_flags_or_the_engines_environment() {
        assert_eq!(shard_of(&[], &[]).unwrap().0..1, 0..1);
        assert_eq!(shard_of(&[], &[]).unwrap().1, 1);
        // Kubernetes Indexed Job: the index, and the count from the flag.
        let (i, n, from) =
            shard_of(&["--shard-count", "8"], &[("JOB_COMPLETION_INDEX", "5")]).unwrap();
        assert_eq!((i, n), (5, 8));
        assert!(from.contains("JOB_COMPLETION_INDEX"), "{from}");
        let err = shard_of(&[], &[("JOB_COMPLETION_INDEX", "5")]).unwrap_err();
        assert!(err.contains("--shard-count"), "{err}");
        // AWS Batch array job: index and size.
        let env = [("AWS_BATCH_JOB_ARRAY_INDEX", "3"), ("AWS_BATCH_JOB_ARRAY_SIZE", "10")];
        assert_eq!(shard_of(&[], &env).unwrap().0..shard_of(&[], &env).unwrap().1, 3..10);
        // Slurm: 1-based arrays are shifted to 0-based shards; stepped arrays are refused.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        let (i, n, _) = shard_of(&[], &slurm).unwrap();
        assert_eq!((i, n), (3, 4));
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ];
        assert!(shard_of(&[], &stepped).unwrap_err().contains("contiguous"));
        // Flags win over the engine; a named variable wins over detection.
        let (i, n, from) = shard_of(&["--shard-index", "1", "--shard-count", "2"], &env).unwrap();
        assert_eq!((i, n), (1, 2));
        assert!(from.starts_with("--shard-index"), "{from}");
        let (i, _, from) = shard_of(
            &["--shard-index-env", "MY_INDEX", "--shard-count", "9"],
            &[("MY_INDEX", "7"), ("JOB_COMPLETION_INDEX", "2")],
        )
        .unwrap();
        assert_eq!((i, from.as_str()), (7, "MY_INDEX"));
        // Garbage and out-of-range values are usage errors naming the variable.
        assert!(
            shard_of(&[], &[("AWS_BATCH_JOB_ARRAY_INDEX", "x")])
                .unwrap_err()
                .contains("AWS_BATCH_JOB_ARRAY_INDEX")
        );
        let beyond = [("AWS_BATCH_JOB_ARRAY_INDEX", "10"), ("AWS_BATCH_JOB_ARRAY_SIZE", "10")];
        assert!(shard_of(&[], &beyond).is_err());
    }

    #[test]
    fn times_and_periods() {
        assert_eq!(parse_time("2026-01-01").unwrap().timestamp(), 1_767_225_600);
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00").unwrap().timestamp(), 1_767_225_600);
        assert_eq!(parse_time("2026-01-01 00:00:10").unwrap().timestamp(), 1_767_225_610);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_period("15m").unwrap(), 900);
        assert!(parse_period("0h").is_err() && parse_period("1w").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1TB").is_err());
    }

    #[test]
    fn last_period_is_aligned_to_the_clock() {
        let now = parse_time("2026-03-01T14:05:00Z").unwrap();
        let w = window(None, None, Some("1h".into()), now).unwrap();
        assert_eq!(w.from_us, Some(parse_time("2026-03-01T13:00:00Z").unwrap().timestamp_micros()));
        assert_eq!(w.to_us, Some(parse_time("2026-03-01T14:00:00Z").unwrap().timestamp_micros()));
    }

    #[test]
    fn detector_parameters() {
        assert_eq!(max_samples("auto").unwrap(), MaxSamples::Auto);
        assert_eq!(max_samples("128").unwrap(), MaxSamples::Count(128));
        assert_eq!(max_samples("0.5").unwrap(), MaxSamples::Fraction(0.5));
        assert_eq!(contamination("0.1").unwrap(), Contamination::Fraction(0.1));
        assert!(max_features("x").is_err());
    }
}
