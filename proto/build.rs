//! Generates the tonic/prost code for `sluice.v1` and `sluice.raft.v1` with a vendored
//! protoc, so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sluice/v1/sluice.proto",
        "proto/sluice/v1/group.proto",
        "proto/sluice/raft/v1/raft.proto",
    ];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Record batches travel as `Bytes`, so the broker and client can slice, not copy.
    config.bytes(["."]);
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known
        .to_str()
        .ok_or("protoc include path is not UTF-8")?;
    let includes = ["proto", well_known];
    tonic_prost_build::configure().compile_with_config(config, &protos, &includes)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
