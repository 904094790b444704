//! Compiles the wire contract. Uses the vendored protoc only when `PROTOC` is
//! unset, so a system protoc (or the one a packager provides) wins, and we never
//! set `PROTOC` for other crates (raft's build accepts only protoc 3.x).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY-free: build scripts are single-threaded; the variable is read
        // by tonic-prost-build in this process only.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let files = [
        "proto/outflow/v1/telemetry.proto",
        "proto/outflow/v1/ingest.proto",
        "proto/outflow/v1/fleet.proto",
        "proto/outflow/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
