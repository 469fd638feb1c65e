//! Command-line definitions (clap). Values stay raw here; `settings` validates and resolves them.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Score IoT sensor readings with one pretrained outlier detector per device, exactly once.
#[derive(Debug, Parser)]
#[command(name = "batchscore", version, about, max_term_width = 100)]
pub struct Cli {
    /// TOML config file; its relative paths are relative to the file. Default: the first
    /// `batchscore.toml` in the current directory or a parent.
    #[arg(long, global = true, env = "BATCHSCORE_CONFIG", value_name = "FILE")]
    pub config: Option<String>,
    /// Use no config file, not even a discovered `batchscore.toml`.
    #[arg(long, global = true, env = "BATCHSCORE_NO_CONFIG", conflicts_with = "config")]
    pub no_config: bool,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log lines on stderr as text or as JSON objects (one a line, for log collectors such as
    /// Azure Monitor; `serve`'s access log included).
    #[arg(long, global = true, env = "BATCHSCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A storage option as object_store names it, e.g. `azure_storage_account_name=acct` or
    /// `timeout=60s`; repeatable; overrides the same option from the environment
    /// (AZURE_*, AWS_*, GOOGLE_*) and the config file's [storage.options].
    #[arg(long = "storage-option", global = true, value_name = "KEY=VALUE")]
    pub storage_options: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score readings with each device's (or device and sensor's) model and commit the scored
    /// rows exactly once (the main job).
    Run(RunArgs),
    /// Train one model per device (wide layout) or per device and sensor (long layout) from
    /// readings into a registry.
    Train(TrainArgs),
    /// Aggregate readings over tumbling windows per device (and sensor) into a dataset that
    /// `train` and `run` read like any other (OUTPUT/RUN_ID/), committed exactly once like a
    /// run; `--pivot` turns long readings into one row per device and window.
    Aggregate(Box<AggregateArgs>),
    /// Generate deterministic synthetic telemetry with labelled anomalies.
    Generate(GenerateArgs),
    /// Inspect and verify a model registry.
    Models(ModelsArgs),
    /// Run on batch engines: `batch plan` writes the job that runs `batchscore run` as
    /// shards of one run (Azure Batch job schedule, Kubernetes Indexed Job, Slurm array, AWS
    /// Batch array job); `batch fan-out` is the Azure Batch job manager that adds the shards.
    Batch(BatchArgs),
    /// Where a run stands, read from its output: shards committed or missing, units, rows,
    /// failed series. Exit code 0 complete, 3 complete with more failures than the run
    /// tolerates, 75 incomplete (wait and ask again), 2 no such run.
    Status(StatusArgs),
    /// Report on a complete run: one self-contained HTML page (inline SVG charts, opens
    /// offline) or JSON: summary, anomalies per hour, the series with the highest anomaly
    /// rates, score distribution, timelines of the worst series, drift, failed series.
    Report(ReportArgs),
    /// Show the effective settings (flags > environment > config file > defaults) as JSON;
    /// secret values are shown as ***.
    Config,
    /// The HTTP service: runs triggered by Azure Logic Apps (asynchronous pattern: POST
    /// /v1/runs answers 202 + Location, polled until 200) and real-time scoring for Azure
    /// Stream Analytics (POST /v1/score), with API keys or Entra ID tokens, /healthz, /readyz
    /// and Prometheus /metrics. Runs use the `run` settings below (the request's devices,
    /// sensors and window win over them). SIGTERM stops accepting, finishes requests in
    /// flight and leaves a running run resumable.
    Serve(Box<ServeArgs>),
}

