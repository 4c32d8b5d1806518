//! Compiles legate's protos with the protoc binary shipped in `protoc-bin-vendored`, so no
//! system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["legate/admin/v1/admin.proto"], &["."])?;
    println!("cargo:rerun-if-changed=legate/admin/v1/admin.proto");
    Ok(())
}
