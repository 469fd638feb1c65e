//! One unit of a scoring run: read its rows, aggregate them when the run asks, score each
//! series, count its values into the drift bins, and commit part, partials and receipt.
//!
//! A unit streams: its rows arrive in chunks of whole devices (see
//! [`Dataset::read_unit_in_chunks`]), and each chunk is transformed, scored and encoded into
//! the part before the next is read, so memory holds a chunk, not the part.

use batchscore_io::ObjectWriter;
use batchscore_registry::Registry;

use crate::commit::{Committed, PartInfo, Receipt, RunCommit, UnitOutput};
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
    /// A chunk's readings after the transform, as the table scoring reads.
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
        self.commit.commit_unit(unit.index, &|| self.produce(unit))
    }

    /// Reads, scores and encodes the unit chunk by chunk into its part: one object at a path
    /// fixed by run id and unit, visible whole or not at all, so a retry rewrites the same
    /// bytes, never a second copy.
    fn produce(&self, unit: &crate::Unit) -> Result<UnitOutput, SchedulerError> {
        let spec = self.spec;
        let run_id = self.commit.run_id();
        let path = spec.output_spec.part_path(unit.index);
        let mut part = PartStream { unit: unit.index, path: &path, writer: None, rows: 0 };
        let (mut devices, mut drift) = (Vec::new(), Vec::new());
        let filter = (&(unit.lo..=unit.hi), &spec.selection, &spec.sensors, &spec.window);
        self.dataset.read_unit_in_chunks(&unit.slices, filter, spec.chunk_rows, &mut |table| {
            let table = match &spec.transform {
                None => table,
                Some(transform) => self.transformed(unit.index, table, transform.as_ref())?,
            };
            let ScoredUnit { batch, outcomes, drift: observed } = score_unit(
                &table,
                self.scored,
                self.registry,
                run_id,
                &spec.output_spec,
                spec.drift.then_some(&self.shared),
            )?;
            drop(table);
            devices.extend(outcomes);
            drift.extend(observed);
            match batch {
                Some(batch) => part.write(self, &batch),
                None => Ok(()),
            }
        })?;
        let drift = match drift.is_empty() {
            true => None,
            false => Some(crate::drift::encode_unit(run_id, unit.index, drift)?),
        };
        Ok(UnitOutput { part: part.finish()?, devices, drift })
    }
}

/// A unit's part as it is written: opened with the first scored rows.
struct PartStream<'p> {
    unit: usize,
    path: &'p str,
    writer: Option<ObjectWriter<'p>>,
    rows: u64,
}

impl<'p> PartStream<'p> {
    fn write(
        &mut self,
        context: &'p UnitContext<'_>,
        batch: &arrow::array::RecordBatch,
    ) -> Result<(), SchedulerError> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let out = context.commit.location();
                let writer = match context.spec.output_spec.format {
                    OutputFormat::Parquet => {
                        let options = part_options(context.commit.run_id(), self.unit);
                        out.parquet_writer(self.path, &batch.schema(), &options)?
                    }
                    OutputFormat::Csv => out.csv_writer(self.path)?,
                };
                self.writer.insert(writer)
            }
        };
        writer.write(batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn finish(self) -> Result<Option<PartInfo>, SchedulerError> {
        let Some(writer) = self.writer else {
            return Ok(None);
        };
        let written = writer.finish()?;
        Ok(Some(PartInfo {
            unit: self.unit,
            path: self.path.to_string(),
            rows: self.rows,
            bytes: written.bytes,
            sha256: written.sha256,
        }))
    }
}
