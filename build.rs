// Adds an rpath to libtorch so `cargo run`/`cargo test` and the built binaries find
// `libtorch_cpu.so` without LD_LIBRARY_PATH. LIBTORCH comes from `.cargo/config.toml`.
// The engine also links libtorch_cuda explicitly: nothing references it by symbol, so the
// linker would drop it and CUDA would look unavailable on GPU machines.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        let lib = dir.join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-bin=scmz-engine=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
