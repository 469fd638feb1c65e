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

/// Devices held by more than one unit's interval, as sorted disjoint ranges.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SharedDevices(Vec<(i64, i64)>);

impl SharedDevices {
    pub fn contains(&self, device: i64) -> bool {
        let at = self.0.partition_point(|(_, hi)| *hi < device);
        self.0.get(at).is_some_and(|(lo, _)| *lo <= device)
    }
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

    /// Cuts the device range into disjoint intervals of about `target_rows` rows each, for
    /// jobs that need all of a device's rows in one unit (interval aggregation).
    ///
    /// Rows per device are estimated by spreading each row group's rows evenly over its device
    /// interval. A unit reads every row group that meets its interval and keeps the rows of its
    /// devices: row groups sorted by device are read once (those straddling a cut twice), row
    /// groups that each hold every device (files per time period) are read by every unit, and
    /// a unit's memory stays about `target_rows` rows either way.
    pub(crate) fn by_device(slices: &[Slice], target_rows: u64) -> Self {
        let target = target_rows.max(1) as f64;
        // Sweep over the slice bounds: at each, the rows per device of the slices covering
        // the interval up to the next bound.
        let mut events: Vec<(i128, f64, i32)> = slices
            .iter()
            .flat_map(|s| {
                let per_device = s.rows as f64 / (i128::from(s.hi) - i128::from(s.lo) + 1) as f64;
                [(i128::from(s.lo), per_device, 1), (i128::from(s.hi) + 1, -per_device, -1)]
            })
            .collect();
        events.sort_by_key(|e| e.0);
        let mut intervals: Vec<(i128, i128, f64)> = Vec::new();
        let (mut density, mut active) = (0.0f64, 0i32);
        for (i, (at, delta, count)) in events.iter().enumerate() {
            density += delta;
            active += count;
            let next = events.get(i + 1).map(|e| e.0);
            if let Some(next) = next.filter(|&n| n > *at)
                && active > 0
            {
                intervals.push((*at, next, density.max(f64::MIN_POSITIVE)));
            }
        }
        let mut cuts: Vec<(i128, i128, f64)> = Vec::new(); // [lo, hi] and estimated rows
        let mut open: Option<(i128, f64)> = None;
        for &(mut a, b, per_device) in &intervals {
            while a < b {
                let (start, acc) = open.unwrap_or((a, 0.0));
                let room = ((target - acc) / per_device).ceil().max(1.0);
                let take = (room as i128).min(b - a);
                let acc = acc + per_device * take as f64;
                if acc >= target {
                    cuts.push((start, a + take - 1, acc));
                    open = None;
                } else {
                    open = Some((start, acc));
                }
                a += take;
            }
            // A gap with no row group closes nothing: the next interval continues the unit.
        }
        if let (Some((start, acc)), Some(&(_, end, _))) = (open, intervals.last()) {
            cuts.push((start, end - 1, acc));
        }
        let units = cuts
            .into_iter()
            .enumerate()
            .map(|(index, (lo, hi, rows))| {
                let (lo, hi) = (lo as i64, hi as i64);
                let mut mine: Vec<usize> = (0..slices.len())
                    .filter(|&i| slices[i].lo <= hi && slices[i].hi >= lo)
                    .collect();
                mine.sort_by_key(|&i| (slices[i].file, slices[i].row_group));
                Unit { index, lo, hi, rows: rows.round() as u64, slices: mine }
            })
            .collect();
        Self { units }
    }

    /// The devices that more than one unit's interval holds: a unit that meets any other
    /// device holds all of its rows, so what it computes of that device is final.
    pub(crate) fn shared_devices(&self) -> SharedDevices {
        // Sweep over interval bounds; at one position, ends before starts, so touching
        // intervals ([a, b] and [b + 1, c]) share nothing.
        let mut bounds: Vec<(i128, i32)> = self
            .units
            .iter()
            .flat_map(|u| [(i128::from(u.lo), 1), (i128::from(u.hi) + 1, -1)])
            .collect();
        bounds.sort_unstable();
        let (mut depth, mut start, mut ranges) = (0, 0i128, Vec::new());
        for (at, step) in bounds {
            let before = depth;
            depth += step;
            if before < 2 && depth >= 2 {
                start = at;
            } else if before >= 2 && depth < 2 {
                // Both bounds lie within i64: `start` is some `lo`, `at - 1` some `hi`.
                ranges.push((start as i64, (at - 1) as i64));
            }
        }
        SharedDevices(ranges)
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
        let shared = plan.shared_devices();
        assert_eq!(shared, SharedDevices(vec![(4, 4)]));
        assert!((0..=20).all(|d| shared.contains(d) == (d == 4)));
        let plan = Plan::build(&slices, 1000);
        assert_eq!(plan.units.len(), 1);
        assert_eq!(plan.units[0].slices, vec![1, 2, 0, 3], "file order within a unit");
    }

    #[test]
    fn units_by_device_are_disjoint_and_share_row_groups_that_straddle_a_cut() {
        let slices = vec![
            slice(0, 0, 0, 4, 100),
            slice(0, 1, 4, 9, 100), // device 4 in two row groups
            slice(1, 0, 0, 9, 200), // a file of a later period, every device
        ];
        let plan = Plan::by_device(&slices, 200);
        let bounds: Vec<(i64, i64)> = plan.units.iter().map(|u| (u.lo, u.hi)).collect();
        assert_eq!(bounds, vec![(0, 4), (5, 9)]);
        assert_eq!(plan.units[0].slices, vec![0, 1, 2]);
        assert_eq!(plan.units[1].slices, vec![1, 2]);
        assert_eq!(plan.rows(), 400);
        assert_eq!(Plan::by_device(&[], 10).units, vec![]);
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
            let shared = plan.shared_devices();
            for device in -1..=221 {
                let holders = plan.units.iter().filter(|u| u.lo <= device && device <= u.hi).count();
                prop_assert_eq!(shared.contains(device), holders > 1, "device {}", device);
            }
            let mut all: Vec<usize> = (0..count)
                .flat_map(|i| plan.shard_units(Shard::new(i, count).unwrap()))
                .collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..plan.units.len()).collect::<Vec<_>>());
        }

        /// Units by device are disjoint device intervals in order, every device of every row
        /// group is in exactly one of them, and a unit reads exactly the row groups it meets.
        #[test]
        fn units_by_device_partition_the_devices(
            raw in proptest::collection::vec((-50i64..200, 0i64..30, 1u64..500), 1..40),
            target in 1u64..3000,
        ) {
            let slices: Vec<Slice> = raw.iter().enumerate()
                .map(|(i, (lo, w, rows))| slice(i % 3, i, *lo, lo + w, *rows)).collect();
            let plan = Plan::by_device(&slices, target);
            for pair in plan.units.windows(2) {
                prop_assert!(pair[0].hi < pair[1].lo, "disjoint, in order");
            }
            for (i, s) in slices.iter().enumerate() {
                for device in s.lo..=s.hi {
                    let holders: Vec<&Unit> =
                        plan.units.iter().filter(|u| u.lo <= device && device <= u.hi).collect();
                    prop_assert_eq!(holders.len(), 1, "device {}", device);
                    prop_assert!(holders[0].slices.contains(&i));
                }
            }
            prop_assert_eq!(plan.shared_devices(), SharedDevices::default(), "disjoint units");
            for u in &plan.units {
                prop_assert!(u.lo <= u.hi);
                for &s in &u.slices {
                    prop_assert!(slices[s].lo <= u.hi && slices[s].hi >= u.lo);
                }
            }
        }
    }
}
