//! Compiles the remote-write protocol's `.proto` into Rust types with prost-build. The
//! `.proto` is parsed by protox (a pure-Rust protobuf compiler), so building Meerkat needs
//! no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/remote.proto");
    let descriptors = protox::compile(["remote.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes([".prometheus.Label"])
        .compile_fds(descriptors)?;
    Ok(())
}
