//! Records the git commit and build date for `poziserver version`.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    println!("cargo:rustc-env=POZI_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=POZI_BUILD_DATE={date}");
    println!(
        "cargo:rustc-env=POZI_TARGET={}",
        std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned())
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
