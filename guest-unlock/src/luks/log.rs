//! libcryptsetup's log callback, routed to `tracing` instead of the
//! library's default (which prints to standard error, bypassing
//! `guest-unlock:` prefixes and `--verbose`). The only `unsafe` of
//! [`crate::luks`]: one `extern "C"` function that libcryptsetup calls.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Once;

/// libcryptsetup's `CRYPT_LOG_ERROR`.
const CRYPT_LOG_ERROR: c_int = 1;

/// Receives one libcryptsetup log message. Never panics (a panic must not
/// unwind into C). libcryptsetup does not log passphrases or keys.
extern "C" fn on_log(level: c_int, msg: *const c_char, _usrptr: *mut c_void) {
    if msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string that stays valid
    // for the duration of the callback; it was checked for NULL above and is
    // only read here, never kept.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    let text = text.trim_end();
    if level == CRYPT_LOG_ERROR {
        tracing::info!("libcryptsetup: {text}");
    } else {
        tracing::debug!("libcryptsetup: {text}");
    }
}

/// Installs the callback once per process (before the first device call).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libcryptsetup_rs::set_log_callback::<()>(Some(on_log), None);
    });
}
