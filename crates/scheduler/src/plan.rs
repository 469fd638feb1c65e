//! Work units: contiguous device intervals balanced by row count, and their shard assignment.

use serde::Serialize;

use crate::Shard;
use crate::dataset::Slice;

/// One unit of work: the selected rows of its row groups (`slices`), whose devices lie in
/// `lo..=hi`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    /// Position in the plan; names the unit's part file.
    pub index: usize,
    pub lo: i64,
    pub hi: i64,
    /// Rows in the unit's row groups (an upper bound on the rows it scores; for CSV chunks an
    /// estimate from the file's head).
    pub rows: u64,
    #[serde(skip)]
    pub(crate) slices: Vec<usize>,
}

/// Every unit of a job, in device order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub units: Vec<Unit>,
}

impl Plan {
    /// Packs row groups, in device order, into units of about `target_rows` rows.
    ///
    /// Every row group belongs to exactly one unit, so every input byte is read once. Units are
    /// cut at row-group boundaries, not at devices: a file sorted by device whose row groups each
    /// share a device with the next would otherwise be one unit. A device whose rows straddle a
    /// cut is in both units' device intervals; scoring scores each of its rows once, in whichever
    /// unit holds the row, and training sets such devices aside (see `train`).
    pub(crate) fn build(slices: &[Slice], target_rows: u64) -> Self {
        let mut order: Vec<usize> = (0..slices.len()).collect();
        order.sort_by_key(|&i| (slices[i].lo, slices[i].hi, slices[i].file, slices[i].row_group));
        let mut units: Vec<Unit> = Vec::new();
        for i in order {
            let s = &slices[i];
            match units.last_mut() {
                Some(u) if u.rows + s.rows <= target_rows => {
                    u.lo = u.lo.min(s.lo);
                    u.hi = u.hi.max(s.hi);
                    u.rows += s.rows;
                    u.slices.push(i);
                }
                _ => {
                    units.push(Unit { index: 0, lo: s.lo, hi: s.hi, rows: s.rows, slices: vec![i] })
                }
            }
        }
        for (index, unit) in units.iter_mut().enumerate() {
            unit.index = index;
            // Read each file's row groups in file order.
            unit.slices.sort_by_key(|&i| (slices[i].file, slices[i].row_group));
        }
        Self { units }
    }

    /// Total rows over all units.
    pub fn rows(&self) -> u64 {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// The units of `shard`: largest units first to the least loaded shard, ties to the lower
    /// index, so every process computes the same assignment and loads differ by at most one unit.
    pub fn shard_units(&self, shard: Shard) -> Vec<usize> {
        let n = shard.count() as usize;
        let mut by_size: Vec<&Unit> = self.units.iter().collect();
        by_size.sort_by_key(|u| (std::cmp::Reverse(u.rows), u.index));
        let mut load = vec![0u64; n];
        let mut mine = Vec::new();
        for unit in by_size {
            let (target, _) =
                load.iter().enumerate().min_by_key(|(i, l)| (**l, *i)).unwrap_or((0, &0));
            load[target] += unit.rows;
            if target == shard.index() as usize {
                mine.push(unit.index);
            }
        }
        mine.sort_unstable();
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slice(file: usize, row_group: usize, lo: i64, hi: i64, rows: u64) -> Slice {
        Slice { file, row_group, lo, hi, rows }
    }

    #[test]
    fn units_cut_at_row_groups_in_device_order() {
        let slices = vec![
            slice(1, 0, 10, 19, 100),
            slice(0, 0, 0, 4, 100),
            slice(0, 1, 4, 9, 100), // device 4 spans two row groups
            slice(2, 0, 20, 20, 50),
        ];
        let plan = Plan::build(&slices, 160);
        let bounds: Vec<(i64, i64)> = plan.units.iter().map(|u| (u.lo, u.hi)).collect();
        assert_eq!(bounds, vec![(0, 4), (4, 9), (10, 20)]);
        assert_eq!(plan.units[2].slices, vec![0, 3]);
        assert_eq!(plan.rows(), 350);
        let plan = Plan::build(&slices, 1000);
        assert_eq!(plan.units.len(), 1);
        assert_eq!(plan.units[0].slices, vec![1, 2, 0, 3], "file order within a unit");
    }

    proptest! {
        /// Every row group lands in exactly one unit, units are disjoint device intervals, and
        /// the shards partition the units.
        #[test]
        fn units_and_shards_partition_the_input(
            raw in proptest::collection::vec((0i64..200, 0i64..20, 1u64..500), 1..60),
            target in 1u64..3000,
            count in 1u32..6,
        ) {
            let slices: Vec<Slice> = raw.iter().enumerate()
                .map(|(i, (lo, w, rows))| slice(i % 3, i, *lo, lo + w, *rows)).collect();
            let plan = Plan::build(&slices, target);
            let mut seen: Vec<usize> = plan.units.iter().flat_map(|u| u.slices.clone()).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..slices.len()).collect::<Vec<_>>());
            for pair in plan.units.windows(2) {
                prop_assert!(pair[0].lo <= pair[1].lo, "units in device order");
            }
            for u in &plan.units {
                for &s in &u.slices {
                    prop_assert!(slices[s].lo >= u.lo && slices[s].hi <= u.hi);
                }
            }
            let mut all: Vec<usize> = (0..count)
                .flat_map(|i| plan.shard_units(Shard::new(i, count).unwrap()))
                .collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..plan.units.len()).collect::<Vec<_>>());
        }
    }
}
