//! Integration tests: drive the real `batchscore` binary end to end on generated data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod aggregate;
mod azure;
mod azure_batch;
mod bounds;
mod common;
mod drift;
mod engines;
mod exactly_once;
mod failures;
mod hostile;
mod interrupt;
mod pipeline;
mod readers;
mod reference;
mod report;
mod serve;
mod settings;
mod sklearn;
