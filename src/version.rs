//! This build's identity (`poziserver version`, `/health`, the updater's self-test), and, in
//! debug builds only, the slot through which the updater's tests make copies of the binary that
//! report another version or misbehave on purpose.

use std::sync::OnceLock;

/// The build's identity, as `version --json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// Release version (semver).
    pub version: &'static str,
    /// Git commit the binary was built from.
    pub commit: &'static str,
    /// When it was built (RFC 3339, UTC).
    pub build_date: &'static str,
    /// Target triple.
    pub target: &'static str,
    /// The platform name release manifests use (`linux-x86_64`, `windows-x86_64`, …).
    pub platform: &'static str,
}

/// The platform name release manifests use for this build: `<os>-<arch>`.
#[must_use]
pub fn platform() -> &'static str {
    static PLATFORM: OnceLock<String> = OnceLock::new();
    PLATFORM.get_or_init(|| format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH))
}

/// This binary's identity.
#[must_use]
pub fn current() -> &'static VersionInfo {
    static CURRENT: OnceLock<VersionInfo> = OnceLock::new();
    CURRENT.get_or_init(|| VersionInfo {
        version: test_slot().map_or(env!("CARGO_PKG_VERSION"), |slot| slot.version.as_str()),
        commit: env!("POZI_GIT_COMMIT"),
        build_date: env!("POZI_BUILD_DATE"),
        target: env!("POZI_TARGET"),
        platform: platform(),
    })
}

/// How a test copy of the binary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// `run` exits at once with status 3.
    Exit,
    /// `run` never binds its listener (it waits for a signal instead).
    NoBind,
    /// `/health` reports `fail`.
    Fail,
    /// `/health` reports `fail` only once an old version has re-executed into it (it passes its
    /// trial, then fails after the switch).
    FailAfterSwitch,
}

/// What a patched test copy says about itself.
#[derive(Debug)]
pub struct TestSlot {
    /// The version it reports.
    pub version: String,
    /// How it misbehaves, if it does.
    pub misbehaviour: Option<Misbehaviour>,
}

/// The patched slot of a test copy, in debug builds; always `None` in release builds.
#[must_use]
pub fn test_slot() -> Option<&'static TestSlot> {
    static SLOT: OnceLock<Option<TestSlot>> = OnceLock::new();
    SLOT.get_or_init(read_slot).as_ref()
}

/// The marker a test finds in a copy of a debug binary, followed by [`SLOT_BYTES`] bytes it
/// overwrites with `<version>[ exit|nobind|fail|fail-after-switch]`, padded with NUL bytes.
#[cfg(debug_assertions)]
static SLOT_BYTES_WITH_MARKER: [u8; 16 + SLOT_BYTES] = {
    let mut slot = [0u8; 16 + SLOT_BYTES];
    let marker = *b"POZI-TEST-SLOT:=";
    let mut i = 0;
    while i < marker.len() {
        slot[i] = marker[i];
        i += 1;
    }
    slot
};

/// Room for the patched text.
#[cfg(debug_assertions)]
const SLOT_BYTES: usize = 80;

#[cfg(debug_assertions)]
fn read_slot() -> Option<TestSlot> {
    // Read through an opaque reference: the bytes in the file, not the constant they start as.
    let slot: &[u8] = std::hint::black_box(&SLOT_BYTES_WITH_MARKER[16..]);
    let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    let text = std::str::from_utf8(&slot[..end]).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let mut words = text.split_whitespace();
    let version = words.next()?.to_owned();
    let misbehaviour = match words.next() {
        Some("exit") => Some(Misbehaviour::Exit),
        Some("nobind") => Some(Misbehaviour::NoBind),
        Some("fail") => Some(Misbehaviour::Fail),
        Some("fail-after-switch") => Some(Misbehaviour::FailAfterSwitch),
        _ => None,
    };
    Some(TestSlot {
        version,
        misbehaviour,
    })
}

#[cfg(not(debug_assertions))]
fn read_slot() -> Option<TestSlot> {
    None
}

/// How this copy misbehaves (debug test copies only).
#[must_use]
pub fn misbehaviour() -> Option<Misbehaviour> {
    test_slot().and_then(|s| s.misbehaviour)
}
