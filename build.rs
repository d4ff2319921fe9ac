//! Compiles proto/headscale/v1/headscale.proto in pure Rust (protox parses it, no protoc needed)
//! and generates the tonic client (for headwarden) and server (for headscale-sim).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["headscale/v1/headscale.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
