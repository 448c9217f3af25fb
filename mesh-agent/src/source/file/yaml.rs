//! YAML text to documents, bounded before the parser sees it. libyaml's scanner (under
//! yaml_serde) costs time proportional to the flow depth for every token, so 200 KB of nested
//! `[` took a thread for a minute; the size limit and a linear pre-scan of the flow depth
//! keep every file's cost small. The parse itself runs off the async runtime (see `watch`).

/// Largest configuration file read (Kubernetes caps a ConfigMap at 1 MiB).
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Deepest flow nesting (`[` / `{`) accepted; Kubernetes objects written as flow YAML or JSON
/// stay far below it.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Why a file was not handed to the parser.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("the file is larger than {MAX_FILE_BYTES} bytes; refused before parsing")]
    TooLarge,
    #[error("flow collections ([ or {{) nested deeper than {MAX_FLOW_DEPTH} at line {line}; refused before parsing")]
    TooDeep { document: usize, line: usize },
    #[error("not UTF-8 text: {0}")]
    NotUtf8(std::str::Utf8Error),
}

impl Refused {
    /// The document the refusal is about (0: the whole file).
    pub fn document(&self) -> usize {
        match self {
            Refused::TooDeep { document, .. } => *document,
            _ => 0,
        }
    }
}

/// The file's text, if it is within the limits.
pub fn checked(bytes: &[u8]) -> Result<&str, Refused> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Refused::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(Refused::NotUtf8)?;
    if let Some((document, line)) = too_deep(text, MAX_FLOW_DEPTH) {
        return Err(Refused::TooDeep { document, line });
    }
    Ok(text)
}

/// The first (document, line) where the flow depth exceeds `max`, in one linear pass.
///
/// Lexical, not a YAML parser: it skips comments and quoted scalars (where brackets are text)
/// and counts every other bracket, so brackets inside plain scalars count too (an
/// over-estimate, harmless at this limit). A file crafted to mislead it still only costs a
/// blocking thread the time its bounded size allows.
fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut document) = (0usize, 1usize, 1usize);
    let mut content = false;
    let mut prev = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'#' if matches!(prev, b'\n' | b' ' | b'\t') => {
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'-' | b'.' if prev == b'\n' && is_marker(&bytes[i..]) => {
                // A new document: flow collections cannot continue across it.
                depth = 0;
                if content {
                    document += 1;
                    content = false;
                }
                i += 3;
                prev = b' ';
                continue;
            }
            b'\'' | b'"' if starts_scalar(prev, depth) => {
                let end = quoted_end(bytes, i);
                line += bytes[i..end].iter().filter(|c| **c == b'\n').count();
                content = true;
                i = end;
                prev = b'"';
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some((document, line));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'#') {
            content = true;
        }
        prev = b;
        i += 1;
    }
    None
}

/// `---` or `...` followed by a blank or the end.
fn is_marker(rest: &[u8]) -> bool {
    (rest.starts_with(b"---") || rest.starts_with(b"..."))
        && rest
            .get(3)
            .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A quote opens a quoted scalar where a token may start; elsewhere (`it's`) it is text.
fn starts_scalar(prev: u8, depth: usize) -> bool {
    matches!(prev, b'\n' | b' ' | b'\t' | b'[' | b'{' | b',') || (depth > 0 && prev == b':')
}

/// The index just past the quoted scalar opening at `start` (`''` is a quote in single-quoted
/// scalars; `\` escapes in double-quoted ones).
fn quoted_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 1,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
            c if c == quote => return i + 1,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_quickly_with_its_line() {
        let deep = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
            "[".repeat(100_000)
        );
        let start = std::time::Instant::now();
        assert_eq!(
            checked(deep.as_bytes()),
            Err(Refused::TooDeep {
                document: 1,
                line: 3
            })
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let second = format!("a: 1\n---\nb: {}", "{a: ".repeat(65));
        assert_eq!(checked(second.as_bytes()).unwrap_err().document(), 2);
    }

    #[test]
    fn brackets_in_quotes_and_comments_and_ordinary_nesting_pass() {
        let ok = concat!(
            "metadata:\n",
            "  annotations:\n",
            "    last-applied: '{\"a\":{\"b\":[[[[\"it''s\"]]]]}}'\n",
            "    regex: \"^[a-z\\\"[\"  # an unclosed [[[[ here\n",
            "    note: it's [not] a quote\n",
            "spec: {ports: [{port: 80, names: [a, b]}], selector: {app: web}}\n",
            "---\n",
            "x: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
        );
        assert_eq!(checked(ok.as_bytes()), Ok(ok));
        // Unbalanced opens do not leak from one document into the next.
        let leaky = format!("{}\n", "a: x [\n---\n".repeat(100));
        assert!(checked(leaky.as_bytes()).is_ok());
    }

    #[test]
    fn closing_brackets_inside_quotes_do_not_hide_depth() {
        let sneaky = format!("x: {}\n", "[ ']', ".repeat(100));
        assert!(matches!(
            checked(sneaky.as_bytes()),
            Err(Refused::TooDeep { .. })
        ));
    }

    #[test]
    fn oversized_files_are_refused() {
        let big = vec![b'#'; MAX_FILE_BYTES + 1];
        assert_eq!(checked(&big), Err(Refused::TooLarge));
    }
}
