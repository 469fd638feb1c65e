//! `batchscore serve`: resolves the service's settings (flags > environment > the config
//! file's `[serve]` > defaults), builds what the service crate is handed (its runtime, its two
//! storages, the run launcher) and runs it until SIGINT or SIGTERM.
//!
//! Two storages, so that a stop can interrupt a run without failing a scoring request in
//! flight: the runs' storage is cancelled the moment a signal arrives (the run stops at its
//! next step and stays resumable), the registry's only ends with the process.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use batchscore_io::{ErrorClass, Storage};
use batchscore_scheduler::RunSpec;
use batchscore_serve::{
    ApiKeys, Authenticator, JwtSettings, LaunchError, Limits, RunLauncher, RunRequest, ServeConfig,
    Server, Sources,
};
use chrono::Utc;

use crate::cli::{RunArgs, ServeArgs, SummaryFormat};
use crate::config::ConfigFile;
use crate::printer::Printer;
use crate::settings::{self, parse_duration, parse_size};
use crate::usage::UsageError;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MODEL_CACHE: &str = "512MiB";
const DEFAULT_REGISTRY_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Resolves requests into runs with the same code as `batchscore run`: the request's fields
/// take the place of flags over the server's own settings.
#[derive(Debug)]
struct Launcher {
    template: RunArgs,
    config: ConfigFile,
    storage: Arc<Storage>,
}

impl RunLauncher for Launcher {
    fn spec(&self, request: &RunRequest) -> Result<RunSpec, LaunchError> {
        let mut args = self.template.clone();
        if request.from.is_some() || request.to.is_some() || request.last.is_some() {
            args.input.from = request.from.clone();
            args.input.to = request.to.clone();
            args.input.last = request.last.clone();
        }
        if let Some(devices) = &request.devices {
            args.input.devices = Some(devices.clone());
        }
        if let Some(sensors) = &request.sensors {
            args.input.sensors = Some(sensors.clone());
        }
        args.run_id = request.run_id.clone();
        settings::run_spec(&args, &self.config, &self.storage, Utc::now())
            .map_err(|e| LaunchError { class: ErrorClass::Usage, message: e.to_string() })
    }
}

fn or_default<T>(flag: Option<T>, config: Option<T>, default: T) -> T {
    flag.or(config).unwrap_or(default)
}

/// The API keys: BATCHSCORE_API_KEYS, then the keys file (both may be given: rotation).
fn api_keys(args: &ServeArgs, config: &ConfigFile) -> Result<ApiKeys, UsageError> {
    let mut text = std::env::var("BATCHSCORE_API_KEYS").unwrap_or_default();
    if let Some(path) = args.api_keys_file.clone().or_else(|| config.serve.api_keys_file.clone()) {
        let file = std::fs::read_to_string(&path)
            .map_err(|e| UsageError(format!("cannot read the API keys file {path}: {e}")))?;
        text.push('\n');
        text.push_str(&file);
    }
    ApiKeys::parse(&text).map_err(|e| UsageError(e.to_string()))
}

fn jwt(args: &ServeArgs, config: &ConfigFile) -> Result<Option<JwtSettings>, UsageError> {
    let s = &config.serve;
    let usage = |e: batchscore_serve::ServeError| UsageError(e.to_string());
    let audiences = match args.jwt_audiences.is_empty() {
        false => args.jwt_audiences.clone(),
        true => s.jwt_audiences.clone().unwrap_or_default(),
    };
    let issuers = match args.jwt_issuers.is_empty() {
        false => args.jwt_issuers.clone(),
        true => s.jwt_issuers.clone().unwrap_or_default(),
    };
    if let Some(url) = args.jwt_jwks_url.clone().or_else(|| s.jwt_jwks_url.clone()) {
        let url =
            url::Url::parse(&url).map_err(|e| UsageError(format!("--jwt-jwks-url {url}: {e}")))?;
        return JwtSettings::new(url, issuers, audiences).map(Some).map_err(usage);
    }
    match args.entra_tenant.clone().or_else(|| s.entra_tenant.clone()) {
        Some(tenant) => {
            let mut settings = JwtSettings::entra(&tenant, audiences).map_err(usage)?;
            settings.issuers.extend(issuers);
            Ok(Some(settings))
        }
        None if !audiences.is_empty() || !issuers.is_empty() => Err(UsageError(
            "--jwt-audience/--jwt-issuer need --entra-tenant or --jwt-jwks-url (where the signing keys are)".into(),
        )),
        None => Ok(None),
    }
}

