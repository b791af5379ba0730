//! Compiles `proto/cells.proto` (Cells' message schemas) with prost-build:
//! Rust types for the tests and a descriptor set for the mapping, which
//! decodes binary ChangeLogs and types JSON values through it.
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/cells.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    prost_build::Config::new()
        .file_descriptor_set_path(out.join("cells.bin"))
        .compile_protos(&["proto/cells.proto"], &["proto"])
}
