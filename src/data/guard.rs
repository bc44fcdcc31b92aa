//! What is left to do when libhdf5 itself fails on a damaged file. Fuzzing real files
//! (`tests/fuzz_readers.rs`) shows that Debian's libhdf5 1.10 can crash (a segfault inside its
//! B-tree and metadata-cache code) or loop without end (decoding a damaged global heap) on a
//! corrupted file, inside the library, where no error can be returned. Around every HDF5 open and
//! read (`enter`) scmz records the file; a crash there ends the process with one line naming the
//! file instead of a bare "Segmentation fault", and a watchdog ends a read that makes no progress
//! for `SCMZ_HDF5_TIMEOUT` seconds (default 120; 0: never) the same way.
//!
//! Hand-written: crates for signals (signal-hook) refuse SIGSEGV and SIGBUS by design, and the
//! handler must do only async-signal-safe work (a `write` and `_exit`). A crash outside a guarded
//! read goes to the handler that was there before (Rust's stack-overflow report).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

const MAX_PATH: usize = 1024;
static PATH: [AtomicU8; MAX_PATH] = [const { AtomicU8::new(0) }; MAX_PATH];
static PATH_LEN: AtomicUsize = AtomicUsize::new(0);
/// Guarded reads in progress (several reader threads may read at once).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// When a guarded read last started or ended, in seconds since the epoch.
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();
static mut PREVIOUS: [Option<libc::sigaction>; 4] = [None; 4];
const SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL];

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A guarded HDF5 read of `path`, until dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        PROGRESS.store(now(), Ordering::SeqCst);
    }
}

/// Marks the start of an HDF5 open or read of `path` (see the module text).
pub fn enter(path: &std::path::Path) -> Guard {
    let bytes = path.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(MAX_PATH);
    for (slot, &b) in PATH.iter().zip(&bytes[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    PATH_LEN.store(n, Ordering::SeqCst);
    PROGRESS.store(now(), Ordering::SeqCst);
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    WATCHDOG.call_once(start_watchdog);
    Guard(())
}

/// Writes "error: PATH: <what>" to stderr and ends the process with status 1. Async-signal-safe.
fn report_and_exit(what: &[u8]) -> ! {
    let mut line = [0u8; MAX_PATH + 512];
    let mut n = 0;
    let mut push = |b: &[u8]| {
        for &c in b {
            if n < line.len() - 1 {
                // The path as bytes, control characters shown as `?`.
                line[n] = if c < 0x20 || c == 0x7f { b'?' } else { c };
                n += 1;
            }
        }
    };
    push(b"error: ");
    let len = PATH_LEN.load(Ordering::SeqCst);
    let mut path = [0u8; MAX_PATH];
    for (d, s) in path.iter_mut().zip(PATH.iter()).take(len) {
        *d = s.load(Ordering::Relaxed);
    }
    push(&path[..len]);
    push(b": ");
    push(what);
    line[n] = b'\n';
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.as_ptr().cast(), n + 1);
        libc::_exit(1)
    }
}

extern "C" fn on_crash(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        report_and_exit(
            b"the HDF5 library crashed reading this file (a memory fault in libhdf5): the file is damaged; \
              restore it, or rewrite it from its source with anndata or h5repack",
        );
    }
    // Not in a read: whatever handled this signal before (Rust reports stack overflows).
    let i = SIGNALS.iter().position(|&s| s == sig).unwrap_or(0);
    // SAFETY: PREVIOUS is written once, before the handler is installed, and only read here.
    let prev = unsafe { (*std::ptr::addr_of!(PREVIOUS))[i] };
    // SAFETY: restoring or calling the handler the process had; raise(2) is async-signal-safe.
    unsafe {
        match prev {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(p.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(p.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
    }
}

/// Installs the crash report (once, at the start of `main`, before other threads).
pub fn install() {
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: sigaction with a zeroed, then filled, struct; the handler is async-signal-safe.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction =
                on_crash as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 {
                (*std::ptr::addr_of_mut!(PREVIOUS))[i] = Some(old);
            }
            libc::sigaction(sig, &new, std::ptr::null_mut());
        }
    }
}

fn timeout_s() -> u64 {
    super::env_number("SCMZ_HDF5_TIMEOUT", 120)
}

fn start_watchdog() {
    let limit = timeout_s();
    if limit == 0 {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("hdf5-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let idle = now().saturating_sub(PROGRESS.load(Ordering::SeqCst));
            if ACTIVE.load(Ordering::SeqCst) > 0 && idle >= limit {
                let what = format!(
                    "the HDF5 library has read this file for {idle} s without finishing (SCMZ_HDF5_TIMEOUT={limit}): \
                     the file is likely damaged; restore it, or rewrite it from its source with anndata or h5repack"
                );
                report_and_exit(what.as_bytes());
            }
        });
}
