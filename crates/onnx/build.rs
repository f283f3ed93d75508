//! Generates the ONNX protobuf types from the official `onnx.proto` with a pure-Rust protobuf
//! compiler (protox): the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
