//! Showing untrusted text (request paths, host names, file names) in logs and
//! messages without letting it forge or hide anything.
//!
//! A log line is read by terminals and log viewers. C1 controls (CSI U+009B, OSC
//! U+009D) drive terminals that honour 8-bit controls; NEL (U+0085) and
//! U+2028/U+2029 break lines in viewers that follow Unicode; bidi overrides and
//! isolates reorder what is displayed ("Trojan Source", CVE-2021-42574); invisible
//! format characters hide text. Each is shown escaped (`\u{202e}`), never dropped,
//! so what was sent stays visible.

/// Whether `c` would act on a display rather than be shown: a control character
/// (C0, DEL, C1 with NEL), a line or paragraph separator, a bidi control, or an
/// invisible format character.
pub fn is_unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'                    // soft hyphen
            | '\u{061C}'                  // Arabic letter mark (bidi)
            | '\u{180E}'                  // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}'     // zero-width space, joiners, LRM, RLM
            | '\u{2028}'..='\u{2029}'     // line and paragraph separators
            | '\u{202A}'..='\u{202E}'     // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'     // word joiner, invisible operators, bidi isolates
            | '\u{FEFF}'                  // zero-width no-break space (BOM)
            | '\u{FFF9}'..='\u{FFFB}'     // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tag characters (invisible ASCII look-alikes)
        )
}

/// `text` as it may be shown: every character [`is_unsafe_to_show`] escaped as
/// `\u{…}`, and at most `max_chars` characters of it kept, followed by a marker
/// saying how many were left out.
pub fn shown(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        if is_unsafe_to_show(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    let left_out = chars.count();
    if left_out > 0 {
        out.push_str(&format!("…[{left_out} more chars]"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_bidi_are_escaped_not_dropped() {
        for (text, want) in [
            ("plain /path?q=1", "plain /path?q=1"),
            ("ünïcode ✓ 漢字", "ünïcode ✓ 漢字"),
            ("a\nb\r\tc\0", "a\\u{a}b\\u{d}\\u{9}c\\u{0}"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("del\u{7f}", "del\\u{7f}"),
            (
                "csi\u{9b}31m osc\u{9d}0;t\u{9c}",
                "csi\\u{9b}31m osc\\u{9d}0;t\\u{9c}",
            ),
            ("nel\u{85}FAKE", "nel\\u{85}FAKE"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("rlo\u{202e}gnp.exe", "rlo\\u{202e}gnp.exe"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            (
                "zw\u{200b}sp\u{200d}\u{200e}\u{200f}",
                "zw\\u{200b}sp\\u{200d}\\u{200e}\\u{200f}",
            ),
            ("bom\u{feff} alm\u{61c}", "bom\\u{feff} alm\\u{61c}"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
        ] {
            assert_eq!(shown(text, 100), want, "{text:?}");
        }
    }

    #[test]
    fn length_is_capped_with_a_marker() {
        assert_eq!(shown("abcdef", 6), "abcdef");
        assert_eq!(shown("abcdef", 4), "abcd…[2 more chars]");
        assert_eq!(shown("ééé", 1), "é…[2 more chars]");
        assert_eq!(shown("\u{85}\u{85}", 1), "\\u{85}…[1 more chars]");
        let long = "x".repeat(60_000);
        assert_eq!(
            shown(&long, 200).chars().count(),
            200 + "…[59800 more chars]".len() - 2
        );
        assert_eq!(shown("", 0), "");
    }
}
