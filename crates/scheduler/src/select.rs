//! Validated job settings: device and sensor selections, time windows, shards and failure
//! thresholds.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use serde::Serialize;

use crate::SchedulerError;

fn invalid(setting: &'static str, reason: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidSetting { setting, reason: reason.into() }
}

/// Which devices a job covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DeviceSelection {
    /// Every device found in the input.
    All,
    /// Sorted, disjoint, non-adjacent inclusive ranges (inclusive, so that `i64::MAX`, a valid
    /// device id, can be selected).
    Ranges(Vec<RangeInclusive<i64>>),
}

impl DeviceSelection {
    /// Parses `all`, `0..1000` (half-open), `0..=999`, `3,7,9`, or a mix, separated by commas or
    /// white space (so the contents of an `@file` parse too).
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        let mut ranges = Vec::new();
        let tokens: Vec<&str> =
            text.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).collect();
        if tokens.is_empty() {
            return Err(invalid("devices", "empty selection"));
        }
        for token in &tokens {
            if token.eq_ignore_ascii_case("all") {
                if tokens.len() > 1 {
                    return Err(invalid("devices", "`all` cannot be combined with other devices"));
                }
                return Ok(DeviceSelection::All);
            }
            let number = |s: &str| {
                s.trim().parse::<i64>().map_err(|_| {
                    invalid("devices", format!("`{token}` is not a device id, a range or `all`"))
                })
            };
            let empty = || invalid("devices", format!("`{token}` is an empty range"));
            let range = if let Some((a, b)) = token.split_once("..=") {
                number(a)?..=number(b)?
            } else if let Some((a, b)) = token.split_once("..") {
                let (a, b) = (number(a)?, number(b)?);
                a..=b.checked_sub(1).ok_or_else(empty)?
            } else {
                let d = number(token)?;
                d..=d
            };
            if range.is_empty() {
                return Err(empty());
            }
            ranges.push(range);
        }
        ranges.sort_by_key(|r| (*r.start(), *r.end()));
        let mut merged: Vec<RangeInclusive<i64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                // Overlapping or adjacent ranges merge (`0..5,5..10` is `0..10`).
                Some(last) if i128::from(*r.start()) <= i128::from(*last.end()) + 1 => {
                    *last = *last.start()..=(*last.end()).max(*r.end());
                }
                _ => merged.push(r),
            }
        }
        Ok(DeviceSelection::Ranges(merged))
    }

    /// True if `device` is selected.
    pub fn contains(&self, device: i64) -> bool {
        match self {
            DeviceSelection::All => true,
            DeviceSelection::Ranges(ranges) => {
                let i = ranges.partition_point(|r| *r.end() < device);
                ranges.get(i).is_some_and(|r| *r.start() <= device)
            }
        }
    }

    /// True if any device in `lo..=hi` is selected.
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        match self {
            DeviceSelection::All => true,
            DeviceSelection::Ranges(ranges) => {
                let i = ranges.partition_point(|r| *r.end() < lo);
                ranges.get(i).is_some_and(|r| *r.start() <= hi)
            }
        }
    }

    /// The selected devices, for finite selections.
    pub fn devices(&self) -> Option<impl Iterator<Item = i64> + '_> {
        match self {
            DeviceSelection::All => None,
            DeviceSelection::Ranges(ranges) => Some(ranges.iter().flat_map(|r| r.clone())),
        }
    }

    /// Number of selected devices, for finite selections.
    pub fn count(&self) -> Option<u64> {
        match self {
            DeviceSelection::All => None,
            DeviceSelection::Ranges(r) => {
                Some(r.iter().map(|r| r.end().abs_diff(*r.start()).saturating_add(1)).sum())
            }
        }
    }

    /// A canonical text form (`all` or merged ranges), used in run ids and manifests.
    pub fn canonical(&self) -> String {
        match self {
            DeviceSelection::All => "all".into(),
            DeviceSelection::Ranges(ranges) => ranges
                .iter()
                // Half-open, as the selections of earlier builds: run ids derived from it stay.
                .map(|r| format!("{}..{}", r.start(), i128::from(*r.end()) + 1))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Which sensors a long-layout job covers (the wide layout scores the columns each device
/// model was trained on).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub enum SensorSelection {
    #[default]
    All,
    /// Sensor names as they appear in the input's sensor column.
    Only(BTreeSet<String>),
}

impl SensorSelection {
    /// Parses `all` or sensor names separated by commas or white space (`1,2,5`,
    /// `temperature pressure`).
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        let names: BTreeSet<String> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Err(invalid("sensors", "empty selection"));
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
            if names.len() > 1 {
                return Err(invalid("sensors", "`all` cannot be combined with sensor names"));
            }
            return Ok(SensorSelection::All);
        }
        Ok(SensorSelection::Only(names))
    }

    /// True if readings of `sensor` are selected.
    pub fn contains(&self, sensor: &str) -> bool {
        match self {
            SensorSelection::All => true,
            SensorSelection::Only(names) => names.contains(sensor),
        }
    }

    /// The selected names, for explicit selections.
    pub fn names(&self) -> Option<&BTreeSet<String>> {
        match self {
            SensorSelection::All => None,
            SensorSelection::Only(names) => Some(names),
        }
    }

    /// A canonical text form (`all` or sorted names), used in run ids and manifests.
    pub fn canonical(&self) -> String {
        match self {
            SensorSelection::All => "all".into(),
            SensorSelection::Only(names) => names.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

/// A half-open time window `[from, to)` in microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TimeWindow {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

impl TimeWindow {
    /// A window; `from` must be before `to` when both are given.
    pub fn new(from_us: Option<i64>, to_us: Option<i64>) -> Result<Self, SchedulerError> {
        if let (Some(f), Some(t)) = (from_us, to_us)
            && f >= t
        {
            return Err(invalid("from/to", "the window's start must be before its end"));
        }
        Ok(Self { from_us, to_us })
    }

    /// True if `ts` is inside the window.
    pub fn contains(&self, ts: i64) -> bool {
        self.from_us.is_none_or(|f| ts >= f) && self.to_us.is_none_or(|t| ts < t)
    }

    /// True if any instant of `lo..=hi` is inside the window.
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.from_us.is_none_or(|f| hi >= f) && self.to_us.is_none_or(|t| lo < t)
    }
}

/// This process's share of a job: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// The whole job in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The most shards a run is split into: as many as an AWS Batch array job has children,
    /// and the last shard to commit reads every shard's manifest.
    pub const MAX_COUNT: u32 = 10_000;

    /// Shard `index` of `count`; `index < count <= MAX_COUNT`.
    pub fn new(index: u32, count: u32) -> Result<Self, SchedulerError> {
        if count > Self::MAX_COUNT {
            return Err(invalid(
                "shard",
                format!(
                    "{count} shards: a run has at most {} (more tasks than nodes already \
                     balance well at a few per node)",
                    Self::MAX_COUNT
                ),
            ));
        }
        if count == 0 || index >= count {
            return Err(invalid(
                "shard",
                format!("shard index {index} is not below the shard count {count}"),
            ));
        }
        Ok(Self { index, count })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard's name in commit records, e.g. `shard-00002-of-00008`.
    pub fn name(&self) -> String {
        Self::name_of(self.index, self.count)
    }

    /// The name of shard `index` of `count`.
    pub(crate) fn name_of(index: u32, count: u32) -> String {
        format!("shard-{index:05}-of-{count:05}")
    }
}

/// How many failed devices a run tolerates before it counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub enum MaxFailed {
    Count(u64),
    Percent(f64),
}

impl MaxFailed {
    /// Parses `N` or `P%`.
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        let text = text.trim();
        if let Some(p) = text.strip_suffix('%') {
            let p: f64 =
                p.trim().parse().map_err(|_| invalid("max-failed", format!("`{text}`")))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(invalid("max-failed", "a percentage must be within 0..=100"));
            }
            return Ok(MaxFailed::Percent(p));
        }
        text.parse().map(MaxFailed::Count).map_err(|_| {
            invalid("max-failed", format!("`{text}` is neither a count nor a percentage"))
        })
    }

    /// True if `failed` of `total` devices is more than tolerated.
    pub fn exceeded(&self, failed: u64, total: u64) -> bool {
        match *self {
            MaxFailed::Count(n) => failed > n,
            MaxFailed::Percent(p) => failed as f64 * 100.0 > p * total as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_selections() {
        assert_eq!(DeviceSelection::parse("all").unwrap(), DeviceSelection::All);
        assert_eq!(DeviceSelection::parse("0..1000").unwrap().count(), Some(1000));
        let s = DeviceSelection::parse("3,7,9").unwrap();
        assert_eq!(s.devices().unwrap().collect::<Vec<_>>(), vec![3, 7, 9]);
        let s = DeviceSelection::parse("5..8\n1 2..=3\n7").unwrap();
        assert_eq!(s.canonical(), "1..4,5..8");
        assert!(s.contains(6) && !s.contains(4) && !s.contains(8));
        assert!(s.overlaps(3, 5) && !s.overlaps(4, 4) && !s.overlaps(8, 100));
        for bad in ["", "x", "5..5", "3..1", "3..=2", "all,3", "1..x"] {
            assert!(DeviceSelection::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Regression: `i64::MAX` is a device id, but selecting it (alone or as a range end)
    /// overflowed.
    #[test]
    fn the_extreme_device_ids_can_be_selected() {
        let max = i64::MAX;
        let s = DeviceSelection::parse(&max.to_string()).unwrap();
        assert!(s.contains(max) && !s.contains(max - 1) && s.count() == Some(1));
        assert_eq!(s.canonical(), "9223372036854775807..9223372036854775808");
        let s = DeviceSelection::parse(&format!("{}..={max}", i64::MIN)).unwrap();
        assert!(s.contains(i64::MIN) && s.contains(max) && s.contains(0));
        assert_eq!(s.count(), Some(u64::MAX), "saturates");
        assert_eq!(s.devices().unwrap().next(), Some(i64::MIN));
        assert!(
            DeviceSelection::parse(&format!("{}..{}", max - 1, max)).unwrap().contains(max - 1)
        );
    }

    #[test]
    fn parses_sensor_selections() {
        assert_eq!(SensorSelection::parse("all").unwrap(), SensorSelection::All);
        let s = SensorSelection::parse("3, 1\ntemperature").unwrap();
        assert!(s.contains("1") && s.contains("temperature") && !s.contains("2"));
        assert_eq!(s.canonical(), "1,3,temperature");
        assert!(SensorSelection::parse(" , ").is_err() && SensorSelection::parse("all,1").is_err());
    }

    #[test]
    fn windows_shards_and_thresholds() {
        let w = TimeWindow::new(Some(10), Some(20)).unwrap();
        assert!(w.contains(10) && !w.contains(20) && w.overlaps(0, 10) && !w.overlaps(20, 30));
        assert!(TimeWindow::new(Some(5), Some(5)).is_err());
        assert!(Shard::new(3, 3).is_err() && Shard::new(0, 0).is_err());
        assert_eq!(Shard::new(2, 8).unwrap().name(), "shard-00002-of-00008");
        assert!(MaxFailed::parse("0").unwrap().exceeded(1, 100));
        assert!(!MaxFailed::parse("5%").unwrap().exceeded(5, 100));
        assert!(MaxFailed::parse("5%").unwrap().exceeded(6, 100));
        assert!(MaxFailed::parse("150%").is_err() && MaxFailed::parse("-1").is_err());
    }

    proptest! {
        #[test]
        fn contains_matches_the_listed_devices(devices in proptest::collection::vec(-50i64..50, 1..20), probe in -60i64..60) {
            let text = devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
            let s = DeviceSelection::parse(&text).unwrap();
            prop_assert_eq!(s.contains(probe), devices.contains(&probe));
            prop_assert_eq!(s.overlaps(probe, probe + 3), devices.iter().any(|d| (probe..=probe + 3).contains(d)));
        }

        /// Ranges of every form, merged: the selection holds exactly their devices, and its
        /// canonical form parses back to the same selection.
        #[test]
        fn ranges_select_exactly_their_devices(
            ranges in proptest::collection::vec((-30i64..30, 0i64..8, any::<bool>()), 1..8),
            probe in -40i64..45,
        ) {
            let text = ranges
                .iter()
                .map(|(a, n, inclusive)| if *inclusive { format!("{a}..={}", a + n) } else { format!("{a}..{}", a + n + 1) })
                .collect::<Vec<_>>()
                .join(",");
            let s = DeviceSelection::parse(&text).unwrap();
            let expected = ranges.iter().any(|(a, n, _)| (*a..=a + n).contains(&probe));
            prop_assert_eq!(s.contains(probe), expected);
            prop_assert_eq!(DeviceSelection::parse(&s.canonical()).unwrap(), s.clone());
            let listed: BTreeSet<i64> = s.devices().unwrap().collect();
            prop_assert_eq!(s.count(), Some(listed.len() as u64));
        }
    }
}
