//! The protocol document follows the contract (in the spirit of
//! rust-analyzer's tidy checks): changing keybroker.proto without updating
//! docs/protocol.md fails here.

use std::fs;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn proto_text() -> Vec<u8> {
    fs::read(root().join("proto/keybroker/v1/keybroker.proto")).expect("read keybroker.proto")
}

fn doc_text() -> String {
    fs::read_to_string(root().join("../docs/protocol.md")).expect("read docs/protocol.md")
}

#[test]
fn protocol_doc_records_the_proto_hash() {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &proto_text());
    let hex = hex::encode(digest.as_ref());
    assert!(
        doc_text().contains(&hex),
        "proto/proto/keybroker/v1/keybroker.proto changed: review docs/protocol.md against it, \
         then record its new SHA-256 there:\n    {hex}"
    );
}

#[test]
fn protocol_doc_names_every_message_and_rpc() {
    let proto = String::from_utf8(proto_text()).unwrap();
    let doc = doc_text();
    let mut names = Vec::new();
    for line in proto.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("message" | "enum" | "service"), Some(name)) => names.push(name.to_owned()),
            (Some("rpc"), Some(name)) => names.push(name.split('(').next().unwrap().to_owned()),
            _ => {}
        }
    }
    assert!(names.len() > 10, "parsed too few names: {names:?}");
    let missing: Vec<_> = names.iter().filter(|n| !doc.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not mention {missing:?}"
    );
}
