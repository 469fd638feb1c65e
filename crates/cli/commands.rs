//! The subcommands: each resolves its settings, calls the library, and renders the result.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use batchscore_detectors::{Detector, IsolationForest, OneClassSvm, Pca};
use batchscore_io::Storage;
use batchscore_registry::{DetectorModel, ImportPlan, KeyPattern, ModelKey, Registry};
use batchscore_scheduler::{DeviceStatus, PlanSummary, RunReport, error_chain};
use batchscore_synth::{FileFormat, GenerateSpec, Layout, Partitioning};
use chrono::Utc;
use rayon::prelude::*;

use crate::cli::{
    FormatArg, GenerateArgs, InputArgs, LayoutArg, ModelsArgs, ModelsCommand, PartitionArg,
    RunArgs, SummaryFormat, TrainArgs,
};
use crate::config::ConfigFile;
use crate::printer::{Printer, thousands};
use crate::progress::Reporter;
use crate::settings;
use crate::usage::UsageError;

/// `batchscore config`: the settings every command starts from, secrets hidden.
pub fn show_config(config: &ConfigFile, storage: &Storage, printer: Printer) -> Result<u8> {
    let options = storage.options();
    let retry = options.retry();
    let view = serde_json::json!({
        "config_file": config.path.as_ref().map(|p| p.display().to_string()),
        "paths": {
            "input": config.location(&config.paths.input),
            "registry": config.location(&config.paths.registry),
            "output": config.location(&config.paths.output),
        },
        "columns": config.columns.clone().unwrap_or_default(),
        "output": {
            "profile": config.run.profile.unwrap_or_default(),
            "format": config.run.output_format.unwrap_or_default(),
        },
        "storage": {
            "options": options.redacted(),
            "max_retries": retry.max_retries,
            "retry_timeout_ms": retry.timeout.as_millis() as u64,
            "initial_backoff_ms": retry.initial_backoff.as_millis() as u64,
            "max_backoff_ms": retry.max_backoff.as_millis() as u64,
            "max_concurrent_requests": options.max_concurrent_requests(),
            "multipart_part_size": options.multipart_part_size(),
        },
    });
    // Paths may be URLs with SAS tokens or passwords in them.
    printer.out(&storage.scrub(&serde_json::to_string_pretty(&view)?));
    Ok(0)
}

struct ImportArgs<'a> {
    paths: &'a [String],
    key_pattern: &'a str,
    features: Option<Vec<String>>,
    threads: Option<usize>,
}

/// `batchscore models import`: every file is converted and validated before any is written, so
/// a bad export leaves the registry as it was (`batchscore_registry::ImportPlan`).
fn import_models(
    args: &ImportArgs<'_>,
    storage: &Storage,
    mut registry: Registry,
    printer: Printer,
) -> Result<u8> {
    let started = std::time::Instant::now();
    let pattern = KeyPattern::parse(args.key_pattern).map_err(|e| UsageError(e.to_string()))?;
    let plan = ImportPlan::find(storage, args.paths, &pattern)?;
    let created_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let workers = pool(args.threads)?;
    let models = match workers.install(|| plan.convert(args.features.clone(), &created_at))? {
        Ok(models) => models,
        Err(failures) => {
            for failure in &failures {
                printer.problem(&format!("  {failure}"));
            }
            printer.problem(&format!(
                "{} of {} files cannot be imported; nothing was written",
                failures.len(),
                plan.files.len()
            ));
            return Ok(EXIT_PARTIAL);
        }
    };
    workers.install(|| batchscore_registry::write_models(&mut registry, &models))?;
    for file in &plan.skipped {
        printer.note(&format!("  skipped (name does not match the key pattern): {file}"));
    }
    let mut kinds = std::collections::BTreeMap::new();
    for m in &models {
        *kinds.entry(m.meta.detector.clone()).or_insert(0usize) += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    printer.out(&format!(
        "imported {} model{} ({}) into {} in {:.2} s",
        models.len(),
        if models.len() == 1 { "" } else { "s" },
        kinds.join(", "),
        registry.url(),
        started.elapsed().as_secs_f64()
    ));
    Ok(0)
}

/// The shape of a detector, for `models show`.
fn detector_view(detector: &DetectorModel) -> serde_json::Value {
    let forest = |f: &IsolationForest| {
        serde_json::json!({
            "trees": f.n_trees(), "nodes": f.n_nodes(), "max_samples": f.max_samples(),
        })
    };
    let svm = |s: &OneClassSvm| serde_json::json!({ "support_vectors": s.n_support(), "kernel": s.kernel() });
    let pca = |p: &Pca| serde_json::json!({ "components": p.n_components(), "explained_variance": p.explained_variance() });
    let mut view = match detector {
        DetectorModel::IsolationForest(f) => forest(f),
        DetectorModel::ScaledIsolationForest(p) => forest(p.detector()),
        DetectorModel::OneClassSvm(s) => svm(s),
        DetectorModel::ScaledOneClassSvm(p) => svm(p.detector()),
        DetectorModel::Pca(p) => pca(p),
        DetectorModel::ScaledPca(p) => pca(p.detector()),
    };
    view["kind"] = detector.kind().into();
    view["offset"] = detector.offset().into();
    view
}

/// Exit code when the job finished but failed items exceed the tolerated share.
pub const EXIT_PARTIAL: u8 = batchscore_io::EXIT_FAILED_KEYS;

pub fn interactive(printer: Printer) -> bool {
    !printer.quiet && std::io::stderr().is_terminal()
}

fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    Ok(batchscore_scheduler::worker_pool(settings::threads(threads)?)?)
}