/// A positive duration setting, or its default.
fn duration(
    name: &str,
    text: Option<String>,
    default: std::time::Duration,
) -> Result<std::time::Duration, UsageError> {
    match text.map(|t| parse_duration(&t)).transpose()? {
        Some(d) if d.is_zero() => Err(UsageError(format!("--{name} must be longer than 0"))),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

fn serve_config(args: &ServeArgs, config: &ConfigFile) -> Result<ServeConfig, UsageError> {
    let s = &config.serve;
    let listen = or_default(args.listen.clone(), s.listen.clone(), DEFAULT_LISTEN.into());
    let listen: SocketAddr = listen.parse().map_err(|_| {
        UsageError(format!("--listen `{listen}` is not an address like 127.0.0.1:8080"))
    })?;
    let public_url = args
        .public_url
        .clone()
        .or_else(|| s.public_url.clone())
        .map(|u| url::Url::parse(&u).map_err(|e| UsageError(format!("--public-url {u}: {e}"))))
        .transpose()?;
    let trusted_proxies = args
        .trusted_proxies
        .clone()
        .or_else(|| s.trusted_proxies.clone())
        .unwrap_or_default()
        .iter()
        .map(|ip| {
            ip.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| UsageError(format!("--trusted-proxies: `{ip}` is not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = Limits::default();
    let positive = |name: &str, n: usize| match n {
        0 => Err(UsageError(format!("--{name} must be at least 1"))),
        n => Ok(n),
    };
    let limits = Limits {
        max_body_bytes: match args.max_body.clone().or_else(|| s.max_body.clone()) {
            Some(text) => positive("max-body", parse_size(&text)?)?,
            None => defaults.max_body_bytes,
        },
        max_rows: positive("max-rows", or_default(args.max_rows, s.max_rows, defaults.max_rows))?,
        max_in_flight: positive(
            "max-in-flight",
            or_default(args.max_in_flight, s.max_in_flight, defaults.max_in_flight),
        )?,
        queue_wait: match args.queue_wait.clone().or_else(|| s.queue_wait.clone()) {
            Some(text) => parse_duration(&text)?,
            None => defaults.queue_wait,
        },
        request_timeout: duration(
            "request-timeout",
            args.request_timeout.clone().or_else(|| s.request_timeout.clone()),
            defaults.request_timeout,
        )?,
        header_timeout: duration(
            "header-timeout",
            args.header_timeout.clone().or_else(|| s.header_timeout.clone()),
            defaults.header_timeout,
        )?,
        max_connections: positive(
            "max-connections",
            or_default(args.max_connections, s.max_connections, defaults.max_connections),
        )?,

        max_queued_runs: positive(
            "max-queued-runs",
            or_default(args.max_queued_runs, s.max_queued_runs, defaults.max_queued_runs),
        )?,
        run_workers: positive(
            "run-workers",
            or_default(args.run_workers, s.run_workers, defaults.run_workers),
        )?,
        poll_after_seconds: or_default(args.poll_after, s.poll_after, defaults.poll_after_seconds)
            .max(1),
    };
    let cache =
        or_default(args.model_cache.clone(), s.model_cache.clone(), DEFAULT_MODEL_CACHE.into());
    let registry_refresh = duration(
        "registry-refresh",
        args.registry_refresh.clone().or_else(|| s.registry_refresh.clone()),
        DEFAULT_REGISTRY_REFRESH,
    )?;
    Ok(ServeConfig {
        listen,
        public_url,
        trusted_proxies,
        limits,
        cache_bytes: parse_size(&cache)? as u64,
        registry_refresh,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The `batchscore run` arguments a request's run starts from: the server's own, unsharded.
fn template(args: &ServeArgs) -> RunArgs {
    RunArgs {
        input: args.input.clone(),
        output: args.output.clone(),
        run_id: None,
        shard_index: None,
        shard_count: None,
        shard_index_env: None,
        max_failed: args.max_failed.clone(),
        aggregate: false,
        no_drift: false,
        min_part_rows: None,
        max_part_rows: None,
        profile: None,
        output_format: None,
        dry_run: false,
        summary: SummaryFormat::Text,
    }
}

pub fn serve(
    args: &ServeArgs,
    config: &ConfigFile,
    signals: &Storage,
    printer: Printer,
) -> Result<u8> {
    let serve_config = serve_config(args, config)?;
    let auth = Authenticator::new(api_keys(args, config)?, jwt(args, config)?)
        .map_err(|e| UsageError(e.to_string()))?;
    // A request's run is one whole run: the server's config may shard batch jobs, not these.
    let mut run_config = config.clone();
    run_config.run.shard_count = None;
    run_config.run.shard_index_env = None;
    let runs_storage = Arc::new(Storage::with_options(signals.options().clone())?);
    let registry_storage = Storage::with_options(signals.options().clone())?;
    let launcher =
        Launcher { template: template(args), config: run_config, storage: runs_storage.clone() };
    // The server's own settings must make a run (a request may narrow them).
    let base = launcher
        .spec(&RunRequest::default())
        .map_err(|e| UsageError(format!("the server's run settings: {}", e.message)))?;
    let registry =
        registry_storage.open(base.registry.url()).map_err(|e| UsageError(e.to_string()))?;
    let sources = Sources {
        registry,
        output: base.output.clone(),
        columns: base.columns.clone(),
        launcher: Arc::new(launcher),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("batchscore-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let stop = signals.canceller();
    let interrupt_runs = runs_storage.canceller();
    runtime.block_on(async move {
        let server = Server::bind(serve_config, auth, sources).await?;
        let addr = server.local_addr();
        // The first line on stdout: scripts and tests read the port from it (`--listen :0`).
        printer.out(&format!("listening on http://{addr}"));
        let shutdown = async move {
            stop.cancelled().await;
            tracing::warn!("stopping: no new connections; requests in flight finish; a running run stops at its next step and resumes when asked for again");
            interrupt_runs.cancel();
        };
        server.run(shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}
