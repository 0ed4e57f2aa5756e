//! Property tests for the upstream HCL file parser (fuzzing on stable Rust). Cases come
//! from `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{KEYS, parse};

/// A string value as the file may hold it once decoded: anything but a line break (the file
/// format has `\n` for that, which the renderer writes).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,40}",
        "[\"\\\\#/*= \ta-z]{0,20}",
        Just("unix:///run/secrets/workload-spiffe-uds/socket".to_owned()),
    ]
}

/// The inverse of the parser's string rules.
fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Things the parser must skip between and after settings.
fn filler() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\n".to_owned()),
        "# [^\r\n]{0,20}\n",
        "// [^\r\n]{0,20}\n",
        "/\\* [^*\r]{0,20}\n[^*\r]{0,20} \\*/\n",
        "[ \t]{0,4}\n",
    ]
}

/// One rendered setting: a quoted string or (for `port`) a bare integer, maybe with a trailing
/// comment and uneven spacing.
fn setting(key: &'static str) -> impl Strategy<Value = (String, String)> {
    let val: BoxedStrategy<(String, String)> = if key == "port" {
        prop_oneof![
            "[0-9]{1,6}".prop_map(|n| (n.clone(), n)),
            value().prop_map(|v| (v.clone(), quote(&v))),
        ]
        .boxed()
    } else {
        value().prop_map(|v| (v.clone(), quote(&v))).boxed()
    };
    (
        val,
        "[ \t]{0,3}",
        "[ \t]{0,3}",
        prop::option::of(prop_oneof![
            Just(" # note".to_owned()),
            Just(" // note".to_owned()),
        ]),
    )
        .prop_map(move |((decoded, text), a, b, comment)| {
            (
                decoded,
                format!("{a}{key}{b}={a}{text}{}\n", comment.unwrap_or_default()),
            )
        })
}

/// A whole file: some of the keys, once each, in any order, with filler around them.
fn file() -> impl Strategy<Value = (BTreeMap<String, String>, String)> {
    let keys = prop::sample::subsequence(KEYS.to_vec(), 0..=KEYS.len()).prop_shuffle();
    keys.prop_flat_map(|keys| {
        let settings: Vec<_> = keys.iter().map(|k| setting(k)).collect();
        (Just(keys), settings, prop::collection::vec(filler(), 6))
    })
    .prop_map(|(keys, settings, fillers)| {
        let mut map = BTreeMap::new();
        let mut text = fillers[5].clone();
        for (i, (key, (decoded, line))) in keys.iter().zip(settings).enumerate() {
            map.insert((*key).to_owned(), decoded);
            text.push_str(&line);
            text.push_str(&fillers[i]);
        }
        (map, text)
    })
}

/// What any result must satisfy: only known keys, each value no longer than the file (the
/// output is bounded by the input), and errors naming a line that exists.
fn check_any(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(map) => {
            for (k, v) in &map {
                prop_assert!(KEYS.contains(&k.as_str()), "unknown key {k:?} accepted");
                prop_assert!(v.len() <= text.len());
            }
            prop_assert!(map.len() <= KEYS.len());
        }
        Err(e) => {
            prop_assert!(
                e.line >= 1 && e.line <= text.lines().count().max(1),
                "{e:?}"
            );
            // Reasons quote at most one line (escaped: up to 10 bytes per character).
            let longest = text.lines().map(str::len).max().unwrap_or(0);
            prop_assert!(
                e.reason.len() <= 10 * longest + 256,
                "{} bytes",
                e.reason.len()
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn rendered_files_parse_back_to_their_settings((map, text) in file()) {
        prop_assert_eq!(parse(&text), Ok(map), "{}", text);
    }

    #[test]
    fn a_setting_given_twice_is_refused_on_its_second_line(
        key in prop::sample::select(KEYS.to_vec()),
        (a, b) in (value(), value()),
        gap in filler(),
    ) {
        let text = format!("{key} = {}\n{gap}{key} = {}\n", quote(&a), quote(&b));
        let e = parse(&text).unwrap_err();
        prop_assert!(e.reason.contains("set twice"), "{e}");
        prop_assert_eq!(e.line, text.lines().count());
    }

    #[test]
    fn unknown_keys_and_bare_words_are_refused(
        key in "[a-z_]{1,12}".prop_filter("not a key", |k| !KEYS.contains(&k.as_str())),
        word in "[a-z][a-z.:/]{0,12}".prop_filter("not a number", |w| !w.bytes().all(|b| b.is_ascii_digit())),
    ) {
        let e = parse(&format!("{key} = \"x\"")).unwrap_err();
        prop_assert!(e.reason.contains("unknown key"), "{e}");
        let e = parse(&format!("host = {word}")).unwrap_err();
        prop_assert!(e.reason.contains("expected a quoted string or an integer"), "{e}");
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,800}") {
        check_any(&text)?;
    }

    #[test]
    fn mangled_files_never_panic(
        (_, text) in file(),
        cut in any::<prop::sample::Index>(),
        insert in "[\"\\\\/*#=\n]{1,3}",
    ) {
        let at = cut.index(text.len() + 1);
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        check_any(&text[..at])?;
        check_any(&format!("{}{insert}{}", &text[..at], &text[at..]))?;
    }
}
