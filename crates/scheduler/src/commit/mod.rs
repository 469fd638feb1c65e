//! The commit protocol: exactly-once output on object stores that have no rename.
//!
//! Layout under `OUTPUT/RUN_ID/`:
//! - `_plan.json`: what the run id stands for (plan fingerprint, units, shard count, run-level
//!   settings), create-only; an attempt with other inputs or another shard count is refused
//!   instead of mixing two plans.
//! - `part-NNNNN.parquet` (or `.csv`): scored rows of unit N, visible whole or not at all.
//! - `_drift/unit-NNNNN.bin`: unit N's drift partials (scoring runs), written before its
//!   receipt; merged into `drift.parquet` when the run completes.
//! - `_receipts/part-NNNNN.json`: what unit N wrote (part size, checksum, device outcomes),
//!   written create-only after its part; a unit is committed when both exist with the recorded
//!   size. Receipts hold no timings, so concurrent attempts of a unit write identical bytes.
//! - `_manifests/shard-I-of-N.json`: one per shard.
//! - `_SUCCESS`: see below.
//!
//! Under `OUTPUT/_runs/RUN_ID/` (the run's other tables, out of its folder's readers' way):
//! - `failures/shard-I-of-N.parquet`: one per shard with failed series.
//! - `drift.parquet`: drift per series and feature, written just before `_SUCCESS`.
//!
//! Last, `OUTPUT/RUN_ID/_SUCCESS`: the merged manifest, written create-only once every shard has its manifest,
//!   and validated whenever it is found. Readers follow it, not a directory listing.
//!
//! [`RunCommit`] is the only writer of these objects and the only judge of "is this unit
//! committed?"; the job around it orchestrates.

mod records;

use std::collections::{BTreeMap, HashMap};

use batchscore_io::Location;

pub(crate) use records::FORMAT;
pub(crate) use records::from_json;
use records::to_json;
pub use records::{DeviceOutcome, DeviceStatus, Manifest, PartInfo, ShardError, Totals};
pub(crate) use records::{PLAN, PlanRecord, Receipt, SUCCESS, failures_table, merge_outcomes};

use crate::{SchedulerError, Shard};

/// Reads the shard manifest at `path` of the run `run_id` split into `shard_count` shards; a
/// manifest of another run or shard count is a damaged record.
pub(crate) fn read_manifest(
    out: &Location,
    path: &str,
    run_id: &str,
    shard_count: u32,
) -> Result<Manifest, SchedulerError> {
    let m: Manifest = from_json(out, path, &out.get(path)?)?;
    if m.run_id != run_id || m.shard_count != shard_count {
        return Err(SchedulerError::CorruptRecord {
            url: out.url_of(path),
            reason: format!("a manifest of run `{}` with {} shards", m.run_id, m.shard_count),
        });
    }
    Ok(m)
}

/// Checks a `_SUCCESS` found in `out`: a merged manifest of the run `plan` records, written by
/// `shard_count` shards, whose totals agree with its parts and outcomes. A damaged one is an
/// error, never "complete".
pub(crate) fn validate_success(
    out: &Location,
    bytes: &[u8],
    plan: &PlanRecord,
    shard_count: u32,
) -> Result<Manifest, SchedulerError> {
    let url = out.url_of(SUCCESS);
    let corrupt = |reason: String| SchedulerError::CorruptRecord { url: url.clone(), reason };
    let m: Manifest = from_json(out, SUCCESS, bytes)?;
    if m.format != FORMAT || m.run_id != plan.run_id || m.scope != "all" {
        return Err(corrupt(format!(
            "format {}, run `{}`, scope `{}`: not this run's merged manifest",
            m.format, m.run_id, m.scope
        )));
    }
    if m.shard_count != shard_count {
        return Err(corrupt(format!("written by {} shards, not {shard_count}", m.shard_count)));
    }
    let units = plan.units as u64;
    if m.totals != Totals::of(&m.parts, &m.devices, units)
        || m.parts.iter().any(|p| p.unit as u64 >= units)
    {
        return Err(corrupt("its totals do not match its parts and outcomes".into()));
    }
    Ok(m)
}

