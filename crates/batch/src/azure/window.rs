//! The window one scheduled job scores, fixed from when Batch created the job, so that a job
//! that started late, or a job manager retried after node loss, scores the interval it was
//! scheduled for under the same run id, and no interval is scored twice.

use crate::azure::BatchError;

/// An interval schedule: jobs every `every` seconds, each `delay` seconds after an interval
/// ends (time for late readings to land), scoring that interval. Intervals are aligned to the
/// Unix epoch (whole hours for `1h`, whole days in UTC for `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    every: i64,
    delay: i64,
}

const MICROS: i64 = 1_000_000;

impl Cadence {
    /// Batch's shortest recurrence is one minute; the delay must end before the next interval.
    pub fn new(every_seconds: i64, delay_seconds: i64) -> Result<Self, BatchError> {
        if every_seconds < 60 {
            return Err(BatchError::Invalid(format!(
                "an interval of {every_seconds} s: Azure Batch schedules jobs at most once a minute"
            )));
        }
        if !(0..every_seconds).contains(&delay_seconds) {
            return Err(BatchError::Invalid(format!(
                "a delay of {delay_seconds} s must be shorter than the interval ({every_seconds} s)"
            )));
        }
        Ok(Self { every: every_seconds, delay: delay_seconds })
    }

    pub fn every_seconds(&self) -> i64 {
        self.every
    }

    pub fn delay_seconds(&self) -> i64 {
        self.delay
    }

    /// The window `[from, to)` (microseconds) of the job Batch created at `created_us`: the last
    /// whole interval that ended at least `delay` before it. Batch starts a job at most a start
    /// window (shorter than the interval) late, so every job of one schedule slot lands here.
    pub fn window_for(&self, created_us: i64) -> (i64, i64) {
        let every = self.every * MICROS;
        let end = (created_us - self.delay * MICROS).div_euclid(every) * every;
        (end - every, end)
    }

    /// The first job time strictly after `now_us`: an interval boundary plus the delay
    /// (the schedule's `doNotRunUntil`).
    pub fn first_run_after(&self, now_us: i64) -> i64 {
        let every = self.every * MICROS;
        let delay = self.delay * MICROS;
        ((now_us - delay).div_euclid(every) + 1) * every + delay
    }

    /// A start window that lets a job start late without reaching the next slot's window.
    pub fn check_start_window(&self, seconds: i64) -> Result<(), BatchError> {
        if seconds < 60 || seconds + self.delay >= self.every {
            return Err(BatchError::Invalid(format!(
                "a start window of {seconds} s: Azure Batch needs at least 60 s, and a job that \
                 starts later than interval - delay ({} s) would score the next interval",
                self.every - self.delay
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * MICROS;
    const M: i64 = 60 * MICROS;

    #[test]
    fn a_late_job_scores_the_interval_it_was_scheduled_for() {
        let c = Cadence::new(3600, 300).unwrap();
        let day = 20_000 * 24 * H;
        // Scheduled at 03:05; created on time, 40 s late, 45 min late: 02:00-03:00 each time.
        for created in
            [day + 3 * H + 5 * M, day + 3 * H + 5 * M + 40 * MICROS, day + 3 * H + 50 * M]
        {
            assert_eq!(c.window_for(created), (day + 2 * H, day + 3 * H));
        }
        assert_eq!(c.first_run_after(day + 3 * H + 5 * M), day + 4 * H + 5 * M);
        assert_eq!(c.first_run_after(day + 3 * H), day + 3 * H + 5 * M);
        assert!(c.check_start_window(3300 - 1).is_ok());
        assert!(c.check_start_window(3300).is_err());
        assert!(c.check_start_window(30).is_err());
    }

    #[test]
    fn bad_cadences_are_refused() {
        assert!(Cadence::new(30, 0).is_err());
        assert!(Cadence::new(3600, 3600).is_err());
        assert!(Cadence::new(3600, -1).is_err());
    }
}