/// `batchscore serve`. API keys are read from BATCHSCORE_API_KEYS (comma-separated) or a file,
/// never from a flag (flags show in process listings).
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Where runs are written: OUTPUT/RUN_ID/.
    #[arg(long, env = "BATCHSCORE_OUTPUT", value_name = "URL")]
    pub output: Option<String>,
    /// Failed devices a run tolerates: a count `N` or `P%`.
    #[arg(long, env = "BATCHSCORE_MAX_FAILED", value_name = "N|P%")]
    pub max_failed: Option<String>,
    /// Address to listen on (default 127.0.0.1:8080). Any other than loopback needs keys or
    /// tokens configured.
    #[arg(long, env = "BATCHSCORE_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// The URL callers reach this service at (behind an ingress); status URLs are built on it.
    /// Required to listen beyond loopback: a request's Host header is never used.
    #[arg(long, env = "BATCHSCORE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Without --public-url: peers (IP addresses, comma-separated) whose X-Forwarded-Host and
    /// X-Forwarded-Proto headers status URLs follow, e.g. a reverse proxy on this host. Other
    /// clients' forwarded headers are ignored.
    #[arg(long, env = "BATCHSCORE_TRUSTED_PROXIES", value_name = "IPS", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// File of accepted API keys, one a line (several for rotation).
    #[arg(long, env = "BATCHSCORE_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<String>,
    /// Accept Entra ID access tokens of this tenant (id or domain): its v2.0 key set, and its
    /// v1.0 and v2.0 issuers.
    #[arg(long, env = "BATCHSCORE_ENTRA_TENANT", value_name = "TENANT")]
    pub entra_tenant: Option<String>,
    /// Accept JWTs signed by keys of this JWKS URL (instead of --entra-tenant's).
    #[arg(long, env = "BATCHSCORE_JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,
    /// Accepted token issuer (`iss`); repeatable.
    #[arg(
        long = "jwt-issuer",
        env = "BATCHSCORE_JWT_ISSUERS",
        value_delimiter = ',',
        value_name = "ISS"
    )]
    pub jwt_issuers: Vec<String>,
    /// Accepted token audience (`aud`): this service's App ID URI or client id; repeatable.
    #[arg(
        long = "jwt-audience",
        env = "BATCHSCORE_JWT_AUDIENCES",
        value_delimiter = ',',
        value_name = "AUD"
    )]
    pub jwt_audiences: Vec<String>,
    /// Model file bytes held in memory for scoring (default 512MiB).
    #[arg(long, env = "BATCHSCORE_MODEL_CACHE", value_name = "SIZE")]
    pub model_cache: Option<String>,
    /// How often the registry index is read again to pick up new models (default 30s).
    #[arg(long, env = "BATCHSCORE_REGISTRY_REFRESH", value_name = "DURATION")]
    pub registry_refresh: Option<String>,
    /// Largest request body (default 4MiB).
    #[arg(long, env = "BATCHSCORE_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<String>,
    /// Most rows in one scoring request (default 10000).
    #[arg(long, env = "BATCHSCORE_MAX_ROWS", value_name = "N")]
    pub max_rows: Option<usize>,
    /// Scoring requests served at once (default 16 per core); more wait --queue-wait, then 503.
    #[arg(long, env = "BATCHSCORE_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// How long a scoring request waits for a slot before 503 (default 100ms).
    #[arg(long, env = "BATCHSCORE_QUEUE_WAIT", value_name = "DURATION")]
    pub queue_wait: Option<String>,
    /// Longest a scoring request may take, body upload included, before 408 (default 30s).
    #[arg(long, env = "BATCHSCORE_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Longest a client may take to send a request's head, and longest a connection may sit
    /// without a byte from its client while none of its requests is in flight, before it is
    /// closed (default 30s).
    #[arg(long, env = "BATCHSCORE_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Connections open at once; more are closed at once (default 1024).
    #[arg(long, env = "BATCHSCORE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Runs executed at once (default 1).
    #[arg(long, env = "BATCHSCORE_RUN_WORKERS", value_name = "N")]
    pub run_workers: Option<usize>,
    /// Runs that may wait for a worker before new ones get 503 (default 100).
    #[arg(long, env = "BATCHSCORE_MAX_QUEUED_RUNS", value_name = "N")]
    pub max_queued_runs: Option<usize>,
    /// Retry-After of 202 answers, in seconds (default 20, Logic Apps' own poll interval).
    #[arg(long, env = "BATCHSCORE_POLL_AFTER", value_name = "SECONDS")]
    pub poll_after: Option<u64>,
}