pub fn generate(args: &GenerateArgs, storage: &Storage, printer: Printer) -> Result<u8> {
    let start = settings::parse_time(&args.start)?;
    let spec = GenerateSpec {
        devices: args.devices,
        sensors: args.sensors,
        rows_per_device: args.rows_per_device,
        seed: args.seed,
        start_us: start.timestamp_micros(),
        interval_s: args.interval_seconds,
        anomaly_rate: args.anomaly_rate,
        partitioning: match args.partition {
            PartitionArg::Device => Partitioning::Device,
            PartitionArg::None => Partitioning::None,
        },
        layout: match args.layout {
            LayoutArg::Wide => Layout::Wide,
            LayoutArg::Long => Layout::Long,
        },
        format: match args.format {
            FormatArg::Parquet => FileFormat::Parquet,
            FormatArg::Csv => FileFormat::Csv,
        },
        rows_per_file: args.rows_per_file,
        row_group_rows: args.row_group_rows,
    };
    let out = storage.open(&args.out).map_err(|e| UsageError(e.to_string()))?;
    let started = std::time::Instant::now();
    let summary = pool(args.threads)?.install(|| batchscore_synth::generate(&spec, &out))?;
    printer.out(&format!(
        "generated {} devices x {} rows ({} rows, {} anomalies) in {} files, {:.1} MB, {:.2} s\n  readings  {}/readings\n  labels    {}/labels.parquet",
        args.devices,
        args.rows_per_device,
        thousands(summary.rows),
        thousands(summary.anomalies),
        summary.files,
        summary.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        out.url(),
        out.url(),
    ));
    Ok(0)
}

pub fn train(
    args: &TrainArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let spec = settings::train_spec(args, config, storage, Utc::now())?;
    let reporter = Reporter::new(interactive(printer), "train");
    let report = batchscore_scheduler::train(&spec, &reporter)?;
    let secs = report.elapsed.as_secs_f64();
    printer.out(&format!(
        "trained {} models from {} rows in {:.2} s ({:.0} models/s on {} threads)\n  registry  {}",
        report.trained,
        thousands(report.rows),
        secs,
        report.trained as f64 / secs.max(1e-9),
        spec.threads,
        report.registry_url
    ));
    if report.failed.is_empty() {
        return Ok(0);
    }
    printer.out(&format!("  failed    {} models:", report.failed.len()));
    for (key, reason) in report.failed.iter().take(10) {
        printer.out(&format!("    model {key}: {reason}"));
    }
    Ok(EXIT_PARTIAL)
}

