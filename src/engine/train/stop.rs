//! Stop requests: SIGTERM (a cancel, or the death signal of a killed supervisor) and SIGINT.

/// Set by SIGTERM or SIGINT: training stops after the current step, keeping the last epoch's
/// checkpoint, so `--resume` continues from there (`scmz jobs cancel` and Ctrl-C both land here).
static STOP: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);
/// Set when the epoch loop starts: from then on the loop answers a stop (with a checkpoint), and
/// after it the save runs to its end; before it, `crate::watch_job` does.
pub(crate) static TRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGTERM and SIGINT set `STOP` (`signal-hook`'s flag handler), once per process.
pub(crate) fn install_stop_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if let Err(e) = signal_hook::flag::register(sig, std::sync::Arc::clone(&STOP)) {
                say!("warning: cannot handle signal {sig} ({e}); a cancel will lose the current epoch");
            }
        }
    });
    // A stop that came while the engine was starting (`jobs::die_with_parent`) lands now.
    scmz::jobs::unblock_sigterm();
}

pub(crate) fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Sets or clears the stop request as a signal would (tests in process).
#[cfg(test)]
pub(crate) fn request_for_test(stop: bool) {
    STOP.store(stop, std::sync::atomic::Ordering::SeqCst);
}
