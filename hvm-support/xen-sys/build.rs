//! Link directives only: the bindings are generated ahead of time and
//! committed (see regenerate.sh), so building needs no libclang.

/// Debian's libxen-dev ships these as /usr/lib/<triple>/lib<name>.so.
/// (pkg-config calls libxenctrl's module `xencontrol`; the library is xenctrl.)
const LIBS: &[&str] = &[
    "xenctrl",
    "xenforeignmemory",
    "xengnttab",
    "xenevtchn",
    "xentoollog",
    "xenstore",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=XEN_LIB_DIR");
    // For a non-Debian layout or a cross sysroot.
    if let Ok(dir) = std::env::var("XEN_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    for lib in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