/// Generates the embedded sample and trains its models on first use, when the config asks.
fn ensure_sample(config: &ConfigFile, storage: &Storage, printer: Printer) -> Result<()> {
    let Some(sample) = config.sample.as_ref().filter(|s| s.generate_if_missing) else {
        return Ok(());
    };
    let dir = config.location(&Some(sample.dir.clone())).unwrap_or_default();
    let location = storage.open(&dir)?;
    if location.list("readings")?.is_empty() {
        printer.note(&format!(
            "first use: generating the sample ({} devices x {} rows) in {dir}",
            sample.devices, sample.rows_per_device
        ));
        let spec = GenerateSpec {
            devices: sample.devices,
            sensors: sample.sensors,
            rows_per_device: sample.rows_per_device,
            seed: sample.seed,
            ..GenerateSpec::default()
        };
        pool(None)?.install(|| batchscore_synth::generate(&spec, &location))?;
    }
    let registry =
        config.location(&config.paths.registry).context("the sample needs paths.registry")?;
    let existing = Registry::open(storage.open(&registry)?)?;
    // Models written by an older build (another model format) are retrained, once.
    let outdated = existing.entries().next().is_some_and(|e| {
        matches!(
            existing.load(&e.key),
            Err(batchscore_registry::RegistryError::FormatVersion { .. })
        )
    });
    if existing.is_empty() || outdated {
        let why =
            if outdated { "the sample's models are from an older build" } else { "first use" };
        printer.note(&format!("{why}: training the sample's models into {registry}"));
        let args = TrainArgs {
            input: InputArgs {
                input: None,
                layout: None,
                registry: None,
                devices: Some("all".into()),
                sensors: None,
                from: None,
                to: None,
                last: None,
                threads: None,
            },
            detector: None,
            components: None,
            standardize: false,
            n_estimators: None,
            max_samples: None,
            max_features: None,
            bootstrap: false,
            contamination: None,
            seed: None,
            features: None,
        };
        let spec = settings::train_spec(&args, config, storage, Utc::now())?;
        let reporter = Reporter::new(interactive(printer), "train");
        let report = batchscore_scheduler::train(&spec, &reporter)?;
        printer.note(&format!(
            "trained {} models in {:.2} s",
            report.trained,
            report.elapsed.as_secs_f64()
        ));
    }
    Ok(())
}

pub fn run(args: &RunArgs, config: &ConfigFile, storage: &Storage, printer: Printer) -> Result<u8> {
    // Only a run of the config's own sample locations generates the sample: a discovered
    // `batchscore.toml` must not generate data for a run pointed elsewhere.
    if args.input.input.is_none() && args.input.registry.is_none() {
        ensure_sample(config, storage, printer)?;
    }
    let spec = settings::run_spec(args, config, storage, Utc::now())?;
    if args.dry_run {
        let plan = batchscore_scheduler::dry_run(&spec)?;
        match args.summary {
            SummaryFormat::Json => printer.out(&serde_json::to_string_pretty(&plan)?),
            SummaryFormat::Text => printer.out(&render_plan(&plan)),
        }
        return Ok(0);
    }
    let reporter = Reporter::new(interactive(printer), "run");
    let report = batchscore_scheduler::run(&spec, &reporter)?;
    match args.summary {
        SummaryFormat::Json => {
            // The shard's manifest, with the run's drift counts once the run is complete.
            let mut manifest = report.manifest.clone();
            manifest.drift = manifest.drift.or_else(|| report.drift.clone());
            printer.out(&serde_json::to_string_pretty(&manifest)?)
        }
        SummaryFormat::Text => printer.out(&render_summary(&report, spec.threads)),
    }
    Ok(if report.failed_over_threshold { EXIT_PARTIAL } else { 0 })
}

fn render_plan(p: &PlanSummary) -> String {
    let mine: u64 = p.shard_units.iter().map(|&u| p.units[u].rows).sum();
    [
        format!("batchscore run {} (dry run: nothing written)", p.run_id),
        format!("  output      {}/", p.output_url),
        format!(
            "  files       {} listed, {} kept after partition pruning",
            p.files_listed, p.files_read
        ),
        format!(
            "  row groups  {} in those files, {} kept after statistics pruning",
            p.row_groups_total, p.row_groups_read
        ),
        format!("  rows        up to {}", thousands(p.rows)),
        format!(
            "  units       {} in the plan; this shard runs {} ({} rows)",
            p.units.len(),
            p.shard_units.len(),
            thousands(mine)
        ),
        format!("  models      {} in the registry", thousands(p.models_in_registry as u64)),
    ]
    .join("\n")
}

