//! Links the release `portcullis` executable with its functions in a chosen order.
//!
//! `bench/portcullis.order` lists the functions that start-up, an idle spell and ordinary
//! requests execute (`bench/order.sh` records them under callgrind). Placed side by side, they
//! fill a few hundred pages of the executable instead of being spread across its 35 MB of code,
//! where each touched page makes the kernel map its whole 64 KiB neighbourhood. That took idle
//! RSS from about 23.5 to 11–12 MiB (BENCHMARKS.md). A function missing from the list (renamed
//! since, or new) is only placed elsewhere. But the names carry hashes that a different
//! toolchain or dependency version changes wholesale, so regenerate the file after such an
//! update (`.ci/run` fails when fewer than 90 % of the names match).
//!
//! Only where the linker is known to be LLD, which understands the option: the target is
//! x86_64 Linux, no linker is configured, and the toolchain ships the self-contained LLD that
//! rustc uses by default there since 1.90 (rustup's builds do). `PORTCULLIS_NO_ORDER_FILE=1`
//! turns it off.

use std::{env, path::PathBuf, process::Command};

const TARGET: &str = "x86_64-unknown-linux-gnu";
const ORDER_FILE: &str = "bench/portcullis.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_NO_ORDER_FILE");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = env::var_os("PORTCULLIS_NO_ORDER_FILE").is_none();
    if release && wanted && links_with_self_contained_lld() {
        let path = format!("{}/{ORDER_FILE}", env!("CARGO_MANIFEST_DIR"));
        println!("cargo:rustc-link-arg-bin=portcullis=-Wl,--symbol-ordering-file={path}");
        println!("cargo:rustc-link-arg-bin=portcullis=-Wl,--no-warn-symbol-ordering");
    }
}

fn links_with_self_contained_lld() -> bool {
    let default_linker = env::var("TARGET").is_ok_and(|t| t == TARGET)
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link"));
    if !default_linker {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    // "rustc 1.95.0 (…)": minor version 90 or later.
    let recent = version
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 90);
    recent
        && sysroot.is_some_and(|root| {
            root.join(format!("lib/rustlib/{TARGET}/bin/gcc-ld/ld.lld"))
                .exists()
        })
}
