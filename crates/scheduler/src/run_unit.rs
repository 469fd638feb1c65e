//! One unit of a scoring run: read its rows, aggregate them when the run asks, score each
//! series, count its values into the drift bins, and commit part, partials and receipt.

use batchscore_registry::Registry;

use crate::commit::{Committed, PartWrite, Receipt, RunCommit};
use crate::dataset::{Columns, Dataset, UnitTable};
use crate::output::OutputFormat;
use crate::plan::SharedDevices;
use crate::run::{RunSpec, part_options};
use crate::score::{ScoredUnit, score_unit};
use crate::{SchedulerError, TableLayout, UnitTransform};

pub(crate) struct UnitContext<'a> {
    pub spec: &'a RunSpec,
    pub dataset: &'a Dataset,
    /// The columns scored: the input's, or the transform's output.
    pub scored: &'a Columns,
    pub registry: &'a Registry,
    pub commit: &'a RunCommit,
    /// Devices more than one unit holds: their drift is merged at publish.
    pub shared: SharedDevices,
}

impl UnitContext<'_> {
    /// A unit's readings after the transform, as the table scoring reads.
    fn transformed(
        &self,
        unit: usize,
        table: UnitTable,
        transform: &dyn UnitTransform,
    ) -> Result<UnitTable, SchedulerError> {
        if table.device.is_empty() {
            return Ok(table);
        }
        let layout = TableLayout::of(&self.dataset.columns);
        let batch = crate::transform::unit_batch(&table, &layout)?;
        drop(table);
        let batch = crate::transform::apply_apart(transform, batch, &layout)
            .map_err(|source| SchedulerError::Transform { unit, source })?;
        UnitTable::of_batch(&format!("unit {unit} after aggregation"), &batch, self.scored)
    }

    /// Commits one unit, or returns its receipt if an earlier attempt committed it.
    pub fn process(&self, unit: &crate::Unit) -> Result<(Receipt, Committed), SchedulerError> {
        // Once stopped, no unit starts: those queued return at once.
        self.commit.location().check_cancelled()?;
        if let Some(receipt) = self.commit.committed_earlier(unit.index)? {
            return Ok((receipt, Committed::Earlier));
        }
        let spec = self.spec;
        let run_id = self.commit.run_id();
        let table = self.dataset.read_unit(
            &unit.slices,
            unit.lo..=unit.hi,
            &spec.selection,
            &spec.sensors,
            &spec.window,
        )?;
        let table = match &spec.transform {
            None => table,
            Some(transform) => self.transformed(unit.index, table, transform.as_ref())?,
        };
        let ScoredUnit { batch, outcomes: devices, drift } = score_unit(
            &table,
            self.scored,
            self.registry,
            run_id,
            &spec.output_spec,
            spec.drift.then_some(&self.shared),
        )?;
        drop(table);
        let drift = match drift.is_empty() {
            true => None,
            false => Some(crate::drift::encode_unit(run_id, unit.index, drift)?),
        };
        let Some(batch) = batch else {
            return self.commit.commit_unit(unit.index, None, devices, drift);
        };
        let options = part_options(run_id, unit.index);
        let path = spec.output_spec.part_path(unit.index);
        let out = self.commit.location();
        let batches = std::slice::from_ref(&batch);
        // One object at a path fixed by run id and unit, visible whole or not at all: a retry
        // rewrites the same bytes, never a second copy.
        let write = || {
            Ok(match spec.output_spec.format {
                OutputFormat::Parquet => {
                    out.write_parquet(&path, &batch.schema(), batches, &options)?
                }
                OutputFormat::Csv => out.write_csv(&path, batches)?,
            })
        };
        let part = PartWrite { path: path.clone(), rows: batch.num_rows() as u64, write: &write };
        self.commit.commit_unit(unit.index, Some(part), devices, drift)
    }
}