/// One attempt's hold on a run directory, from the claim to `_SUCCESS`.
#[derive(Debug)]
pub(crate) struct RunCommit {
    /// The output location, for the run's tables (`_runs/RUN_ID/...`).
    output: Location,
    /// The run's folder.
    out: Location,
    shard: Shard,
    plan: PlanRecord,
    /// Objects in the run directory, with their sizes, when the attempt claimed it.
    listing: HashMap<String, u64>,
}

/// Where "is this unit committed?" reads the sizes of objects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sizes {
    /// The listing taken at the claim: no request per unit on the first pass.
    Listed,
    /// Asked now: after a failed upload, another attempt may have committed since.
    Fresh,
}

/// Whether a unit was committed now or found committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    Now,
    Earlier,
}

/// What a complete run publishes beside `_SUCCESS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// The merged manifest alone (jobs that only transform data).
    Manifest,
    /// The drift table too (scoring runs).
    Drift,
}

/// What producing a unit wrote and found: its part (when any series scored), its series'
/// outcomes and its drift partials (scoring runs).
pub(crate) struct UnitOutput {
    pub part: Option<PartInfo>,
    pub devices: Vec<DeviceOutcome>,
    pub drift: Option<bytes::Bytes>,
}

/// Produces a unit: reads it, writes its part at its fixed path, returns what it wrote. Called
/// again after a storage failure, it writes the same bytes.
pub(crate) type ProduceUnit<'a> = dyn Fn() -> Result<UnitOutput, SchedulerError> + 'a;

impl RunCommit {
    /// Claims the run's directory under `output` for `plan`: writes `_plan.json` create-only,
    /// or checks that the record found there is for the same plan and shard count; then lists
    /// the directory once.
    pub fn claim(
        output: &Location,
        plan: PlanRecord,
        shard: Shard,
    ) -> Result<Self, SchedulerError> {
        let out = crate::layout::run_dir(output, &plan.run_id)?;
        if out.put_if_absent(PLAN, to_json("plan record", &plan)?)? {
            return Self::open(output, out, plan, shard);
        }
        let found: PlanRecord = from_json(&out, PLAN, &out.get(PLAN)?)?;
        if found.run_id != plan.run_id || found.fingerprint != plan.fingerprint {
            return Err(SchedulerError::RunConflict {
                run_id: plan.run_id.clone(),
                url: out.url().to_string(),
                changes: found.differences(&plan),
            });
        }
        Self::check_shards(output, out, found, shard)
    }

    /// Joins the run whose `_plan.json` holds `found` (a shard that read the stored plan):
    /// checks the shard count, nothing is written.
    pub fn join(
        output: &Location,
        found: PlanRecord,
        shard: Shard,
    ) -> Result<Self, SchedulerError> {
        let out = crate::layout::run_dir(output, &found.run_id)?;
        Self::check_shards(output, out, found, shard)
    }

    fn check_shards(
        output: &Location,
        out: Location,
        found: PlanRecord,
        shard: Shard,
    ) -> Result<Self, SchedulerError> {
        if let Some(planned) = found.shard_count
            && planned != shard.count()
        {
            return Err(SchedulerError::ShardCountConflict {
                run_id: found.run_id,
                url: out.url().to_string(),
                planned,
                given: shard.count(),
            });
        }
        Self::open(output, out, found, shard)
    }

    /// Lists the run directory once, for "committed?" on the first pass.
    fn open(
        output: &Location,
        out: Location,
        plan: PlanRecord,
        shard: Shard,
    ) -> Result<Self, SchedulerError> {
        let listing = out.list("")?.into_iter().map(|e| (e.path, e.size)).collect();
        Ok(Self { output: output.clone(), out, shard, plan, listing })
    }

    pub fn run_id(&self) -> &str {
        &self.plan.run_id
    }

    pub fn url(&self) -> &str {
        self.out.url()
    }

    /// The run's directory, where the caller writes parts through [`RunCommit::commit_unit`].
    pub fn location(&self) -> &Location {
        &self.out
    }

