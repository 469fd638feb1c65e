//! The plan fingerprint: a digest of everything that determines a run's output (the input's
//! files, the registry index, selections, window, columns, output, units), which the run id
//! derives from and the conflict checks rest on, and a digest per component, so that a refused
//! shard or rerun can say what differs.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use batchscore_registry::Registry;

use crate::dataset::{Columns, Dataset};
use crate::output::OutputSpec;
use crate::{InputColumns, Plan, RunSpec, SchedulerError, TimeWindow};

/// What determines the run's output, hashed: the digest the run id and the conflict check rest
/// on, and a digest per component, so a refused rerun can say what changed (the input files it
/// names come from the stored plan).
pub(crate) struct Fingerprint {
    pub digest: String,
    pub components: BTreeMap<String, String>,
}

pub(crate) fn plan_fingerprint(
    spec: &RunSpec,
    dataset: &Dataset,
    registry: &Registry,
    plan: &Plan,
    target: u64,
) -> Result<Fingerprint, SchedulerError> {
    #[derive(Serialize)]
    struct Material<'a> {
        version: &'static str,
        input: &'a str,
        files: &'a [(String, u64, String)],
        registry: &'a str,
        registry_index: &'a str,
        selection: String,
        sensors: String,
        window: &'a TimeWindow,
        columns: &'a InputColumns,
        resolved: &'a Columns,
        output: &'a OutputSpec,
        target_rows: u64,
        units: Vec<(i64, i64)>,
        /// Absent without a transform, so runs without one keep the ids they had.
        #[serde(skip_serializing_if = "Option::is_none")]
        transform: Option<serde_json::Value>,
        /// Absent when drift is measured (the default), for the same reason.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        without_drift: bool,
    }
    let material = Material {
        version: "batchscore-run-v1",
        input: spec.input.url(),
        files: &dataset.identity,
        registry: registry.url(),
        registry_index: registry.fingerprint(),
        selection: spec.selection.canonical(),
        sensors: spec.sensors.canonical(),
        window: &spec.window,
        columns: &spec.columns,
        resolved: &dataset.columns,
        output: &spec.output_spec,
        target_rows: target,
        units: plan.units.iter().map(|u| (u.lo, u.hi)).collect(),
        transform: spec.transform.as_ref().map(|t| t.describe()),
        without_drift: !spec.drift,
    };
    // An empty fallback here would give every plan the same run id and disarm the conflict
    // check that rests on it.
    let digest = digest_of(&material)?;
    let mut components = setting_components(spec, registry, target)?;
    for (name, value) in [
        ("input files", &material.files as &dyn erased::Json),
        ("input columns", &material.resolved),
        ("work units", &material.units),
    ] {
        components.insert(name.to_string(), digest_of(value)?);
    }
    Ok(Fingerprint { digest, components })
}

pub(crate) fn digest_of(value: &dyn erased::Json) -> Result<String, SchedulerError> {
    value
        .to_json()
        .map(|bytes| hex::encode(Sha256::digest(&bytes)))
        .map_err(|e| SchedulerError::Encode { what: "plan fingerprint", reason: e.to_string() })
}

/// The digests of what a shard's own settings decide (not what a scan finds): the part of
/// the fingerprint a shard reading a stored plan can check against it.
pub(crate) fn setting_components(
    spec: &RunSpec,
    registry: &Registry,
    target: u64,
) -> Result<BTreeMap<String, String>, SchedulerError> {
    let mut components = BTreeMap::new();
    for (name, value) in [
        ("input location", &spec.input.url() as &dyn erased::Json),
        ("registry location", &registry.url()),
        ("registry index (models trained or imported since)", &registry.fingerprint()),
        ("device selection", &spec.selection.canonical()),
        ("sensor selection", &spec.sensors.canonical()),
        ("time window", &spec.window),
        ("column settings", &spec.columns),
        ("output profile or format", &spec.output_spec),
        ("part size bounds", &target),
    ] {
        components.insert(name.to_string(), digest_of(value)?);
    }
    if let Some(transform) = &spec.transform {
        components.insert("aggregation settings".into(), digest_of(&transform.describe())?);
    }
    if !spec.drift {
        components.insert("drift measurement".into(), digest_of(&false)?);
    }
    Ok(components)
}

/// JSON encoding behind a trait object, so components of different types hash alike.
pub(crate) mod erased {
    pub(crate) trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}
