//! The `batchscore` binary: parse the command line, resolve settings, call the library crates,
//! render results, and map the error chain to a documented exit code.
//!
//! Exit codes: 0 success; 1 internal error; 2 usage or configuration error; 3 the job finished
//! but failed items exceed the threshold (`--max-failed`, `models verify`, `train`); 4 bad input
//! data (malformed or truncated file, missing column, wrong type, corrupt registry index);
//! 75 storage unavailable, worth retrying later.

mod cli;
mod commands;
mod config;
mod printer;
mod progress;
mod settings;

use std::process::ExitCode;

use batchscore_io::{IoError, Storage};
use batchscore_registry::RegistryError;
use batchscore_scheduler::SchedulerError;
use batchscore_synth::SynthError;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::ConfigFile;
use crate::printer::Printer;
use crate::settings::UsageError;

const EXIT_INTERNAL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BAD_INPUT: u8 = 4;
const EXIT_RETRY: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer { quiet: cli.quiet };
    init_logging(&cli);
    let mut storage = None;
    match dispatch(&cli, printer, &mut storage) {
        Ok(code) => ExitCode::from(code),
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn dispatch(cli: &Cli, printer: Printer, slot: &mut Option<Storage>) -> anyhow::Result<u8> {
    let config = match &cli.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let options = settings::storage_options(&cli.storage_options, &config, std::env::vars())?;
    let storage = slot.insert(Storage::with_options(options)?);
    match &cli.command {
        Command::Run(args) => commands::run(args, &config, storage, printer),
        Command::Train(args) => commands::train(args, &config, storage, printer),
        Command::Generate(args) => commands::generate(args, storage, printer),
        Command::Models(args) => commands::models(args, &config, storage, printer),
        Command::Config => commands::show_config(&config, storage, printer),
    }
}

fn io_code(e: &IoError) -> u8 {
    match e {
        e if e.is_retryable() => EXIT_RETRY,
        IoError::Parquet { .. } | IoError::MissingColumn { .. } | IoError::ColumnType { .. } => {
            EXIT_BAD_INPUT
        }
        IoError::Encode { .. } => EXIT_INTERNAL,
        // Missing objects, bad URLs, permission problems: fix the configuration.
        _ => EXIT_USAGE,
    }
}

/// Maps the first typed error in the chain to an exit code.
fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some()
            || cause.downcast_ref::<clap::Error>().is_some()
        {
            return EXIT_USAGE;
        }
        if let Some(e) = cause.downcast_ref::<SchedulerError>() {
            return match e {
                SchedulerError::InvalidSetting { .. } | SchedulerError::RunConflict { .. } => {
                    EXIT_USAGE
                }
                SchedulerError::Input(_)
                | SchedulerError::NoInput { .. }
                | SchedulerError::CorruptRecord { .. } => EXIT_BAD_INPUT,
                SchedulerError::Io(e) => io_code(e),
                SchedulerError::Registry(e) => registry_code(e),
                SchedulerError::ThreadPool { .. } | SchedulerError::Arrow { .. } => EXIT_INTERNAL,
            };
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return registry_code(e);
        }
        if let Some(e) = cause.downcast_ref::<SynthError>() {
            return match e {
                SynthError::Invalid(_) => EXIT_USAGE,
                SynthError::Io(e) => io_code(e),
                SynthError::Arrow { .. } => EXIT_INTERNAL,
            };
        }
        if let Some(e) = cause.downcast_ref::<IoError>() {
            return io_code(e);
        }
    }
    EXIT_INTERNAL
}

fn registry_code(e: &RegistryError) -> u8 {
    match e {
        RegistryError::Io(e) => io_code(e),
        RegistryError::InvalidKey { .. } | RegistryError::NotARegistry { .. } => EXIT_USAGE,
        RegistryError::Encode { .. } => EXIT_INTERNAL,
        _ => EXIT_BAD_INPUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl std::error::Error + Send + Sync + 'static) -> u8 {
        exit_code(&anyhow::Error::new(e).context("while running the job"))
    }

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let unavailable = || object_store::Error::Generic {
            store: "test",
            source: "connection reset by peer".into(),
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
        assert_eq!(code(UsageError("bad".into())), EXIT_USAGE);
        assert_eq!(code(std::io::Error::other("unexpected")), EXIT_INTERNAL);
    }
}