    /// The receipt of `unit` if it is committed: its receipt is there, names this run and
    /// unit, and its part is in place with the recorded size.
    fn committed(&self, unit: usize, sizes: Sizes) -> Result<Option<Receipt>, SchedulerError> {
        let path = Receipt::path(unit);
        if sizes == Sizes::Listed && !self.listing.contains_key(&path) {
            return Ok(None);
        }
        let Some(bytes) = self.out.get_opt(&path)? else {
            return Ok(None);
        };
        let receipt: Receipt = from_json(&self.out, &path, &bytes)?;
        if receipt.unit != unit || receipt.run_id != self.plan.run_id {
            tracing::warn!(unit, "receipt of another unit or run; rewriting the unit");
            return Ok(None);
        }
        let Some(part) = &receipt.part else {
            return Ok(Some(receipt));
        };
        let size = match sizes {
            Sizes::Listed => self.listing.get(&part.path).copied(),
            Sizes::Fresh => self.out.size_of(&part.path)?,
        };
        if size == Some(part.bytes) {
            Ok(Some(receipt))
        } else {
            tracing::warn!(unit, "part missing or damaged; rewriting it");
            Ok(None)
        }
    }

    /// The receipt of `unit` if an earlier attempt committed it (from the claim's listing).
    pub fn committed_earlier(&self, unit: usize) -> Result<Option<Receipt>, SchedulerError> {
        self.committed(unit, Sizes::Listed)
    }

    /// Commits one unit: `produce` writes its part (if it has one) at a fixed path, then its
    /// drift partials and its receipt are written.
    ///
    /// A concurrent attempt of this unit (Azure Batch reruns a task whose node it lost) may
    /// commit first: committing a block list discards the blocks of other uploads of the same
    /// blob, so our upload can fail. Its commit is then adopted if its receipt is there, else
    /// the unit is produced again from scratch, which writes the same bytes.
    pub fn commit_unit(
        &self,
        unit: usize,
        produce: &ProduceUnit<'_>,
    ) -> Result<(Receipt, Committed), SchedulerError> {
        let output = match produce() {
            Ok(output) => output,
            Err(first) if Self::worth_retrying(&first) => {
                if let Some(receipt) = self.committed(unit, Sizes::Fresh)? {
                    tracing::info!(unit, "committed by another attempt");
                    return Ok((receipt, Committed::Earlier));
                }
                tracing::warn!(unit, error = %first, "unit failed on storage; producing it again");
                produce()?
            }
            Err(e) => return Err(e),
        };
        if let Some(drift) = output.drift {
            // Same plan, same bytes: a file an earlier attempt left is the same file.
            self.out.put_if_absent(&crate::drift::unit_path(unit), drift)?;
        }
        let receipt = Receipt {
            format: FORMAT,
            run_id: self.plan.run_id.clone(),
            unit,
            part: output.part,
            devices: output.devices,
        };
        let path = Receipt::path(unit);
        if !self.out.put_if_absent(&path, to_json("receipt", &receipt)?)? {
            // A receipt exists although the unit was not committed: its part was missing, and
            // the part just written (same plan, same bytes) restores it. The record stays.
            tracing::debug!(unit, "receipt already present");
        }
        Ok((receipt, Committed::Now))
    }

    /// A storage failure (not a stop) may be another attempt's commit, or pass.
    fn worth_retrying(e: &SchedulerError) -> bool {
        e.class() != batchscore_io::ErrorClass::Interrupted
            && (matches!(e, SchedulerError::Io(_)) || e.is_retryable())
    }

