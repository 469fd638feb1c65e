//! Deterministic synthetic IoT telemetry with labelled anomalies.
//!
//! Every device gets its own normal behaviour: sensor means and scales drawn around realistic
//! physical values, sensors correlated through two slow latent factors (one with a daily cycle),
//! a slow linear drift and sensor noise. About 1 % of rows are anomalies of three kinds: spikes
//! on 1–3 sensors, level shifts of a few sensors over a segment, and a sensor stuck at a rail
//! value. The output depends only on the [`GenerateSpec`] (seed included), never on threads.

mod device;
mod write;

pub use device::{AnomalyKind, DeviceSeries, sensor_names};
pub use write::{
    FileFormat, GenerateSpec, GenerateSummary, Layout, Partitioning, SynthError, generate,
};
