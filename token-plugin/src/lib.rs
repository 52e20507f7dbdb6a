//! `libcryptsetup-token-sev-keybroker.so`: the libcryptsetup token plugin
//! for the `sev-keybroker` LUKS2 token (libcryptsetup 2.6's external token
//! ABI, `CRYPTSETUP_TOKEN_1.0`). With it, `cryptsetup open`, `cryptsetup
//! open --token-only` and systemd-cryptsetup (a plain crypttab line) unlock
//! a volume bound with `guest-unlock bind` through the broker, and
//! `cryptsetup luksDump` shows the token.
//!
//! This crate is only the C boundary: it turns libcryptsetup's pointers
//! into Rust strings and a key into a C buffer. Everything else (token
//! checks, the configuration, the attestation and unwrap) is
//! `guest_unlock::plugin`, the same code as `guest-unlock unlock`.
//!
//! When the broker refuses or cannot be reached, `open` returns an error
//! and libcryptsetup moves on (another token, or the passphrase). A panic
//! never unwinds into C: it becomes `-EINVAL`.
//!
//! libcryptsetup finds each function by name and symbol version
//! (`dlvsym`); the Rust functions carry their own names and `.symver` binds
//! the ABI's names to them at the version that `token.map` (see `build.rs`)
//! defines.
// The C boundary: `#[no_mangle]` and raw pointers. Each unsafe block says
// why it is sound; nothing else in the project needs unsafe code for this.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use libcryptsetup_rs_sys::{crypt_device, crypt_log, crypt_token_json_get};
use zeroize::Zeroize as _;

/// What `cryptsetup_token_version` reports (libcryptsetup shows it in its
/// debug log).
const VERSION: &CStr = match CStr::from_bytes_with_nul(
    concat!("1.0 keybroker ", env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(v) => v,
    Err(_) => panic!("the version string has a NUL"),
};

std::arch::global_asm!(
    ".symver sev_keybroker_token_version, cryptsetup_token_version@@CRYPTSETUP_TOKEN_1.0",
    ".symver sev_keybroker_token_open, cryptsetup_token_open@@CRYPTSETUP_TOKEN_1.0",
    ".symver sev_keybroker_token_buffer_free, cryptsetup_token_buffer_free@@CRYPTSETUP_TOKEN_1.0",
    ".symver sev_keybroker_token_validate, cryptsetup_token_validate@@CRYPTSETUP_TOKEN_1.0",
    ".symver sev_keybroker_token_dump, cryptsetup_token_dump@@CRYPTSETUP_TOKEN_1.0",
);

/// `cryptsetup_token_version`: the plugin's version string.
#[no_mangle]
pub extern "C" fn sev_keybroker_token_version() -> *const c_char {
    VERSION.as_ptr()
}

/// `cryptsetup_token_open`: attests to the token's brokers and returns the
/// volume key in `*buffer` (freed by [`sev_keybroker_token_buffer_free`]).
/// 0, or a negative errno: `-EPERM` refused, `-EAGAIN` no broker answered,
/// `-EINVAL` a bad token or configuration, `-EACCES` any other failure.
///
/// # Safety
///
/// libcryptsetup's contract: `cd` is a live LUKS2 device context, `buffer`
/// and `buffer_len` point to writable storage.
#[no_mangle]
pub unsafe extern "C" fn sev_keybroker_token_open(
    cd: *mut crypt_device,
    token: c_int,
    buffer: *mut *mut c_char,
    buffer_len: *mut usize,
    _usrptr: *mut c_void,
) -> c_int {
    if cd.is_null() || buffer.is_null() || buffer_len.is_null() {
        return -libc::EINVAL;
    }
    let mut json: *const c_char = std::ptr::null();
    // SAFETY: `cd` is libcryptsetup's live context (checked non-null) and
    // `json` a local out-pointer; libcryptsetup points it at a string it
    // owns, valid while the header is unchanged (this call changes nothing).
    let r = unsafe { crypt_token_json_get(cd, token, &mut json) };
    if r < 0 {
        return r;
    }
    // SAFETY: as above; `json` is checked non-null first.
    let Some(json) = (unsafe { owned(json) }) else {
        return -libc::EINVAL;
    };
    let key = catch_unwind(AssertUnwindSafe(|| {
        guest_unlock::plugin::passphrase(&json, Path::new(guest_unlock::plugin::CONFIG_PATH))
    }));
    let key = match key {
        Ok(Ok(key)) => key,
        Ok(Err(e)) => {
            // SAFETY: `cd` is live (see above).
            unsafe {
                log(
                    cd,
                    LogLevel::Error,
                    &format!("sev-keybroker token {token}: {e}\n"),
                )
            };
            return e.errno();
        }
        Err(_) => return -libc::EINVAL,
    };
    // libcryptsetup frees it through our buffer_free; malloc keeps the
    // buffer valid C memory whatever allocator Rust uses.
    // SAFETY: malloc has no preconditions; the result is checked.
    let p = unsafe { libc::malloc(key.len().max(1)) }.cast::<u8>();
    if p.is_null() {
        return -libc::ENOMEM;
    }
    // SAFETY: `p` is a fresh allocation of at least `key.len()` bytes that
    // cannot overlap `key`; `buffer` and `buffer_len` are writable (checked
    // non-null, libcryptsetup's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(key.as_ptr(), p, key.len());
        *buffer = p.cast::<c_char>();
        *buffer_len = key.len();
    }
    0
}