    /// Commits this shard: its failures table (if any series failed) and its manifest, both
    /// create-only. `devices` are the shard's merged outcomes.
    pub fn commit_shard(
        &self,
        units: u64,
        parts: Vec<PartInfo>,
        devices: Vec<DeviceOutcome>,
        timings_ms: BTreeMap<String, u64>,
        settings: serde_json::Value,
    ) -> Result<Manifest, SchedulerError> {
        let name = self.shard.name();
        let mut failures_tables = Vec::new();
        if devices.iter().any(|d| d.status == DeviceStatus::Failed) {
            let path =
                crate::layout::tables_path(&self.plan.run_id, &format!("failures/{name}.parquet"));
            self.output.put_if_absent(&path, failures_table(&self.plan.run_id, &devices)?)?;
            failures_tables.push(path);
        }
        let manifest = Manifest::assemble(
            &self.plan.run_id,
            name.clone(),
            self.shard.count(),
            units,
            parts,
            devices,
            failures_tables,
            timings_ms,
            settings,
        );
        self.out
            .put_if_absent(&format!("_manifests/{name}.json"), to_json("manifest", &manifest)?)?;
        Ok(manifest)
    }

    /// Writes `_SUCCESS` once every shard of the run has its manifest, merging them
    /// (`complete_outcomes` adds what only the whole run knows, such as selected devices no
    /// shard saw, and `Publish::Drift` merges the units' drift partials into the drift table);
    /// validates a `_SUCCESS` that is already there. The merged manifest when the run is
    /// complete, `None` while other shards are missing. A complete run's directory is then
    /// swept of staging files a killed attempt left.
    pub fn publish_success(
        &self,
        complete_outcomes: impl FnOnce(&mut Vec<DeviceOutcome>),
        publish: Publish,
    ) -> Result<Option<Manifest>, SchedulerError> {
        if let Some(bytes) = self.out.get_opt(SUCCESS)? {
            let manifest = self.validate_success(&bytes)?;
            self.sweep();
            return Ok(Some(manifest));
        }
        let count = self.shard.count();
        let names: Vec<String> =
            (0..count).map(|i| format!("_manifests/{}.json", Shard::name_of(i, count))).collect();
        // Listed paths are relative to the run directory, `_manifests/...` included.
        let present: std::collections::HashSet<String> =
            self.out.list("_manifests")?.into_iter().map(|e| e.path).collect();
        if !names.iter().all(|n| present.contains(n)) {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut devices = Vec::new();
        let mut failures_tables = Vec::new();
        let mut timings_ms = BTreeMap::new();
        for path in &names {
            let m = read_manifest(&self.out, path, &self.plan.run_id, count)?;
            parts.extend(m.parts);
            devices.extend(m.devices);
            failures_tables.extend(m.failures_tables);
            for (phase, t) in m.timings_ms {
                timings_ms.insert(format!("{}.{phase}", m.scope), t);
            }
        }
        let mut devices = merge_outcomes(devices);
        complete_outcomes(&mut devices);
        devices.sort_by(DeviceOutcome::order);
        parts.sort_by_key(|p| p.unit);
        let mut manifest = Manifest::assemble(
            &self.plan.run_id,
            "all".into(),
            count,
            self.plan.units as u64,
            parts,
            devices,
            failures_tables,
            timings_ms,
            self.plan.settings.clone(),
        );
        if publish == Publish::Drift {
            manifest.drift = Some(crate::drift::publish(
                &self.output,
                &self.out,
                &self.plan.run_id,
                self.plan.units,
            )?);
        }
        self.out.put_if_absent(SUCCESS, to_json("success manifest", &manifest)?)?;
        self.sweep();
        Ok(Some(manifest))
    }

    /// Checks a `_SUCCESS` found in place (see [`validate_success`]).
    fn validate_success(&self, bytes: &[u8]) -> Result<Manifest, SchedulerError> {
        validate_success(&self.out, bytes, &self.plan, self.shard.count())
    }

    /// Removes staging files a killed attempt left on local disk (object_store stages a local
    /// write as `NAME#N` and renames it into place; a kill in between leaves it, and readers
    /// that glob `part-*` would take it for a part). Object stores have no such files: an
    /// unfinished upload is invisible. Only a complete run is swept, so no attempt still
    /// writing loses a staging file it needs; failures here only cost a warning.
    fn sweep(&self) {
        match self.out.remove_staging_files("") {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(run_id = %self.plan.run_id, files = n, "removed staging files of killed attempts")
            }
            Err(e) => {
                tracing::warn!(run_id = %self.plan.run_id, error = %e, "cannot remove staging files")
            }
        }
    }
}
