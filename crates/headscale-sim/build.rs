//! Compiles the project's headscale.v1 .proto (../../proto) in pure Rust (protox parses it, no
//! protoc) into the tonic *server* the stand-in serves; headwarden builds only the client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(["headscale/v1/headscale.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
