//! Compiles proto/headscale/v1/headscale.proto in pure Rust (protox parses it, no protoc needed)
//! and generates the tonic client headwarden uses (the stand-in, crates/headscale-sim, builds
//! its own server from the same file).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["headscale/v1/headscale.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
