//! Links `ccm` and `ccm-hook` as position-dependent executables: the loader then has no relocations to apply
//! at start, so a short-lived hook touches ~120 fewer pages (each a page fault, the
//! largest part of its start-up on a virtual machine; BENCHMARKS.md, hook pipeline).
//!
//! In a release build, `ccm` is linked with the functions an idle daemon runs placed first and
//! together (`order/ccm.order`, written by `order/generate.sh`): the code is mapped in large
//! blocks around each page it runs, so scattered start-up code kept most of the binary's text
//! resident (BENCHMARKS.md, "Idle RSS: the code an idle daemon runs, placed together"). A name
//! the build no longer has is skipped; a function missing from the list is only placed later.
//! LTO numbers the copies of a generic function (`write_str.12902`) anew when the code changes:
//! recorded again, the list places them too (about 0.5 MB of code resident).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        for bin in ["ccm", "ccm-hook"] {
            println!("cargo:rustc-link-arg-bin={bin}=-no-pie");
        }
        let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
        // `--symbol-ordering-file` is lld's: rustc links x86_64 Linux with its own lld by
        // default (since 1.90); elsewhere the system linker (GNU ld) would refuse it.
        let lld = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
        let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("order/ccm.order");
        println!("cargo:rerun-if-changed=build.rs");
        println!("cargo:rerun-if-changed=order/ccm.order");
        if release && lld && order.exists() {
            println!(
                "cargo:rustc-link-arg-bin=ccm=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
                order.display()
            );
        }
    }
}
