//! The plan stored with a run: what the first shard's scan found (files, the row groups kept,
//! columns, units), so that the other shards of the run read it instead of listing the input
//! and reading every footer again. A shard then opens only the files of its own units, so its
//! start-up does not grow with the number of shards or of input files.

use batchscore_io::{Entry, Location};
use serde::{Deserialize, Serialize};

use crate::dataset::{Columns, Dataset, Slice};
use crate::{Plan, SchedulerError, Unit};

/// One input file of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// The device of a file in a hive partition (`device_id=N/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hive_device: Option<i64>,
}

/// A unit of the plan with its slices (indices into [`StoredPlan::slices`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredUnit {
    pub index: usize,
    pub lo: i64,
    pub hi: i64,
    pub rows: u64,
    pub slices: Vec<usize>,
}

/// What a run reads: stored in `_plan.json` by the first attempt of any shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredPlan {
    pub columns: Columns,
    pub files: Vec<StoredFile>,
    pub slices: Vec<Slice>,
    pub units: Vec<StoredUnit>,
    pub files_listed: usize,
    pub row_groups_total: usize,
    pub total_rows: u64,
}

impl StoredPlan {
    /// The plan a scan produced, as stored.
    pub fn of(dataset: &Dataset, plan: &Plan, total_rows: u64) -> Self {
        let files = dataset
            .files
            .iter()
            .zip(&dataset.hive_device)
            .zip(&dataset.identity)
            .map(|((_, hive_device), (path, size, tag))| StoredFile {
                path: path.clone(),
                size: *size,
                e_tag: (!tag.is_empty()).then(|| tag.clone()),
                hive_device: *hive_device,
            })
            .collect();
        Self {
            columns: dataset.columns.clone(),
            files,
            slices: dataset.slices.clone(),
            units: plan
                .units
                .iter()
                .map(|u| StoredUnit {
                    index: u.index,
                    lo: u.lo,
                    hi: u.hi,
                    rows: u.rows,
                    slices: u.slices.clone(),
                })
                .collect(),
            files_listed: dataset.files_listed,
            row_groups_total: dataset.row_groups_total,
            total_rows,
        }
    }

    /// The plan's units, without their slices: enough to assign units to shards.
    pub fn plan(&self) -> Plan {
        Plan {
            units: self
                .units
                .iter()
                .map(|u| Unit {
                    index: u.index,
                    lo: u.lo,
                    hi: u.hi,
                    rows: u.rows,
                    slices: Vec::new(),
                })
                .collect(),
        }
    }

    /// The dataset and plan of one shard: only the files of the units `mine` are opened (one
    /// footer or head read each); those units carry their slices, the others none (this shard
    /// never reads them).
    /// `plan_url` names the plan record in errors.
    pub fn for_units(
        &self,
        location: &Location,
        mine: &[usize],
        plan_url: &str,
    ) -> Result<(Dataset, Plan), SchedulerError> {
        let corrupt = |reason: &str| SchedulerError::CorruptRecord {
            url: plan_url.to_string(),
            reason: format!("the stored plan {reason}"),
        };
        let mut file_map: Vec<Option<usize>> = vec![None; self.files.len()];
        let mut entries = Vec::new();
        let mut hive_device = Vec::new();
        let mut slices = Vec::new();
        let mut plan = self.plan();
        for &u in mine {
            let stored = self.units.get(u).ok_or_else(|| corrupt("names a unit it lacks"))?;
            let mut unit_slices = Vec::with_capacity(stored.slices.len());
            for &s in &stored.slices {
                let slice = self.slices.get(s).ok_or_else(|| corrupt("names a slice it lacks"))?;
                let file =
                    self.files.get(slice.file).ok_or_else(|| corrupt("names a file it lacks"))?;
                let f = match file_map[slice.file] {
                    Some(f) => f,
                    None => {
                        entries.push(Entry {
                            path: file.path.clone(),
                            size: file.size,
                            e_tag: file.e_tag.clone(),
                        });
                        hive_device.push(file.hive_device);
                        file_map[slice.file] = Some(entries.len() - 1);
                        entries.len() - 1
                    }
                };
                slices.push(Slice { file: f, ..slice.clone() });
                unit_slices.push(slices.len() - 1);
            }
            if let Some(unit) = plan.units.get_mut(u) {
                unit.slices = unit_slices;
            }
        }
        let dataset = Dataset::from_parts(
            location,
            &entries,
            hive_device,
            self.columns.clone(),
            slices,
            (self.files_listed, self.row_groups_total),
        )?;
        Ok((dataset, plan))
    }
}
