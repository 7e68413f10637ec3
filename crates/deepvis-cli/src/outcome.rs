//! How a run that did not simply succeed ends: interrupted (Ctrl-C) or with images that
//! diverged. Each has its own exit code (see `docs/reliability.md`), chosen in `main`.

use std::fmt;

/// Exit code of a run stopped by Ctrl-C (SIGINT) or SIGTERM after saving its progress: 128 + 2,
/// as shells report a process killed by SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code of a run that finished but where some images diverged (NaN or infinite).
pub const EXIT_DIVERGED: u8 = 3;

/// The run stopped between steps on Ctrl-C; what was finished is saved.
#[derive(Debug)]
pub struct Interrupted {
    pub saved: usize,
    pub total: usize,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.saved == 0 {
            return write!(
                f,
                "interrupted before any image was finished; run the same command again to start over"
            );
        }
        write!(
            f,
            "interrupted: {} of {} images are saved and listed in the manifest; run the same command again to resume",
            self.saved, self.total
        )
    }
}

impl std::error::Error for Interrupted {}

/// Some images stopped early because their objective or gradient became NaN or infinite.
#[derive(Debug)]
pub struct Diverged {
    /// What diverged, e.g. `filter 3 (step 1)`.
    pub which: Vec<String>,
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} diverged (the objective or its gradient became NaN or infinite) and stopped there; the other images are saved, and the manifest marks these \"diverged\"; try a smaller --lr or --step-size, or check the weights",
            self.which.join(", ")
        )
    }
}

impl std::error::Error for Diverged {}

/// Ctrl-C (SIGINT) and SIGTERM ask running renders to stop after their current step
/// ([`deepvis_render::request_stop`]) so that finished images and the manifest are saved. The
/// handler resets itself (`SA_RESETHAND`): a second Ctrl-C kills at once. Installed only when
/// rendering starts, so that Ctrl-C during loading or a download still kills at once.
pub fn install_stop_handler() {
    #[cfg(unix)]
    unsafe {
        extern "C" fn on_signal(_: libc::c_int) {
            deepvis_render::request_stop();
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Test hook: `DEEPVIS_FAULT_NAN=3,7` makes the objectives of filters (or images) 3 and 7 NaN,
/// to check that a diverging image stops alone. Not for normal use.
pub fn poisoned(index: usize) -> bool {
    std::env::var("DEEPVIS_FAULT_NAN").is_ok_and(|v| {
        v.split(',')
            .any(|s| s.trim().parse::<usize>().ok() == Some(index))
    })
}
