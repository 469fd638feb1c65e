//! The `batchscore` binary: parse the command line, resolve settings, call the library crates,
//! render results, and map the error chain to a documented exit code.
//!
//! Exit codes: 0 success; 1 internal error; 2 usage or configuration error; 3 the job finished
//! but failed items exceed the threshold (`--max-failed`, `models verify`, `train`); 4 bad input
//! data (malformed or truncated file, missing column, wrong type, corrupt registry index);
//! 75 storage unavailable, worth retrying later; 130 / 143 stopped by SIGINT / SIGTERM (the same
//! command resumes the run).

mod aggregate;
mod azure;
mod cli;
mod commands;
mod config;
mod printer;
mod progress;
mod report;
mod runs;
mod serve;
mod settings;
mod signals;
mod units;
mod usage;

use std::process::ExitCode;

use anyhow::Context;
use batchscore_batch::azure::BatchError;
use batchscore_io::{ErrorClass, IoError, Storage};
use batchscore_registry::RegistryError;
use batchscore_scheduler::SchedulerError;
use batchscore_synth::SynthError;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::ConfigFile;
use crate::printer::Printer;
use crate::usage::UsageError;

const EXIT_RETRY: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer { quiet: cli.quiet };
    init_logging(&cli);
    let mut storage = None;
    let mut received = None;
    match dispatch(&cli, printer, &mut storage, &mut received) {
        Ok(code) => ExitCode::from(code),
        Err(error) if error_class(&error) == ErrorClass::Interrupted => {
            // One line: what stopped the job and how to resume it.
            let signal = received.as_ref().and_then(signals::Received::signal);
            let by = signal.map_or("a request", signals::name);
            let line = format!("stopped by {by}: {error}");
            let line = match &storage {
                Some(storage) => storage.scrub(&line),
                None => batchscore_io::redact(&line),
            };
            Printer { quiet: false }.note(&line);
            ExitCode::from(signals::exit_code(signal.unwrap_or(signal_hook::consts::SIGINT)))
        }
        Err(error) => {
            let code = exit_code(&error);
            let causes = batchscore_scheduler::error_causes(error.as_ref());
            let mut message = String::from("error:");
            for (i, cause) in causes.iter().enumerate() {
                message.push_str(if i == 0 { " " } else { "\n  caused by: " });
                message.push_str(cause);
            }
            let mut message = batchscore_io::compact_service_errors(&message);
            if code == EXIT_RETRY {
                message.push_str("\n  (storage unavailable: retrying later may succeed)");
            }
            // Storage errors can quote request URLs and options: no credential leaves here.
            let message = match &storage {
                Some(storage) => storage.scrub(&message),
                None => batchscore_io::redact(&message),
            };
            // Errors are shown even with --quiet.
            Printer { quiet: false }.note(&message);
            ExitCode::from(code)
        }
    }
}

fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            // On a terminal the progress bar says what info lines would.
            0 if std::io::stderr().is_terminal() => "warn",
            0 | 1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        cli::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).init()
        }
    }
}

fn dispatch(
    cli: &Cli,
    printer: Printer,
    slot: &mut Option<Storage>,
    received: &mut Option<signals::Received>,
) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config = ConfigFile::resolve(cli.config.as_deref(), !cli.no_config, &cwd)?;
    let options = settings::storage_options(&cli.storage_options, &config, std::env::vars())?;
    let storage = slot.insert(Storage::with_options(options)?);
    // The service finishes its requests in flight after a signal; every other command is a job
    // that answers a signal within a second.
    let grace = match cli.command {
        Command::Serve(_) => None,
        _ => Some(signals::JOB_GRACE),
    };
    *received = Some(
        signals::install(storage.canceller(), grace).context("cannot install signal handlers")?,
    );
    match &cli.command {
        Command::Run(args) => commands::run(args, &config, storage, printer),
        Command::Train(args) => commands::train(args, &config, storage, printer),
        Command::Aggregate(args) => aggregate::aggregate(args, &config, storage, printer),
        Command::Generate(args) => commands::generate(args, storage, printer),
        Command::Models(args) => commands::models(args, &config, storage, printer),
        Command::Status(args) => runs::status(args, &config, storage, printer),
        Command::Report(args) => report::report(args, &config, storage, printer),
        Command::Batch(args) => match &args.command {
            cli::BatchCommand::Plan(plan) => runs::batch_plan(plan, printer),
            cli::BatchCommand::FanOut(fan_out) => azure::fan_out(fan_out, printer),
        },
        Command::Config => commands::show_config(&config, storage, printer),
        Command::Serve(args) => serve::serve(args, &config, storage, printer),
    }
}

