//! SIGINT and SIGTERM: the first one cancels the storage (no new units start, requests in
//! flight are dropped, multipart uploads aborted) so the job stops at its next step and says how
//! to resume; a second one ends the process at once. A job whose current step does not stop
//! within [`JOB_GRACE`] (a polars computation, a write to a stalled disk) is ended then: every
//! object is committed whole or not at all, so ending the process loses only uncommitted work,
//! and schedulers that send SIGTERM get their answer within a second. Azure Batch, Kubernetes
//! and Slurm send SIGTERM before they kill a task, so a stopped task leaves only committed units
//! behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use batchscore_io::Canceller;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal that stopped the job, if one did.
#[derive(Debug, Clone, Default)]
pub struct Received(Arc<AtomicI32>);

impl Received {
    /// The signal number, or `None` when no signal arrived.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}

/// The conventional exit code of a process ended by `signal`: 130 for SIGINT, 143 for SIGTERM.
pub fn exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// How long a job has to stop on its own after the first signal before the process ends.
pub const JOB_GRACE: std::time::Duration = std::time::Duration::from_millis(700);

/// Installs the handlers; the first SIGINT or SIGTERM cancels `canceller`, and, with a
/// `grace`, ends the process once that has passed.
pub fn install(
    canceller: Canceller,
    grace: Option<std::time::Duration>,
) -> std::io::Result<Received> {
    let received = Received::default();
    let armed = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered before the flag is set by the first signal: the second one exits.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(exit_code(signal)),
            armed.clone(),
        )?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let seen = received.0.clone();
    std::thread::Builder::new().name("batchscore-signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            seen.store(signal, Ordering::SeqCst);
            armed.store(true, Ordering::SeqCst);
            tracing::warn!(
                signal = name(signal),
                "stopping: no new units; uploads in flight are aborted"
            );
            canceller.cancel();
            if let Some(grace) = grace {
                std::thread::sleep(grace);
                crate::printer::Printer { quiet: false }.note(&format!(
                    "stopped by {}: the step in progress did not stop within {} ms and was \
                     ended; what was committed stays, and the same command resumes",
                    name(signal),
                    grace.as_millis()
                ));
                std::process::exit(i32::from(exit_code(signal)));
            }
        }
    })?;
    Ok(received)
}
