//! Build script: embeds libtorch's directory as an rpath, so binaries and tests run without
//! LD_LIBRARY_PATH, and compiles the small C++ shim that gives Rust seeded libtorch generators
//! (see `src/rng/torch_generator.rs`; tch exposes only the global ones).

use std::path::PathBuf;

fn main() {
    // Embeds libtorch's directory as an rpath, so binaries and tests run without LD_LIBRARY_PATH.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    build_rng_shim();
}

/// Compiles `csrc/rng_shim.cpp` against the libtorch that torch-sys linked.
fn build_rng_shim() {
    // torch-sys (`links = "tch"`) publishes the library folder of the libtorch it linked against.
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not report libtorch's location");
    // Both libtorch layouts (the libtorch zip and the Python wheel's `torch/` folder) keep the
    // headers in `include/` beside `lib/`.
    let include = PathBuf::from(lib_dir).join("..").join("include");
    // The shim must use libtorch's C++ ABI, as torch-sys does for its own C++ code.
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/rng_shim.cpp");

    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's own headers warn a lot; this keeps the build log readable.
        .warnings(false)
        .file("csrc/rng_shim.cpp")
        .compile("diffusiond_rng_shim");
}
