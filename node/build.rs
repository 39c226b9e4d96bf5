//! Links `ccm` as a position-dependent executable: the loader then has no relocations to apply
//! at start, so a short-lived `ccm hook` touches ~120 fewer pages (each a page fault, the
//! largest part of its start-up on a virtual machine; BENCHMARKS.md, hook pipeline).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bin=ccm=-no-pie");
    }
}
