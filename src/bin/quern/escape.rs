//! Text from users (payloads, errors, progress, keys, queue names, paths) as the utility prints
//! it for people: every character that could move the cursor, recolour or rewrite the
//! terminal, or reorder what follows it, is shown as an escape instead of being sent.
//!
//! Escaped: the C0 controls (`\0`, `\t`, `\n`, `\r`, others as `\x1b`), DEL (`\x7f`), the C1
//! controls (`\u{9b}`), the bidirectional controls (`\u{202e}`), zero-width and line-breaking
//! format characters (`\u{200b}`, `\u{2028}`, `\u{feff}`). Backslashes stay as they are, so
//! that JSON text reads as JSON: the exact bytes are in `--format json`.

use std::fmt::Write as _;

/// Whether `c` is shown as an escape.
fn hidden(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}'
        // Arabic letter mark; zero-width space, joiners, LRM and RLM.
        | '\u{61c}' | '\u{200b}'..='\u{200f}'
        // Line and paragraph separators; LRE, RLE, PDF, LRO, RLO.
        | '\u{2028}'..='\u{202e}'
        // Word joiner and invisible operators; LRI, RLI, FSI, PDI; deprecated format controls.
        | '\u{2060}'..='\u{206f}'
        // Byte order mark (zero-width no-break space).
        | '\u{feff}'
        // Interlinear annotation controls.
        | '\u{fff9}'..='\u{fffb}')
}

/// The escape of one character, appended to `out`.
fn push(out: &mut String, c: char) {
    match c {
        '\0' => out.push_str("\\0"),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\0'..='\x7f' => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` with every hidden character escaped.
pub fn escape(s: &str) -> String {
    if !s.chars().any(hidden) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            push(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` escaped and cut to at most `max` characters, ending in `…` when cut. An escape is never
/// cut in the middle.
pub fn escape_cut(s: &str, max: usize) -> String {
    let escaped = escape(s);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let room = max.saturating_sub(1);
    let mut out = String::new();
    let mut width = 0;
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        if hidden(c) {
            push(&mut piece, c);
        } else {
            piece.push(c);
        }
        let w = piece.chars().count();
        if width + w > room {
            break;
        }
        width += w;
        out.push_str(&piece);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_become_escapes_and_text_stays() {
        assert_eq!(
            escape("a\x1b[31mred\r\x08\0\t\n\x7f\u{9b}\u{202e}é\\"),
            "a\\x1b[31mred\\r\\x08\\0\\t\\n\\x7f\\u{9b}\\u{202e}é\\"
        );
        assert_eq!(escape("plain {\"a\":1}"), "plain {\"a\":1}");
    }

    #[test]
    fn a_cut_keeps_whole_escapes() {
        assert_eq!(escape_cut("abcdef", 6), "abcdef");
        assert_eq!(escape_cut("abcdefg", 6), "abcde…");
        assert_eq!(escape_cut("ab\x1bcdef", 6), "ab…");
        assert_eq!(escape_cut("ab\x1bcdef", 7), "ab\\x1b…");
    }
}
