//! Builds the CPython guest (`weir-guest-build`) and tells the crate where it is
//! (`WEIR_GUEST_WASM`), what it is (`WEIR_GUEST_SHA256`) and what it was built from
//! (`WEIR_GUEST_BUILD`), and where an interrupt is written in it (`WEIR_GUEST_INTERRUPT`).

fn main() {
    for input in weir_guest_build::inputs() {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=WEIR_COMPONENTIZE_PY");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let guest = weir_guest_build::python_guest();
    println!("cargo:rustc-env=WEIR_GUEST_WASM={}", guest.wasm.display());
    println!("cargo:rustc-env=WEIR_GUEST_SHA256={}", guest.sha256);
    println!("cargo:rustc-env=WEIR_GUEST_BUILD={}", guest.build_id);
    println!("cargo:rustc-env=WEIR_GUEST_INTERRUPT={}", guest.interrupt);
}