/// The summary line about selected sensors no reading was met of.
pub fn sensors_warning(r: &RunReport) -> Option<String> {
    (!r.sensors_without_input.is_empty()).then(|| {
        format!(
            "  warning   no readings of the selected sensor(s) {} in this {}",
            r.sensors_without_input.join(", "),
            if r.manifest.shard_count > 1 { "shard" } else { "run" }
        )
    })
}

fn render_summary(r: &RunReport, threads: usize) -> String {
    let t = &r.manifest.totals;
    let secs = r.elapsed.as_secs_f64();
    let state = if r.complete {
        "complete: _SUCCESS written"
    } else {
        "shard committed; waiting for other shards"
    };
    let pct = if t.rows > 0 { 100.0 * t.anomalies as f64 / t.rows as f64 } else { 0.0 };
    // Long-layout outcomes are per (device, sensor) series.
    let what =
        if r.manifest.devices.iter().any(|d| d.sensor.is_some()) { "series  " } else { "devices " };
    let mut lines = vec![
        format!("batchscore run {}  [{}]  ({state})", r.run_id, r.manifest.scope),
        format!("  output    {}/", r.output_url),
        format!(
            "  {what}  {} scored, {} failed, {} without input",
            thousands(t.devices_scored),
            thousands(t.devices_failed),
            thousands(t.devices_no_input)
        ),
        format!(
            "  rows      {} scored, {} anomalies ({pct:.2} %)",
            thousands(t.rows),
            thousands(t.anomalies)
        ),
        format!(
            "  units     {} of {} in the plan ({} already committed by an earlier attempt), {} part files",
            t.units, r.plan_units, r.units_skipped, t.parts
        ),
        format!(
            "  time      {secs:.2} s, {} rows scored now at {} rows/s on {threads} threads",
            thousands(r.rows_scored_now),
            thousands((r.rows_scored_now as f64 / secs.max(1e-9)) as u64)
        ),
    ];
    if t.duplicate_rows > 0 {
        lines.insert(
            4,
            format!(
                "  warning   {} rows repeat the (device, sensor, timestamp) of another row (scored as given)",
                thousands(t.duplicate_rows)
            ),
        );
    }
    lines.extend(sensors_warning(r));
    if let Some(drift) = &r.drift {
        let table = crate::printer::table_url(&r.output_url, &drift.table);
        lines.push(format!("  drift     {} ({table})", drift.line()));
    }
    let failures: Vec<_> =
        r.manifest.devices.iter().filter(|d| d.status == DeviceStatus::Failed).collect();
    if !failures.is_empty() {
        lines.push(format!(
            "  failures  (first {} of {}; all in {:?})",
            failures.len().min(10),
            failures.len(),
            r.manifest.failures_tables
        ));
        for d in failures.iter().take(10) {
            lines.push(format!(
                "    model {}: {}: {}",
                d.model_key(),
                d.stage.as_deref().unwrap_or("?"),
                d.reason.as_deref().unwrap_or("")
            ));
        }
    }
    if r.failed_over_threshold {
        lines.push("  result    failed devices exceed --max-failed (exit code 3)".into());
    }
    lines.join("\n")
}

