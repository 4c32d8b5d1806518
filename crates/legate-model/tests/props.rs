//! Property tests of the two doors configuration comes in through (issue 13):
//!
//! - Envoy resource translation: `legate_snapshot::build` on arbitrary resources never
//!   panics; it returns a snapshot or a typed `InvalidSnapshot` whose every error has a
//!   message. Inputs are random bytes decoded as each resource type, and byte-level mutations
//!   of the encoded resources that the examples (`examples/*.yaml`, `examples/mesh/*.yaml`)
//!   compile to, which keeps most of their structure and reaches deep fields.
//! - The mesh YAML parser: random bytes and mutations of the example files never panic
//!   `load`, and every error it returns names a line of the text.
//!
//! They live here because this crate has both the examples' compiler and the translator.
//! Each runs 256 cases by default (a few seconds); `PROPTEST_CASES` raises it (`make fuzz`).

use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_snapshot::Resources;
use proptest::prelude::*;
use prost::Message;

/// Every example file, by name.
fn examples() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("mesh")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&path).expect("example readable");
                out.push((path.display().to_string(), text));
            }
        }
    }
    out.sort();
    assert!(
        out.len() >= 3,
        "examples not found under {}",
        root.display()
    );
    out
}

/// The resource sets the examples that are whole meshes compile to.
fn fixtures() -> Vec<Resources> {
    let sets: Vec<Resources> = examples()
        .iter()
        .filter_map(|(name, text)| legate_model::load(text, name).ok())
        .map(|mesh| legate_model::compile(&mesh))
        .collect();
    assert!(sets.len() >= 2, "fewer than two example meshes load");
    sets
}

/// A byte-level edit of an encoded message or a text.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<usize>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Set(i, b) if len > 0 => bytes[i % len] = *b,
            Edit::Set(..) => {}
            Edit::Insert(i, b) => {
                let at = i % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Delete(..) => {}
            Edit::Truncate(i) => bytes.truncate(i % (len + 1)),
        }
    }
}

/// Replace the resource at `index` of the list `kind` names (or add one) by `bytes` decoded
/// as that type; false when the bytes do not decode.
fn replace(set: &mut Resources, kind: usize, index: usize, bytes: &[u8]) -> bool {
    fn put<M: Message + Default>(list: &mut Vec<M>, index: usize, bytes: &[u8]) -> bool {
        let Ok(m) = M::decode(bytes) else {
            return false;
        };
        if list.is_empty() {
            list.push(m);
        } else {
            let i = index % list.len();
            list[i] = m;
        }
        true
    }
    match kind % 5 {
        0 => put::<Listener>(&mut set.listeners, index, bytes),
        1 => put::<RouteConfiguration>(&mut set.route_configs, index, bytes),
        2 => put::<Cluster>(&mut set.clusters, index, bytes),
        3 => put::<ClusterLoadAssignment>(&mut set.load_assignments, index, bytes),
        _ => put::<Secret>(&mut set.secrets, index, bytes),
    }
}

/// The encoding of the resource `replace` would replace (empty when the list is).
fn encoded(set: &Resources, kind: usize, index: usize) -> Vec<u8> {
    fn enc<M: Message>(list: &[M], index: usize) -> Vec<u8> {
        list.get(index % list.len().max(1))
            .map(Message::encode_to_vec)
            .unwrap_or_default()
    }
    match kind % 5 {
        0 => enc(&set.listeners, index),
        1 => enc(&set.route_configs, index),
        2 => enc(&set.clusters, index),
        3 => enc(&set.load_assignments, index),
        _ => enc(&set.secrets, index),
    }
}

/// `build` returned a snapshot (which must serialize, as `/config_dump` does) or a typed
/// error listing at least one problem, each with a message.
fn check_build(set: &Resources) {
    match legate_snapshot::build("v1", set) {
        Ok(snapshot) => {
            serde_json::to_string(&snapshot).expect("snapshot serializes");
        }
        Err(e) => {
            assert!(!e.errors.is_empty(), "an error with no problems");
            for p in &e.errors {
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
            }
        }
    }
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise; failures are printed, not saved.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutations of the examples' resources, several resources at a time.
    #[test]
    fn translation_of_mutated_resources_never_panics(
        fixture in any::<usize>(),
        changes in prop::collection::vec(
            (0usize..5, any::<usize>(), prop::collection::vec(edit(), 1..6)),
            1..4,
        ),
    ) {
        thread_local!(static FIXTURES: Vec<Resources> = fixtures());
        let mut set = FIXTURES.with(|f| f[fixture % f.len()].clone());
        for (kind, index, edits) in &changes {
            let mut bytes = encoded(&set, *kind, *index);
            apply(&mut bytes, edits);
            replace(&mut set, *kind, *index, &bytes);
        }
        check_build(&set);
    }

    /// Random bytes decoded as each resource type, alone and beside a valid set.
    #[test]
    fn translation_of_random_resources_never_panics(
        kind in 0usize..5,
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        beside_fixture in any::<bool>(),
    ) {
        thread_local!(static FIXTURES: Vec<Resources> = fixtures());
        let mut set = if beside_fixture {
            FIXTURES.with(|f| f[0].clone())
        } else {
            Resources::default()
        };
        if replace(&mut set, kind, usize::MAX, &bytes) {
            check_build(&set);
        }
    }

    /// Mutated example files and random text: `load` never panics, and each error names a
    /// line of the text (1-based, at most one past its last line).
    #[test]
    fn mesh_parser_errors_name_a_line(
        example in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
        random in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..256)),
    ) {
        thread_local!(static EXAMPLES: Vec<(String, String)> = examples());
        let (name, text) = EXAMPLES.with(|e| e[example % e.len()].clone());
        let mut bytes = random.unwrap_or_else(|| text.into_bytes());
        apply(&mut bytes, &edits);
        let text = String::from_utf8_lossy(&bytes);
        // Lines as YAML counts them: a lone CR breaks a line too (found by this test).
        let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
        if let Err(errors) = legate_model::load(&text, &name) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(
                    e.line >= 1 && e.line <= lines + 1 && e.column >= 1,
                    "error outside the text ({lines} lines): {e}"
                );
                prop_assert!(!e.message.is_empty(), "error without a message: {e}");
            }
        }
    }
}
