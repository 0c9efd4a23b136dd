//! The page layout every page shares: skip link, navigation, one `main`.
//! Plain HTML forms and links, so every page works with the keyboard alone
//! and without JavaScript.

use maud::{html, Markup, PreEscaped, DOCTYPE};

const STYLE: &str = r#"
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1b2a3a;color:#fff;padding:.5rem 1rem;display:flex;gap:1.5rem;align-items:center}
header a{color:#fff}
header .who{margin-left:auto;opacity:.85}
nav ul{list-style:none;display:flex;gap:1rem;margin:0;padding:0}
main{padding:1rem 1.5rem;max-width:80rem}
a{color:#0b5cad}
a:focus,button:focus,input:focus,select:focus{outline:3px solid #f5a623;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:.5rem;background:#fff;color:#000;padding:.3rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5rem 0 1.5rem}
th,td{border:1px solid #d5d9de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f4}
pre{background:#fff;border:1px solid #d5d9de;padding:.5rem;overflow:auto;max-height:24rem;white-space:pre-wrap;word-break:break-all}
form.inline{display:inline}
fieldset{border:1px solid #d5d9de;background:#fff;margin:0 0 1rem}
label{margin-right:.3rem}
input,select{margin-right:1rem}
button{padding:.25rem .7rem}
.cards{display:flex;flex-wrap:wrap;gap:1rem}
.card{background:#fff;border:1px solid #d5d9de;padding:.5rem 1rem;min-width:12rem}
.card .n{font-size:1.6rem;font-weight:600}
.bad{color:#a3160e}.ok{color:#1d6b2a}
svg text{font-size:11px;fill:#444}
"#;

/// A whole page for `user`, titled `title`, `current` marking the menu item.
pub fn page(title: &str, user: &str, current: &str, body: Markup) -> Markup {
    let items = [
        ("/", "Overview"),
        ("/events", "Events"),
        ("/dead-letters", "Dead letters"),
        ("/actions", "Actions"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · callstream console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    strong { "callstream console" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label) in items {
                                li {
                                    @if href == current {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    span class="who" { "Signed in as " (user) }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A JSON document, pretty-printed, for a `pre`.
pub fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Bytes as text when they are UTF-8 (pretty when JSON), else a note.
pub fn body_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.is_object() || v.is_array() => pretty(&v),
            _ => text.to_string(),
        },
        Err(_) => format!("({} bytes, not UTF-8)", bytes.len()),
    }
}
