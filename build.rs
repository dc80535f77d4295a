//! Links the release `portcullis` executable with its functions in a chosen order.
//!
//! `bench/portcullis.order` lists the functions that start-up, an idle spell and ordinary
//! requests execute (`bench/order.sh` records them under callgrind). Placed side by side, they
//! fill a few hundred pages of the executable instead of being spread across its 35 MB of code,
//! where each touched page makes the kernel map its whole 64 KiB neighbourhood. That took idle
//! RSS from about 23.5 to 15–17 MiB (BENCHMARKS.md). A function missing from the list (renamed
//! since, or new) is only placed elsewhere, so the file can lag behind the code; regenerate it
//! when the numbers drift.
//!
//! Only where the linker is known to be LLD, which understands the option: Rust's default for
//! x86_64 Linux, unless a linker is configured. `PORTCULLIS_NO_ORDER_FILE=1` turns it off.

use std::env;

fn main() {
    const ORDER_FILE: &str = "bench/portcullis.order";
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_NO_ORDER_FILE");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let default_lld = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link"));
    let wanted = env::var_os("PORTCULLIS_NO_ORDER_FILE").is_none();
    if release && default_lld && wanted {
        let path = format!("{}/{ORDER_FILE}", env!("CARGO_MANIFEST_DIR"));
        println!("cargo:rustc-link-arg-bin=portcullis=-Wl,--symbol-ordering-file={path}");
        println!("cargo:rustc-link-arg-bin=portcullis=-Wl,--no-warn-symbol-ordering");
    }
}