/// `cryptsetup_token_buffer_free`: zeroes and frees a key returned by
/// [`sev_keybroker_token_open`].
///
/// # Safety
///
/// `buffer` is null or a buffer of `buffer_len` bytes that
/// [`sev_keybroker_token_open`] returned and that is not freed yet.
#[no_mangle]
pub unsafe extern "C" fn sev_keybroker_token_buffer_free(buffer: *mut c_void, buffer_len: usize) {
    if buffer.is_null() {
        return;
    }
    // SAFETY: by the contract above the buffer holds `buffer_len` bytes
    // from malloc, ours alone until freed here, once.
    unsafe {
        std::slice::from_raw_parts_mut(buffer.cast::<u8>(), buffer_len).zeroize();
        libc::free(buffer);
    }
}

/// `cryptsetup_token_validate`: 0 for a well-formed `sev-keybroker` token,
/// `-EINVAL` (and the reason in libcryptsetup's log) otherwise.
///
/// # Safety
///
/// `cd` is null or a live device context; `json` is null or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn sev_keybroker_token_validate(
    cd: *mut crypt_device,
    json: *const c_char,
) -> c_int {
    // SAFETY: `json` is null or NUL-terminated (contract above).
    let Some(json) = (unsafe { owned(json) }) else {
        return -libc::EINVAL;
    };
    match catch_unwind(|| guest_unlock::plugin::validate(&json).map(|_| ())) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            // SAFETY: `cd` is null or live (contract above).
            unsafe { log(cd, LogLevel::Error, &format!("{e}\n")) };
            e.errno()
        }
        Err(_) => -libc::EINVAL,
    }
}

/// `cryptsetup_token_dump`: the token's volume, keyslots, brokers and pins
/// for `cryptsetup luksDump`.
///
/// # Safety
///
/// As [`sev_keybroker_token_validate`].
#[no_mangle]
pub unsafe extern "C" fn sev_keybroker_token_dump(cd: *mut crypt_device, json: *const c_char) {
    // SAFETY: `json` is null or NUL-terminated (contract above).
    let Some(json) = (unsafe { owned(json) }) else {
        return;
    };
    if let Ok(text) = catch_unwind(|| guest_unlock::plugin::dump(&json)) {
        // SAFETY: `cd` is null or live (contract above).
        unsafe { log(cd, LogLevel::Normal, &text) };
    }
}

/// A copy of a C string, `None` when null or not UTF-8.
///
/// # Safety
///
/// `s` is null or points to a NUL-terminated string.
unsafe fn owned(s: *const c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (contract above).
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().ok().map(str::to_owned)
}

/// libcryptsetup's log levels (`CRYPT_LOG_*`).
enum LogLevel {
    Normal,
    Error,
}

/// Writes `text` through libcryptsetup's log: the cryptsetup command
/// prints it, systemd-cryptsetup sends it to the journal.
///
/// # Safety
///
/// `cd` is null or a live device context.
unsafe fn log(cd: *mut crypt_device, level: LogLevel, text: &str) {
    let level = match level {
        LogLevel::Normal => libcryptsetup_rs_sys::CRYPT_LOG_NORMAL,
        LogLevel::Error => libcryptsetup_rs_sys::CRYPT_LOG_ERROR,
    };
    let Ok(msg) = CString::new(text.replace('\0', " ")) else {
        return;
    };
    // SAFETY: `cd` is null (the default log) or live; `msg` is a
    // NUL-terminated string that outlives the call.
    unsafe { crypt_log(cd, level as c_int, msg.as_ptr()) };
}
