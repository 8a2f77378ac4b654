//! Guarded parsing of JSON and YAML documents (admin request bodies and the `--config` file).
//!
//! Before a parser sees a document, a linear pre-scan bounds its nesting depth, and YAML
//! anchors and aliases are refused: alias expansion lets a small document stand for a huge
//! one, and deep nesting costs the YAML parser time quadratic in the depth. JSON goes to a JSON
//! parser, which is linear.
//!
//! The YAML scan splits lines where the YAML parser does only if lines end in `\n` (or
//! `\r\n`): the parser also breaks lines at a lone `\r`, U+0085, U+2028 and U+2029, and skips
//! U+FEFF where a line starts, so a document holding any of these is refused outright.

use serde::de::DeserializeOwned;

/// Deepest nesting of collections accepted in a document (configurations need about 8).
pub const MAX_DEPTH: usize = 64;

/// The two document syntaxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

/// Why a document was refused, with the path of the value at fault (`.` for the whole
/// document) for serde problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocError {
    /// Refused before parsing (depth, anchors, aliases); no path.
    Refused(String),
    /// The parser's or the type's complaint, at `path`.
    Invalid { path: String, message: String },
}

/// Parses `text` as `syntax` into `T`, after the pre-scan.
pub fn parse<T: DeserializeOwned>(text: &str, syntax: Syntax) -> Result<T, DocError> {
    let invalid = |path: String, message: String| DocError::Invalid { path, message };
    match syntax {
        Syntax::Json => {
            check_json(text.as_bytes(), MAX_DEPTH).map_err(DocError::Refused)?;
            let mut de = serde_json::Deserializer::from_str(text);
            let v = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| invalid(e.path().to_string(), e.into_inner().to_string()))?;
            de.end().map_err(|e| invalid(".".into(), e.to_string()))?;
            Ok(v)
        }
        Syntax::Yaml => {
            check_yaml(text, MAX_DEPTH).map_err(DocError::Refused)?;
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| invalid(e.path().to_string(), e.into_inner().to_string()))
        }
    }
}

fn too_deep(max: usize, line: usize) -> String {
    format!("the document nests deeper than {max} levels (line {line})")
}

