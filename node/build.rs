//! Links `ccm` and `ccm-hook` as position-dependent executables: the loader then has no relocations to apply
//! at start, so a short-lived hook touches ~120 fewer pages (each a page fault, the
//! largest part of its start-up on a virtual machine; BENCHMARKS.md, hook pipeline).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        for bin in ["ccm", "ccm-hook"] {
            println!("cargo:rustc-link-arg-bin={bin}=-no-pie");
        }
    }
}