/// `batchscore aggregate`. Window settings default to the config file's `[aggregate]`.
#[derive(Debug, Args)]
pub struct AggregateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Where aggregated datasets are written: OUTPUT/RUN_ID/part-NNNNN.parquet.
    #[arg(long, env = "BATCHSCORE_AGGREGATE_OUTPUT", value_name = "URL")]
    pub output: Option<String>,
    /// Run id (default: derived from the input, selection, window and aggregation settings).
    #[arg(long, env = "BATCHSCORE_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,
    /// Window length: `5s`, `1m`, `15m`, `1h`, `1d`, `1h30m`.
    // Hyphen values reach the settings check, which says why `-1s` is no window length.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub every: Option<String>,
    /// Shift of the window grid from the epoch (default `0s`).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub offset: Option<String>,
    /// Which end of a window belongs to it: `left` ([start, end), the default) or `right`
    /// ((start, end]). Windows are labelled by their start either way.
    #[arg(long, value_enum, value_name = "SIDE")]
    pub closed: Option<ClosedArg>,
    /// Statistics per sensor, comma-separated: count, mean, std, min, max, first, last
    /// (default: all).
    #[arg(long, value_name = "LIST")]
    pub stats: Option<String>,
    /// Long input: one row per device and window with a column per sensor and statistic
    /// (`SENSOR_STAT`); needs --sensors, which fixes the columns.
    #[arg(long)]
    pub pivot: bool,
    /// Keep readings that repeat an earlier one's device, sensor and timestamp (default: drop
    /// them, keeping the first).
    #[arg(long)]
    pub keep_duplicates: bool,
    /// This process's shard, 0-based, and the number of shards.
    #[arg(long, env = "BATCHSCORE_SHARD_INDEX", value_name = "I")]
    pub shard_index: Option<u32>,
    #[arg(long, env = "BATCHSCORE_SHARD_COUNT", value_name = "N")]
    pub shard_count: Option<u32>,
    /// Bounds on the readings per work unit.
    #[arg(long, env = "BATCHSCORE_MIN_PART_ROWS", value_name = "ROWS")]
    pub min_part_rows: Option<u64>,
    #[arg(long, env = "BATCHSCORE_MAX_PART_ROWS", value_name = "ROWS")]
    pub max_part_rows: Option<u64>,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClosedArg {
    Left,
    Right,
}

/// `batchscore batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub command: BatchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Write the job for one run as N shards: the run id, the window and the shard count are
    /// fixed here, so every shard scores the same plan; each shard finds its index in the
    /// engine's environment. The `batchscore run` flags follow `--`.
    Plan(Box<BatchPlanArgs>),
    /// The job manager task of an Azure Batch job (what `batch plan --target azure-batch`
    /// schedules): fixes the run's window from the job's creation time, stores the run's plan,
    /// and adds the shard tasks through the Batch REST API, signed in as the node's managed
    /// identity. Retrying it adds nothing twice. The `batchscore run` flags follow `--`.
    FanOut(Box<FanOutArgs>),
}

