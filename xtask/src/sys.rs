//! The few libc calls xtask needs, declared by hand so xtask stays dependency-free.
//!
//! Termination signals (SIGINT, SIGTERM, SIGHUP) only set a flag: the code waiting on
//! child processes polls [`caught`], forwards the signal to the children and then stops
//! the PostgreSQL cluster before exiting.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, Ordering};

pub const SIGHUP: c_int = 1;
pub const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGTERM: c_int = 15;

const EPERM: i32 = 1;

mod ffi {
    use std::os::raw::c_int;

    extern "C" {
        pub fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn geteuid() -> u32;
    }
}

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: c_int) {
    // Only an atomic store: async-signal-safe.
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP set a flag instead of killing xtask.
pub fn catch_termination() {
    for sig in [SIGHUP, SIGINT, SIGTERM] {
        // SAFETY: the handler only stores into an atomic.
        unsafe {
            ffi::signal(sig, on_signal);
        }
    }
}

/// The last termination signal received, if any.
pub fn caught() -> Option<c_int> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// `kill(2)`: a negative `pid` addresses a process group. True when the signal was sent.
pub fn send(pid: i32, sig: c_int) -> bool {
    // SAFETY: plain system call.
    unsafe { ffi::kill(pid, sig) == 0 }
}

/// Whether a process with this id exists.
pub fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    send(pid as i32, 0) || std::io::Error::last_os_error().raw_os_error() == Some(EPERM)
}

pub fn is_root() -> bool {
    // SAFETY: plain system call, cannot fail.
    unsafe { ffi::geteuid() == 0 }
}