pub fn models(
    args: &ModelsArgs,
    config: &ConfigFile,
    storage: &Storage,
    printer: Printer,
) -> Result<u8> {
    let url = args
        .registry
        .clone()
        .or_else(|| config.location(&config.paths.registry))
        .ok_or_else(|| UsageError("missing --registry: pass it, set BATCHSCORE_REGISTRY, or set `paths.registry` in the config file".into()))?;
    let location = storage.open(&url).map_err(|e| UsageError(e.to_string()))?;
    let existing = || Registry::open_existing(location.clone());
    match &args.command {
        ModelsCommand::Import { paths, key_pattern, features, threads } => {
            let import =
                ImportArgs { paths, key_pattern, features: features.clone(), threads: *threads };
            import_models(&import, storage, Registry::open(location.clone())?, printer)
        }
        ModelsCommand::List => {
            let registry = existing()?;
            // Series keys (`12.temperature`) are longer than device keys.
            let width = registry.entries().map(|e| e.key.as_str().len()).max().unwrap_or(0).max(12);
            let detector_width =
                registry.entries().map(|e| e.detector.len()).max().unwrap_or(0).max(18);
            printer.out(&format!(
                "{:<width$} {:<16} {:<detector_width$} {:>8} {:>10}  created",
                "key", "version", "detector", "features", "rows"
            ));
            for e in registry.entries() {
                printer.out(&format!(
                    "{:<width$} {:<16} {:<detector_width$} {:>8} {:>10}  {}",
                    e.key.as_str(),
                    e.version,
                    e.detector,
                    e.features.len(),
                    e.training_rows,
                    e.created_at
                ));
            }
            printer.note(&format!("{} models in {}", registry.len(), registry.url()));
            Ok(0)
        }
        ModelsCommand::Show { key } => {
            let registry = existing()?;
            let key = ModelKey::try_from(key.clone()).map_err(|e| UsageError(e.to_string()))?;
            let model = registry.verify(&key)?;
            let entry = registry.entry(&key).cloned();
            // Parameters are stored as JSON text; show them as JSON.
            let params: serde_json::Value = serde_json::from_str(&model.meta.params)
                .unwrap_or_else(|_| model.meta.params.clone().into());
            let mut meta = serde_json::to_value(&model.meta)?;
            meta["params"] = params;
            let view = serde_json::json!({
                "index": entry,
                "meta": meta,
                "detector": detector_view(&model.detector),
            });
            printer.out(&serde_json::to_string_pretty(&view)?);
            Ok(0)
        }
        ModelsCommand::Verify { threads } => {
            let registry = existing()?;
            let entries: Vec<_> = registry.entries().cloned().collect();
            // Neighbouring series share packs: verified a pack's worth at a time, a group
            // costs a ranged request per pack on a remote registry, not one per model.
            let mut keys: Vec<ModelKey> = entries.iter().map(|e| e.key.clone()).collect();
            keys.sort_by(|a, b| a.series_order().cmp(&b.series_order()));
            let mut results: Vec<(String, Result<(), String>)> = pool(*threads)?.install(|| {
                keys.par_chunks(batchscore_registry::PACK_MODELS)
                    .flat_map_iter(|group| {
                        let verified = registry.verify_many(group);
                        group.iter().zip(verified).map(|(key, r)| {
                            (key.to_string(), r.map(|_| ()).map_err(|err| error_chain(&err)))
                        })
                    })
                    .collect()
            });
            results.sort_by(|a, b| a.0.cmp(&b.0));
            let bad: Vec<_> =
                results.iter().filter_map(|(k, r)| r.as_ref().err().map(|e| (k, e))).collect();
            // Objects under models/ and packs/ that the index does not name are left-overs
            // (of retrainings, or of a training stopped before its commit), not errors.
            let listed: std::collections::HashSet<&str> =
                entries.iter().map(|e| e.path.as_str()).collect();
            let root = storage.open(&url)?;
            let mut orphans = Vec::new();
            for dir in ["models", "packs"] {
                orphans.extend(
                    root.list(dir)?
                        .into_iter()
                        .map(|e| e.path)
                        .filter(|p| !listed.contains(p.as_str())),
                );
            }
            for (key, reason) in &bad {
                printer.out(&format!("BAD  {key}: {reason}"));
            }
            for path in orphans.iter().take(20) {
                printer.out(&format!("NOTE {path} is not in the index"));
            }
            printer.out(&format!(
                "verified {} models: {} ok, {} bad",
                results.len(),
                results.len() - bad.len(),
                bad.len()
            ));
            Ok(if bad.is_empty() { 0 } else { EXIT_PARTIAL })
        }
    }
}