/// Where tasks find batchscore on an Azure Batch node (shared by `plan` and `fan-out`).
#[derive(Debug, Args, Clone)]
pub struct AzureTaskArgs {
    /// Application package holding the `batchscore` binary, `ID[:VERSION]` (azure-batch);
    /// tasks run `$AZ_BATCH_APP_PACKAGE_<id>_<version>/batchscore`.
    #[arg(long = "app-package", value_name = "ID[:VERSION]")]
    pub app_packages: Vec<String>,
    /// The program to run when it is on the node's PATH or at a fixed path (default
    /// `batchscore`); with --image, the image's `batchscore`.
    #[arg(long, value_name = "PATH")]
    pub program: Option<String>,
    /// Longest run of one shard attempt, e.g. `50m` (Batch ends it and retries).
    #[arg(long, value_name = "PERIOD")]
    pub task_wall_clock: Option<String>,
    /// Batch REST API version (default 2025-06-01).
    #[arg(long, value_name = "VERSION")]
    pub api_version: Option<String>,
}

/// `batchscore batch fan-out`.
#[derive(Debug, Args)]
pub struct FanOutArgs {
    /// The schedule's name; the run id is NAME-WINDOWSTART.
    #[arg(long)]
    pub name: String,
    /// Shard tasks to add.
    #[arg(long, value_name = "N")]
    pub shards: u32,
    /// The schedule's interval (`1h`): the window is the last whole interval ending at least
    /// --delay before the job was created.
    #[arg(long, value_name = "PERIOD", required_unless_present = "from")]
    pub every: Option<String>,
    /// Time left after an interval ends for late readings (`5m`).
    #[arg(long, value_name = "PERIOD", default_value = "0s")]
    pub delay: String,
    /// Take this as the job's creation time instead of asking Batch (re-running an interval
    /// by hand).
    #[arg(long, value_name = "TIME", conflicts_with = "from")]
    pub scheduled_time: Option<String>,
    /// A fixed window instead of one derived from the job (a one-off run).
    #[arg(long, value_name = "TIME", requires = "to")]
    pub from: Option<String>,
    #[arg(long, value_name = "TIME", requires = "from")]
    pub to: Option<String>,
    /// Retries of a shard task that exits nonzero.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Container image holding batchscore (container pools).
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub task: AzureTaskArgs,
    /// `batchscore run` flags every shard gets.
    #[arg(last = true, value_name = "RUN_FLAGS")]
    pub run_args: Vec<String>,
}

/// The engines `batch plan` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    AzureBatch,
    Kubernetes,
    Slurm,
    AwsBatch,
}

/// `batchscore batch plan`.
#[derive(Debug, Args)]
pub struct BatchPlanArgs {
    /// The engine: `azure-batch` (a job schedule for `az batch job-schedule create
    /// --json-file`, or with --from/--to/--last a one-off job and its tasks), `kubernetes`
    /// (Indexed Job YAML), `slurm` (sbatch array script) or `aws-batch` (`aws batch
    /// submit-job --cli-input-json` input).
    #[arg(long, value_enum)]
    pub target: TargetArg,
    /// Shards of the run (tasks several times the node count let the engine balance them).
    #[arg(long, value_name = "N")]
    pub shards: u32,
    /// The job's name (lowercase letters, digits, '-'); the run id is NAME-WINDOWSTART.
    #[arg(long)]
    pub name: String,
    /// Shards running at once (default: all).
    #[arg(long, value_name = "N")]
    pub parallelism: Option<u32>,
    /// Retries of a shard after a retry-worthy failure (exit codes other than 2, 3, 4; on
    /// Azure Batch, which cannot tell codes apart, after any nonzero exit).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Container image holding batchscore (kubernetes; azure-batch container pools).
    #[arg(long)]
    pub image: Option<String>,
    /// The pool the jobs run on (azure-batch): one created with a user-assigned identity
    /// (see infra/batch-pool.bicep).
    #[arg(long)]
    pub pool: Option<String>,
    /// Run every PERIOD (azure-batch): a job schedule, each job scoring the last whole
    /// interval (`1h`, `15m`, `1d`).
    #[arg(long, value_name = "PERIOD", conflicts_with_all = ["from", "to", "last"])]
    pub every: Option<String>,
    /// Start each job this long after its interval ends, for late readings (azure-batch).
    #[arg(long, value_name = "PERIOD", default_value = "0s")]
    pub delay: String,
    /// How late a job may start before Batch skips its slot (azure-batch; default: half the
    /// interval).
    #[arg(long, value_name = "PERIOD")]
    pub start_window: Option<String>,
    /// Longest a job runs before Batch ends it (azure-batch; default and maximum: the
    /// interval, so one slow run cannot make the next slot go missing).
    #[arg(long, value_name = "PERIOD")]
    pub job_wall_clock: Option<String>,
    /// `NAME=VALUE` every task gets (azure-batch), e.g.
    /// `AZURE_STORAGE_ACCOUNT_NAME=acct`; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Client id of the pool's user-assigned identity (azure-batch): tasks sign in to storage
    /// and Batch as it (sets AZURE_CLIENT_ID for every task).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    #[command(flatten)]
    pub azure: AzureTaskArgs,
    /// Job queue (aws-batch).
    #[arg(long)]
    pub queue: Option<String>,
    /// Job definition (aws-batch).
    #[arg(long)]
    pub job_definition: Option<String>,
    /// Window start of the run (RFC 3339, `YYYY-MM-DD HH:MM:SS` UTC or `YYYY-MM-DD`).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Window end (exclusive).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// The last whole period before now, fixed when the template is written.
    #[arg(long, value_name = "PERIOD", conflicts_with_all = ["from", "to"])]
    pub last: Option<String>,
    /// Write the template to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<String>,
    /// `batchscore run` flags every shard gets (input, registry, output, devices, ...).
    #[arg(last = true, value_name = "RUN_FLAGS")]
    pub run_args: Vec<String>,
}