/// The exit code of an error class (decided in `ErrorClass::exit_code`).
fn class_code(class: ErrorClass) -> u8 {
    class.exit_code()
}

/// The class of the first typed error in the chain; an error none of the crates typed is a
/// defect of ours.
fn error_class(error: &anyhow::Error) -> ErrorClass {
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some()
            || cause.downcast_ref::<clap::Error>().is_some()
        {
            return ErrorClass::Usage;
        }
        if let Some(e) = cause.downcast_ref::<SchedulerError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<SynthError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<IoError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<BatchError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<batchscore_serve::ServeError>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<batchscore_features::FeaturesError>() {
            return e.class();
        }
    }
    ErrorClass::Internal
}

/// Maps an error chain to its documented exit code.
fn exit_code(error: &anyhow::Error) -> u8 {
    class_code(error_class(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl std::error::Error + Send + Sync + 'static) -> u8 {
        exit_code(&anyhow::Error::new(e).context("while running the job"))
    }

    #[test]
    fn every_class_has_its_documented_code() {
        assert_eq!(class_code(ErrorClass::Usage), 2);
        assert_eq!(class_code(ErrorClass::BadInput), 4);
        assert_eq!(class_code(ErrorClass::Unavailable), 75);
        assert_eq!(class_code(ErrorClass::Internal), 1);
        assert_eq!(class_code(ErrorClass::Interrupted), 130);
    }

    const EXIT_INTERNAL: u8 = 1;
    const EXIT_USAGE: u8 = 2;
    const EXIT_BAD_INPUT: u8 = 4;

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let unavailable = || object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Server returned non-2xx status code: 503 Service Unavailable".into(),
        };
        let storage = |source| IoError::Storage { url: "u".into(), source };
        assert_eq!(code(storage(unavailable())), EXIT_RETRY);
        assert_eq!(code(SchedulerError::Io(storage(unavailable()))), EXIT_RETRY);
        assert_eq!(code(RegistryError::Io(storage(unavailable()))), EXIT_RETRY);
        let denied =
            object_store::Error::Generic { store: "test", source: "Permission denied".into() };
        assert_eq!(code(storage(denied)), EXIT_USAGE);
        assert_eq!(code(IoError::NotFound { url: "u".into() }), EXIT_USAGE);
        assert_eq!(
            code(SchedulerError::Input(IoError::MissingColumn {
                url: "u".into(),
                column: "c".into()
            })),
            EXIT_BAD_INPUT
        );
        assert_eq!(
            code(SchedulerError::NoInput { url: "u".into(), other_files: 0 }),
            EXIT_BAD_INPUT
        );
        assert_eq!(
            code(RegistryError::CorruptIndex { url: "u".into(), reason: "r".into() }),
            EXIT_BAD_INPUT
        );
        assert_eq!(
            code(SchedulerError::InputMissing { url: "u".into() }),
            EXIT_USAGE,
            "a missing --input is a usage error"
        );
        assert_eq!(code(UsageError("bad".into())), EXIT_USAGE);
        assert_eq!(code(SynthError::Invalid("x".into())), EXIT_USAGE);
        assert_eq!(code(std::io::Error::other("unexpected")), EXIT_INTERNAL);
    }
}
