// Adds an rpath to libtorch so `cargo run`/`cargo test` and the built binary find
// `libtorch_cpu.so` without LD_LIBRARY_PATH. LIBTORCH comes from `.cargo/config.toml`.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.join("lib").display());
    }
}
