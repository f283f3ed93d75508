//! Compiles the service definitions with a pure-Rust protobuf compiler (protox): the build
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["blindfold/v1/model_holder.proto", "blindfold/v1/cryptonn.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
