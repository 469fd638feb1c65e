//! Pruning: row groups (and CSV chunks) that cannot hold a selected device inside the window
//! are dropped before any data is read.

use arrow::datatypes::{DataType, TimeUnit};

use super::{CSV_CHUNK_BYTES, Dataset, InputFile, Slice, to_micros};
use crate::{DeviceSelection, TimeWindow};

impl Dataset {
    pub(super) fn prune(&mut self, selection: &DeviceSelection, window: &TimeWindow) {
        for (f, file) in self.files.iter().enumerate() {
            let file = match file {
                InputFile::Parquet(p) => p,
                InputFile::Csv(c) => {
                    // No statistics: each chunk is a slice of any device and time, with its
                    // share of the estimated rows.
                    let rows = c.estimated_rows();
                    if rows == 0 {
                        continue;
                    }
                    let (lo, hi) = self.hive_device[f].map_or((i64::MIN, i64::MAX), |d| (d, d));
                    for (chunk, range) in c.chunks(CSV_CHUNK_BYTES).into_iter().enumerate() {
                        let share = (rows as f64 * (range.end - range.start) as f64
                            / c.size().max(1) as f64)
                            .ceil() as u64;
                        let rows = share.max(1);
                        self.slices.push(Slice { file: f, row_group: chunk, lo, hi, rows });
                    }
                    continue;
                }
            };
            let unit = match file.schema().field_with_name(&self.columns.timestamp) {
                Ok(field) => match field.data_type() {
                    DataType::Timestamp(unit, _) => *unit,
                    _ => TimeUnit::Microsecond,
                },
                Err(_) => TimeUnit::Microsecond,
            };
            for rg in 0..file.num_row_groups() {
                let rows = file.row_group_rows(rg);
                if rows == 0 {
                    continue;
                }
                let (lo, hi) = match self.hive_device[f] {
                    Some(d) => (d, d),
                    // Without statistics the row group may hold any device.
                    None => {
                        file.int_range(rg, &self.columns.device).unwrap_or((i64::MIN, i64::MAX))
                    }
                };
                if !selection.overlaps(lo, hi) {
                    continue;
                }
                if let Some((t0, t1)) = file.int_range(rg, &self.columns.timestamp)
                    && !window.overlaps(to_micros(t0, unit), to_micros(t1, unit))
                {
                    continue;
                }
                self.slices.push(Slice { file: f, row_group: rg, lo, hi, rows });
            }
        }
    }
}
