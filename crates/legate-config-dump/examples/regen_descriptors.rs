//! Regenerates `descriptors/envoy.binpb`, the descriptor set `/config_dump` renders Envoy's
//! JSON with, from the one `envoy-types` ships (`src/generated/types.bin`, every file its
//! Rust types were generated from). Only the files that [`ROOT_MESSAGES`] need, with their
//! imports, are kept: the full set is 3.3 MB and most of it (every Envoy extension legate
//! refuses) can never appear in a resource legate accepted.
//!
//! `make envoy-descriptors` finds `types.bin` with `cargo metadata` and runs this:
//! `cargo run -p legate-config-dump --example regen_descriptors -- TYPES_BIN OUT_DIR`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use legate_config_dump::ROOT_MESSAGES;
use prost_reflect::{DescriptorPool, FileDescriptor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(out_dir)) = (args.next(), args.next()) else {
        return Err("usage: regen_descriptors TYPES_BIN OUT_DIR".into());
    };
    let full = DescriptorPool::decode(std::fs::read(PathBuf::from(&input))?.as_slice())?;
    let mut wanted = BTreeSet::new();
    let mut order = Vec::new();
    for name in ROOT_MESSAGES {
        let message = full
            .get_message_by_name(name)
            .ok_or_else(|| format!("{name} is not in {}", PathBuf::from(&input).display()))?;
        add(message.parent_file(), &mut wanted, &mut order);
    }
    // A FileDescriptorSet: field 1, repeated FileDescriptorProto, dependencies first.
    let mut set = Vec::new();
    for file in &order {
        let bytes = without_source_info(&file.encode_to_vec())?;
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
        prost::encoding::encode_varint(bytes.len() as u64, &mut set);
        set.extend_from_slice(&bytes);
    }
    let out_dir = PathBuf::from(out_dir);
    std::fs::write(out_dir.join("envoy.binpb"), &set)?;
    println!(
        "wrote {} files ({} bytes) to {}",
        order.len(),
        set.len(),
        out_dir.join("envoy.binpb").display()
    );
    Ok(())
}

/// A `FileDescriptorProto` without field 9, `source_code_info` (the .proto files' comments
/// and line numbers: most of the bytes, and nothing the JSON needs). Cut on the wire, as the
/// rest keeps its extension options (`udpa.annotations.sensitive`), which prost's own
/// `FileDescriptorProto` would drop.
fn without_source_info(mut buf: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut out = Vec::with_capacity(buf.len());
    while !buf.is_empty() {
        let before = buf;
        let (tag, wire_type) = decode_key(&mut buf)?;
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        if tag != 9 {
            out.extend_from_slice(&before[..before.len() - buf.len()]);
        }
    }
    Ok(out)
}

/// `file` after everything it imports, once.
fn add(file: FileDescriptor, wanted: &mut BTreeSet<String>, order: &mut Vec<FileDescriptor>) {
    if !wanted.insert(file.name().to_owned()) {
        return;
    }
    for dep in file.dependencies() {
        add(dep, wanted, order);
    }
    order.push(file);
}
