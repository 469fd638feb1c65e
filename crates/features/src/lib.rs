//! Table work with polars, kept in this one crate so that only it pays polars' build time:
//! interval aggregation and long-to-wide pivots of readings (a [`UnitTransform`] the
//! scheduler runs per unit), and the report of a complete run ([`RunReport`], drawn as HTML
//! with inline SVG by [`report::html`]).
//!
//! Tables cross between arrow-rs (the engine's I/O) and polars as Arrow IPC bytes
//! ([`exchange`]).
//!
//! [`UnitTransform`]: batchscore_scheduler::UnitTransform

mod aggregate;
mod error;
pub mod exchange;
pub mod report;

pub use aggregate::{AggregateConfig, Aggregation, Closed, Stat};
pub use error::FeaturesError;
pub use report::RunReport;