/// `batchscore status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the run's output lives (the run's `--output`).
    #[arg(long, env = "BATCHSCORE_OUTPUT", value_name = "URL")]
    pub output: Option<String>,
    /// The run id.
    #[arg(long, env = "BATCHSCORE_RUN_ID", value_name = "ID")]
    pub run_id: String,
    /// `text` (default) or `json` (the whole status).
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,
}

/// `batchscore report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where the run's output lives (the run's `--output`).
    #[arg(long, env = "BATCHSCORE_OUTPUT", value_name = "URL")]
    pub output: Option<String>,
    /// The run id.
    #[arg(long, env = "BATCHSCORE_RUN_ID", value_name = "ID")]
    pub run_id: String,
    /// `html` (default) or `json` (the same numbers).
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
    /// Where to write it: a file or URL, or `-` for stdout. Default: `report.html` (or
    /// `report.json`) in the run's tables folder, `OUTPUT/_runs/RUN_ID/`.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
}

/// Options shared by `run` and `train`.
#[derive(Debug, Args, Clone, Default)]
pub struct InputArgs {
    /// Readings: a directory or URL holding Parquet or CSV files, wide or long layout.
    #[arg(long, env = "BATCHSCORE_INPUT", value_name = "URL")]
    pub input: Option<String>,
    /// Input layout: `wide` (device, timestamp, one column per sensor: one model per device),
    /// `long` (timestamp, device, sensor, value: one model per device and sensor), or `auto`
    /// (long when the input has sensor and value columns; the default).
    #[arg(long, env = "BATCHSCORE_LAYOUT", value_enum, value_name = "LAYOUT")]
    pub layout: Option<LayoutChoice>,
    /// Model registry directory or URL.
    #[arg(long, env = "BATCHSCORE_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// Devices: `0..1000` (half-open), `0..=999`, `3,7,9`, `all`, or `@file` with such items.
    #[arg(long, env = "BATCHSCORE_DEVICES", value_name = "SEL")]
    pub devices: Option<String>,
    /// Long layout: sensors whose series to cover, e.g. `1,2,5` or `temperature`; default all.
    #[arg(long, env = "BATCHSCORE_SENSORS", value_name = "NAMES")]
    pub sensors: Option<String>,
    /// Window start (inclusive): RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC) or `YYYY-MM-DD`.
    #[arg(long, env = "BATCHSCORE_FROM", value_name = "TIME")]
    pub from: Option<String>,
    /// Window end (exclusive), same formats as --from.
    #[arg(long, env = "BATCHSCORE_TO", value_name = "TIME")]
    pub to: Option<String>,
    /// The last whole period before now, aligned to the clock (e.g. `1h`, `15m`, `1d`);
    /// instead of --from/--to.
    #[arg(long, env = "BATCHSCORE_LAST", value_name = "PERIOD", conflicts_with_all = ["from", "to"])]
    pub last: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long, env = "BATCHSCORE_THREADS", value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Where runs are written: OUTPUT/RUN_ID/.
    #[arg(long, env = "BATCHSCORE_OUTPUT", value_name = "URL")]
    pub output: Option<String>,
    /// Run id (default: derived from inputs, registry, devices and window).
    #[arg(long, env = "BATCHSCORE_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,
    /// This process's shard, 0-based.
    #[arg(long, env = "BATCHSCORE_SHARD_INDEX", value_name = "I")]
    pub shard_index: Option<u32>,
    /// Number of shards the job is split into.
    #[arg(long, env = "BATCHSCORE_SHARD_COUNT", value_name = "N")]
    pub shard_count: Option<u32>,
    /// Read the shard index from this environment variable (e.g. JOB_COMPLETION_INDEX,
    /// AWS_BATCH_JOB_ARRAY_INDEX, SLURM_ARRAY_TASK_ID) when --shard-index is not given.
    #[arg(long, env = "BATCHSCORE_SHARD_INDEX_ENV", value_name = "VAR")]
    pub shard_index_env: Option<String>,
    /// Failed devices tolerated before the run exits with code 3: a count `N` or `P%`.
    #[arg(long, env = "BATCHSCORE_MAX_FAILED", value_name = "N|P%")]
    pub max_failed: Option<String>,
    /// Aggregate each device's readings as the config's `[aggregate]` section says (windows,
    /// statistics, pivot) before scoring them; the same as `[run] aggregate = true`.
    #[arg(long, env = "BATCHSCORE_RUN_AGGREGATE")]
    pub aggregate: bool,
    /// Do not measure drift against the models' training data (no `drift.parquet`); the same
    /// as `[run] drift = false`.
    #[arg(long, env = "BATCHSCORE_NO_DRIFT")]
    pub no_drift: bool,
    /// Smallest work unit (and part file) in rows, unless the input is smaller.
    #[arg(long, env = "BATCHSCORE_MIN_PART_ROWS", value_name = "ROWS")]
    pub min_part_rows: Option<u64>,
    /// Largest work unit (and part file) in rows, unless one row group is larger.
    #[arg(long, env = "BATCHSCORE_MAX_PART_ROWS", value_name = "ROWS")]
    pub max_part_rows: Option<u64>,
    /// Output columns: `scored` (keys, inputs, score, decision, is_anomaly, model_version,
    /// run_id) or `reference` (TS, Device, Tag, Val, Prediction with 1 = anomaly; long layout).
    #[arg(long, env = "BATCHSCORE_PROFILE", value_enum, value_name = "PROFILE")]
    pub profile: Option<ProfileArg>,
    /// Part file format.
    #[arg(long, env = "BATCHSCORE_OUTPUT_FORMAT", value_enum, value_name = "FORMAT")]
    pub output_format: Option<FormatArg>,
    /// Plan only: show what would be read and written (files, row groups, units, run id) and
    /// write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutChoice {
    Auto,
    Wide,
    Long,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    Scored,
    Reference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// IsolationForest (scikit-learn's algorithm and scores).
    Iforest,
    /// PCA reconstruction error (smartcore).
    Pca,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Detector family (default iforest).
    #[arg(long, value_enum, value_name = "KIND")]
    pub detector: Option<DetectorArg>,
    /// PCA: components to keep, a count (`2`) or the share of variance to explain (`0.95`,
    /// the default).
    #[arg(long, value_name = "N|F")]
    pub components: Option<String>,
    /// PCA: standardise each feature (training mean and standard deviation) first, so that
    /// sensors on large scales do not own the components.
    #[arg(long)]
    pub standardize: bool,
    /// Trees per forest.
    #[arg(long, value_name = "N")]
    pub n_estimators: Option<usize>,
    /// Rows per tree: `auto` (min(256, rows)), a count, or a fraction like `0.5`.
    #[arg(long, value_name = "auto|N|F")]
    pub max_samples: Option<String>,
    /// Features per tree: a count or a fraction like `0.5` (default: all).
    #[arg(long, value_name = "N|F")]
    pub max_features: Option<String>,
    /// Draw rows with replacement.
    #[arg(long)]
    pub bootstrap: bool,
    /// Expected share of anomalies: `auto` (IsolationForest only: offset -0.5) or a fraction in
    /// (0, 0.5] (PCA default 0.01).
    #[arg(long, value_name = "auto|F")]
    pub contamination: Option<String>,
    /// Random seed (each device's forest is seeded from it and the device id).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Wide layout: feature columns, comma-separated, in model order (default: every sensor
    /// column). Long-layout models have one feature, their sensor's values.
    #[arg(long, value_name = "COLS", value_delimiter = ',')]
    pub features: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionArg {
    Device,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    Wide,
    Long,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Parquet,
    Csv,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of devices (ids 0..N).
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Sensors per device.
    #[arg(long, default_value_t = 8)]
    pub sensors: usize,
    /// Readings per device.
    #[arg(long, default_value_t = 1000)]
    pub rows_per_device: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory or URL: readings go to OUT/readings/, labels to OUT/labels.parquet.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// `device`: hive partitions device_id=N/; `none`: files of many devices sorted by device.
    #[arg(long, value_enum, default_value_t = PartitionArg::None)]
    pub partition: PartitionArg,
    #[arg(long, value_enum, default_value_t = LayoutArg::Wide)]
    pub layout: LayoutArg,
    #[arg(long, value_enum, default_value_t = FormatArg::Parquet)]
    pub format: FormatArg,
    /// First timestamp (RFC 3339 or YYYY-MM-DD).
    #[arg(long, default_value = "2026-01-01")]
    pub start: String,
    /// Seconds between readings.
    #[arg(long, default_value_t = 60)]
    pub interval_seconds: u32,
    /// Share of injected anomalous rows.
    #[arg(long, default_value_t = 0.01)]
    pub anomaly_rate: f64,
    /// Rows per file when not partitioned by device.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows_per_file: usize,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 65_536)]
    pub row_group_rows: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Model registry directory or URL.
    #[arg(long, env = "BATCHSCORE_REGISTRY", value_name = "URL", global = true)]
    pub registry: Option<String>,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// One line per model.
    List,
    /// Everything about one model.
    Show {
        /// The model key: a device id (`7`), or device and sensor (`7.3`).
        key: String,
    },
    /// Import scikit-learn models exported by scripts/export_sklearn.py (one model per file).
    Import {
        /// Interchange files (`.json`) or directories of them (paths or URLs).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// How file names (without `.json`) map to model keys: `{key}` (the name is the key),
        /// or `{device}` with an optional `{sensor}`, e.g. `model_{device}_{sensor}` gives the
        /// key `DEVICE.SENSOR`. Files that do not match are skipped and reported.
        #[arg(long, default_value = "{key}", value_name = "PATTERN")]
        key_pattern: String,
        /// Input column names in model order, for models fitted on arrays (default: the names
        /// stored with the model).
        #[arg(long, value_name = "COLS", value_delimiter = ',')]
        features: Option<Vec<String>>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Load and validate every model; report the bad ones (exit code 3 if any).
    Verify {
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}