/// Checks that JSON nests at most `max` arrays and objects deep.
pub fn check_json(b: &[u8], max: usize) -> Result<(), String> {
    let (mut depth, mut line, mut in_str, mut escaped) = (0usize, 1usize, false, false);
    for &c in b {
        if c == b'\n' {
            line += 1;
        }
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(too_deep(max, line));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses the characters the YAML parser takes as a line break besides `\n` and `\r\n` (a
/// lone `\r`, U+0085, U+2028, U+2029), and U+FEFF, which it skips at a line's start: the scan in
/// [`check_yaml`] would read such a document differently from the parser.
fn check_yaml_chars(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut line = 1usize;
    for (i, c) in text.char_indices() {
        let name = match c {
            '\n' => {
                line += 1;
                continue;
            }
            '\r' if b.get(i + 1) == Some(&b'\n') => continue,
            '\r' => "a carriage return (U+000D) not followed by a line feed",
            '\u{85}' => "U+0085 (next line)",
            '\u{2028}' => "U+2028 (line separator)",
            '\u{2029}' => "U+2029 (paragraph separator)",
            '\u{FEFF}' => "U+FEFF (byte order mark)",
            _ => continue,
        };
        return Err(format!(
            "{name} at line {line} is not accepted in YAML: break lines with \\n or \\r\\n only (in a double-quoted string, write the character as an escape such as \\u{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Checks a YAML document for anchors (`&a`), aliases (`*a`) and nesting deeper than `max`,
/// and for line breaks other than `\n` and `\r\n` (see [`check_yaml_chars`]).
///
/// A conservative lexical scan, linear in the input: it follows quotes, comments, block
/// scalars, flow collections and block indentation closely enough to find every place a node
/// may start (where `&` and `*` can only be an anchor or an alias) and to estimate depth from
/// above. A `&` or `*` opening a continuation line of a multi-line plain scalar is refused
/// too; quoting the scalar avoids that. Every `[` and `{` outside quotes counts towards the
/// depth, wherever it stands (inside a plain scalar too), until a `]` or `}` closes it.
pub fn check_yaml(text: &str, max: usize) -> Result<(), String> {
    check_yaml_chars(text)?;
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    // Columns of the open block collections, strictly increasing.
    let mut stack: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // `[` and `{` outside quotes, less the `]` and `}` since (never below zero): at least the
    // depth of flow collections the parser is in, whatever this scan took them for.
    let mut brackets = 0usize;
    let mut quote = Quote::None;
    // While inside a block scalar: lines indented deeper than this column (or blank) are text.
    let mut block_scalar: Option<Option<usize>> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let line_no = n + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw).as_bytes();
        let indent = line.iter().take_while(|&&c| c == b' ').count();
        let blank = line[indent..].iter().all(|&c| c == b' ' || c == b'\t');
        if let Some(parent) = block_scalar {
            let marker = line.starts_with(b"---") || line.starts_with(b"...");
            if !marker && (blank || parent.is_none_or(|p| indent > p)) {
                continue;
            }
            block_scalar = None;
        }
        let mut i = 0;
        // Whether a node may start at `i`.
        let mut start = true;
        // Column where the node being read on this line began (a possible mapping key).
        let mut node_col = indent;
        if quote == Quote::None && flow == 0 {
            if blank || line[indent] == b'#' {
                continue;
            }
            while stack.last().is_some_and(|&c| c >= indent) {
                stack.pop();
            }
            i = indent;
        }
        while i < line.len() {
            let c = line[i];
            if quote != Quote::None {
                match (quote, c) {
                    (Quote::Double, b'\\') => i += 1,
                    (Quote::Double, b'"') => quote = Quote::None,
                    (Quote::Single, b'\'') if line.get(i + 1) == Some(&b'\'') => i += 1,
                    (Quote::Single, b'\'') => quote = Quote::None,
                    _ => {}
                }
                i += 1;
                continue;
            }
            let next_blank = line.get(i + 1).is_none_or(|&b| b == b' ' || b == b'\t');
            let prev_blank = i == 0 || line[i - 1] == b' ' || line[i - 1] == b'\t';
            if c == b' ' || c == b'\t' {
                i += 1;
                continue;
            }
            if c == b'#' && prev_blank {
                break;
            }
            match c {
                b'[' | b'{' => {
                    brackets += 1;
                    if stack.len() + brackets > max {
                        return Err(too_deep(max, line_no));
                    }
                }
                b']' | b'}' => brackets = brackets.saturating_sub(1),
                _ => {}
            }
            if start {
                match c {
                    b'&' => return Err(format!("YAML anchors (&name) are not accepted (line {line_no})")),
                    b'*' => return Err(format!("YAML aliases (*name) are not accepted (line {line_no})")),
                    b'!' => {
                        // A tag: the node follows it. Brackets in it count, in case the parser
                        // ends the tag before them.
                        while i < line.len() && line[i] != b' ' && line[i] != b'\t' {
                            if matches!(line[i], b'[' | b'{') {
                                brackets += 1;
                                if stack.len() + brackets > max {
                                    return Err(too_deep(max, line_no));
                                }
                            }
                            i += 1;
                        }
                        continue;
                    }
                    b'-' if i == 0 && line.starts_with(b"---") && line.get(3).is_none_or(|&b| b == b' ') => {
                        stack.clear();
                        i += 3;
                        continue;
                    }
                    b'-' | b'?' | b':' if next_blank => {
                        if flow == 0 {
                            stack.push(i);
                            if stack.len() + brackets > max {
                                return Err(too_deep(max, line_no));
                            }
                        }
                        i += 1;
                        continue;
                    }
                    b'|' | b'>' if flow == 0 => {
                        block_scalar = Some(stack.last().copied());
                        break;
                    }
                    b'"' => quote = Quote::Double,
                    b'\'' => quote = Quote::Single,
                    b'[' | b'{' => {
                        flow += 1;
                        i += 1;
                        continue;
                    }
                    _ => {}
                }
                node_col = i;
                start = false;
            }
            // Inside a scalar (or just past a quoted one, or a flow indicator).
            match c {
                b':' if next_blank || flow > 0 => {
                    if flow == 0 {
                        stack.push(node_col);
                        if stack.len() + brackets > max {
                            return Err(too_deep(max, line_no));
                        }
                    }
                    start = true;
                }
                b',' if flow > 0 => start = true,
                b'[' | b'{' if flow > 0 => {
                    flow += 1;
                    start = true;
                }
                b']' | b'}' if flow > 0 => flow -= 1,
                _ => {}
            }
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_flow(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn json_depth() {
        assert!(check_json(nested_flow(64).as_bytes(), 64).is_ok());
        assert!(check_json(nested_flow(65).as_bytes(), 64).is_err());
        assert!(check_json(br#"{"a": "[[[[[[[[[[", "b": "\"[[[["}"#, 2).is_ok());
        assert!(check_json(br#"{"a": {"b": {"c": 1}}}"#, 2).is_err());
    }

    #[test]
    fn yaml_depth_in_every_style() {
        assert!(check_yaml(&nested_flow(64), 64).is_ok());
        assert!(check_yaml(&nested_flow(65), 64).is_err());
        assert!(check_yaml(&format!("{}x", "- ".repeat(65)), 64).is_err());
        assert!(check_yaml(&format!("{}x", "- ".repeat(64)), 64).is_ok());
        let ladder: String = (0..65).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        assert!(check_yaml(&ladder, 64).is_err());
        let ladder: String = (0..64).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        assert!(check_yaml(&ladder, 64).is_ok(), "{:?}", check_yaml(&ladder, 64));
        // Mixed: compact sequences on indented lines.
        let mixed: String = (0..20).map(|i| format!("{}- - - k:\n", "        ".repeat(i))).collect();
        assert!(check_yaml(&mixed, 64).is_err());
        // Siblings do not add up.
        let wide: String = (0..500).map(|i| format!("k{i}:\n  a: [1, {{b: 2}}]\n  c:\n    - d\n")).collect();
        assert!(check_yaml(&wide, 4).is_ok(), "{:?}", check_yaml(&wide, 4));
    }

    #[test]
    fn yaml_anchors_and_aliases_are_found() {
        for doc in [
            "a: &x 1\nb: *x\n",
            "a: *x\n",
            "- &x [1]\n",
            "- - *x\n",
            "a: [1, *x]\n",
            "a: {b: *x}\n",
            "a: !!str &x v\n",
            "--- &x\na: 1\n",
            "? *x\n: 1\n",
            "&x a: 1\n",
            "a:\n  *x\n",
            "a: 'q'\nb: *x\n",
            "a: |\n  text\nb: *x\n",
            "- k: |\n    text\n  other: *x\n",
            "a: \"multi\n  line\"\nb: *x\n",
            "a: {\"b\":*x}\n",
        ] {
            assert!(check_yaml(doc, 64).is_err(), "{doc:?} passed");
        }
    }

    #[test]
    fn yaml_without_anchors_passes() {
        for doc in [
            "a: Tom & Jerry\n",
            "a: 2 * 3\n",
            "a: '&x'\nb: \"*x\"\n",
            "a: x # &y *z\n",
            "# &a comment\na: 1\n",
            "a: |\n  &x *y\n  - & -\nb: 1\n",
            "a: >-\n  *not an alias\n",
            "match: ^a[0-9]*$\n",
            "a: \"it's\"\nb: it's\nc: 'it''s'\n",
            "paths: [\"/a/*\", '/b/*']\n",
            "url: http://x/&y\n",
            "{\"upstreams\": {\"u\": {\"targets\": [{\"addr\": \"127.0.0.1:1\"}]}}}",
        ] {
            assert_eq!(check_yaml(doc, 64), Ok(()), "{doc:?}");
        }
    }

    /// Bodies that break lines (or hide a node's start) in ways only the YAML parser sees.
    fn line_break_tricks() -> Vec<String> {
        let laughs = |br: &str| {
            let mut doc = format!("a:{br}  &a [x,x,x,x,x,x,x,x]{br}");
            for (prev, name) in ["a", "b", "c", "d"].iter().zip(["b", "c", "d", "e"]) {
                doc.push_str(&format!("{name}:{br}  &{name} [{}]{br}", vec![format!("*{prev}"); 8].join(",")));
            }
            doc
        };
        vec![
            laughs("\r"),
            laughs("\u{85}"),
            laughs("\u{2028}"),
            laughs("\u{2029}"),
            "\u{FEFF}[&a [x,x], &b [*a,*a], &c [*b,*b]]\n".to_string(),
            "k: v\n\u{FEFF}&a [x]\n".to_string(),
        ]
    }

    #[test]
    fn yaml_line_breaks_the_scan_does_not_follow_are_refused() {
        for (doc, named) in
            line_break_tricks().iter().zip(["carriage return", "U+0085", "U+2028", "U+2029", "U+FEFF", "U+FEFF"])
        {
            let e = check_yaml(doc, 64).expect_err(doc);
            assert!(e.contains(named), "{doc:?}: {e}");
        }
        let e = check_yaml("a: 1\nb: 2\rc: 3\n", 64).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        // CRLF line breaks stay accepted, as do the characters written as escapes.
        assert_eq!(check_yaml("a: 1\r\nb: [x, y]\r\n", 64), Ok(()));
        assert_eq!(check_yaml("a: \"\\u2028 \\L \\N \\uFEFF\"\n", 64), Ok(()));
        // The parser itself never sees them.
        for doc in line_break_tricks() {
            assert!(matches!(parse::<serde_json::Value>(&doc, Syntax::Yaml), Err(DocError::Refused(_))), "{doc:?}");
        }
    }

    #[test]
    fn yaml_depth_counts_brackets_wherever_they_are() {
        let bom_deep = format!("\u{FEFF}{}", "[".repeat(1_000_000));
        assert!(check_yaml(&bom_deep, 64).is_err());
        // Past a plain scalar, where a block context would take them as text.
        assert!(check_yaml(&format!("a: x{}\n", "[".repeat(65)), 64).unwrap_err().contains("deeper than"));
        assert!(check_yaml(&format!("a: x{}\n", "{".repeat(65)), 64).unwrap_err().contains("deeper than"));
        // Balanced brackets in plain scalars do not add up across lines.
        let regexes: String = (0..200).map(|i| format!("m{i}: ^a[0-9]{{2}}$\n")).collect();
        assert_eq!(check_yaml(&regexes, 64), Ok(()));
    }

    #[test]
    fn json_is_parsed_as_json_and_yaml_as_yaml() {
        let v: serde_json::Value = parse("{\"a\": [1, 2]}", Syntax::Json).unwrap();
        assert_eq!(v["a"][1], 2);
        assert!(matches!(parse::<serde_json::Value>("a: 1", Syntax::Json), Err(DocError::Invalid { .. })));
        assert!(matches!(parse::<serde_json::Value>("{} {}", Syntax::Json), Err(DocError::Invalid { .. })));
        let v: serde_json::Value = parse("a: [1, 2]\n", Syntax::Yaml).unwrap();
        assert_eq!(v["a"][0], 1);
        assert!(matches!(parse::<serde_json::Value>("a: &x 1\nb: *x\n", Syntax::Yaml), Err(DocError::Refused(_))));
    }
}
