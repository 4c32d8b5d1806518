//! Field path → line and column in the YAML text.
//!
//! serde reports where a value failed to deserialize, but semantic checks run on the parsed
//! [`Mesh`](crate::Mesh), which keeps no positions. This walks a second parse of the text,
//! one with a position marker on every node, along the field path of the problem.

use saphyr::{LoadableYamlNode, MarkedYaml, Marker, YamlData};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// Split `a.b[2][0].c` into steps. A malformed path yields the steps before the fault, so the
/// caller still gets the nearest ancestor.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                return out;
            };
            let Ok(index) = index.parse() else {
                return out;
            };
            out.push(Step::Index(index));
            rest = tail;
        }
        if !rest.is_empty() {
            return out;
        }
    }
    out
}

/// A parsed document that answers "where is this field".
pub(crate) struct Locator<'t> {
    root: Option<MarkedYaml<'t>>,
}

impl<'t> Locator<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        // A text serde accepted but this parser refuses (they differ on a few YAML 1.1
        // corners) only loses precision: every position falls back to the start.
        let root = MarkedYaml::load_from_str(text)
            .ok()
            .and_then(|docs| docs.into_iter().next());
        Locator { root }
    }

    /// 1-based line and column of the field at `path`, or of its nearest ancestor written in
    /// the text. A field whose value is a scalar, or starts on the key's line, is located at
    /// the value; a block collection or an empty value at its key, which is what a reader
    /// looks for.
    pub(crate) fn position(&self, path: &str) -> (usize, usize) {
        let Some(root) = &self.root else {
            return (1, 1);
        };
        let mut node = unwrap_tags(root);
        let mut at = node.span.start;
        for step in steps(path) {
            let next = match (step, &node.data) {
                (Step::Key(key), YamlData::Mapping(map)) => map
                    .iter()
                    .find(|(k, _)| unwrap_tags(k).data.as_str() == Some(key))
                    .map(|(k, v)| {
                        let v = unwrap_tags(v);
                        let written = v.span.start.index() != v.span.end.index();
                        let here = if written
                            && (is_scalar(v) || v.span.start.line() == k.span.start.line())
                        {
                            v.span.start
                        } else {
                            k.span.start
                        };
                        (v, here)
                    }),
                (Step::Index(i), YamlData::Sequence(seq)) => seq.get(i).map(|v| {
                    let v = unwrap_tags(v);
                    (v, v.span.start)
                }),
                _ => None,
            };
            match next {
                Some((n, here)) => {
                    node = n;
                    at = here;
                }
                None => break,
            }
        }
        one_based(at)
    }
}

/// Where `text` repeats a key in a mapping. serde only says which mapping.
pub(crate) fn duplicate_key(text: &str) -> Option<(usize, usize)> {
    match MarkedYaml::load_from_str(text) {
        Err(e) if e.info().contains("duplicated key") => Some(one_based(*e.marker())),
        _ => None,
    }
}

fn unwrap_tags<'a, 't>(mut node: &'a MarkedYaml<'t>) -> &'a MarkedYaml<'t> {
    while let YamlData::Tagged(_, inner) = &node.data {
        node = inner;
    }
    node
}

fn is_scalar(node: &MarkedYaml<'_>) -> bool {
    !matches!(
        node.data,
        YamlData::Sequence(_) | YamlData::Mapping(_) | YamlData::Tagged(..)
    )
}

fn one_based(m: Marker) -> (usize, usize) {
    (m.line().max(1), m.col() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(
            steps("a.b[2][0].c"),
            vec![
                Step::Key("a"),
                Step::Key("b"),
                Step::Index(2),
                Step::Index(0),
                Step::Key("c")
            ]
        );
        assert_eq!(steps("[1].x"), vec![Step::Index(1), Step::Key("x")]);
        assert_eq!(steps(""), vec![]);
        assert_eq!(steps("."), vec![]);
        // Malformed: keep what came before the fault.
        assert_eq!(steps("a[x].b"), vec![Step::Key("a")]);
        assert_eq!(steps("a[1"), vec![Step::Key("a")]);
    }

    const DOC: &str = "\
clusters:
  - name: one
    endpoints:
      - address: 127.0.0.1:1
        weight: 0
  - name: two
    endpoints: []
    flow: {a: 1, b: [x, y]}
    empty:
";

    fn check(path: &str, expected: (usize, usize)) {
        assert_eq!(Locator::new(DOC).position(path), expected, "{path}");
    }

    #[test]
    fn locates_fields() {
        check("", (1, 1));
        check("clusters", (1, 1));
        check("clusters[0]", (2, 5));
        check("clusters[0].name", (2, 11));
        check("clusters[0].endpoints", (3, 5));
        check("clusters[0].endpoints[0]", (4, 9));
        check("clusters[0].endpoints[0].weight", (5, 17));
        check("clusters[1].endpoints", (7, 16));
        check("clusters[1].flow", (8, 11));
        check("clusters[1].flow.b", (8, 21));
        check("clusters[1].flow.b[1]", (8, 25));
        check("clusters[1].empty", (9, 5));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        check("clusters[0].endpoints[0].hostname", (4, 9));
        check("clusters[7].name", (1, 1));
        check("clusters[1].name.deeper", (6, 11));
        check("nothing", (1, 1));
    }

    #[test]
    fn tolerates_unparsable_text() {
        assert_eq!(Locator::new("a: [").position("a"), (1, 1));
        assert_eq!(Locator::new("").position("a.b"), (1, 1));
    }

    #[test]
    fn finds_duplicate_keys() {
        assert_eq!(duplicate_key("a: 1\nb:\n  c: 1\n  c: 2\n"), Some((4, 3)));
        assert_eq!(duplicate_key("a: 1\nb: 2\n"), None);
    }

    #[test]
    fn sees_through_tags() {
        let l = Locator::new("a: !custom\n  b: 1\n");
        assert_eq!(l.position("a.b"), (2, 6));
    }
}
