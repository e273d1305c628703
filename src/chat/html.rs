//! Message text as HTML a browser can show safely.
//!
//! `formatted_body` goes through `ruma-html`'s sanitizer with the Matrix specification's strict
//! allow-list (tags, attributes, URL schemes; reply fallbacks removed), then links get
//! `rel="noopener noreferrer"` and lose `target`, and inline images (`mxc://` only, as the
//! allow-list says) are rewritten to the portal's media proxy. A plain `body` is escaped, its web
//! addresses made links, its line breaks kept. Nothing else reaches the page unescaped.

use ruma::html::{
    Attribute, ElementAttributesSchemes, Html, ListBehavior, LocalName, NodeRef, PropertiesNames,
    QualName, SanitizerConfig,
};

/// Sanitised HTML and the `mxc://` URIs it shows (the proxy serves only those).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub html: String,
    pub media: Vec<String>,
}

/// The proxy path of an `mxc://server/id` URI, or `None` when it is not one.
pub fn proxy_path(mxc: &str) -> Option<String> {
    let rest = mxc.strip_prefix("mxc://")?;
    let (server, id) = rest.split_once('/')?;
    let ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c) || extra.contains(&c))
    };
    (ok(server, &['.', ':', '[', ']']) && ok(id, &[]))
        .then(|| format!("/discussions/media/{server}/{id}"))
}

fn name(local: &str) -> QualName {
    QualName::new(None, Default::default(), LocalName::from(local))
}

// html5ever's attributes hold tendrils (interior mutability); the set is only edited here.
#[allow(clippy::mutable_key_type)]
fn set(attrs: &mut std::collections::BTreeSet<Attribute>, local: &str, value: Option<&str>) {
    attrs.retain(|a| &*a.name.local != local);
    if let Some(value) = value {
        attrs.insert(Attribute {
            name: name(local),
            value: value.into(),
        });
    }
}

#[allow(clippy::mutable_key_type)]
fn walk(node: &NodeRef, media: &mut Vec<String>) {
    if let Some(el) = node.as_element() {
        let mut attrs = el.attrs.borrow_mut();
        match &*el.name.local {
            "a" => {
                // The sanitiser's own scheme check can be bypassed (ruma#2557): checked again here.
                let href = attrs
                    .iter()
                    .find(|a| &*a.name.local == "href")
                    .map(|a| a.value.to_string());
                set(&mut attrs, "href", href.as_deref().and_then(safe_href));
                set(&mut attrs, "target", None);
                set(&mut attrs, "rel", Some("noopener noreferrer"));
            }
            "img" => {
                let src = attrs
                    .iter()
                    .find(|a| &*a.name.local == "src")
                    .map(|a| a.value.to_string());
                let proxied = src.as_deref().and_then(proxy_path);
                if let (Some(src), Some(_)) = (&src, &proxied) {
                    media.push(src.clone());
                }
                set(&mut attrs, "src", proxied.as_deref());
                set(&mut attrs, "loading", Some("lazy"));
            }
            _ => {}
        }
    }
    for child in node.children() {
        walk(&child, media);
    }
}

/// A link target a page may show: `http(s)`, `mailto` and `tel` (the allow-list's own schemes;
/// `mxc` is for images only); anything else (`javascript:`, `data:`, relative or malformed) is
/// dropped. The scheme is read the way browsers read it: ASCII whitespace and controls removed,
/// any case.
fn safe_href(href: &str) -> Option<&str> {
    let compact: String = href
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
        .collect();
    let (scheme, _) = compact.split_once(':')?;
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "http" | "https" | "mailto" | "tel"
    )
    .then(|| href.trim())
}

/// A message's `formatted_body` (format `org.matrix.custom.html`), sanitised.
pub fn formatted(body: &str) -> Rendered {
    let html = Html::parse(body);
    // The specification's strict list, plus `tel:` (dial-in numbers, as Element allows).
    let config = SanitizerConfig::strict()
        .remove_reply_fallback()
        .allow_schemes(
            [ElementAttributesSchemes {
                element: "a",
                attr_schemes: &[PropertiesNames {
                    parent: "href",
                    properties: &["tel"],
                }],
            }],
            ListBehavior::Add,
        );
    html.sanitize_with(&config);
    let mut media = Vec::new();
    for child in html.children() {
        walk(&child, &mut media);
    }
    Rendered {
        html: html.to_string(),
        media,
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A plain-text `body`: escaped, `http(s)://` addresses as links, line breaks kept.
pub fn plain(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    for (i, line) in body.lines().enumerate() {
        if i > 0 {
            out.push_str("<br>");
        }
        for (j, word) in line.split(' ').enumerate() {
            if j > 0 {
                out.push(' ');
            }
            let is_link = (word.starts_with("https://") || word.starts_with("http://"))
                && word.len() > "https://".len();
            if is_link {
                // Trailing punctuation belongs to the sentence, not the address.
                let url = word.trim_end_matches(['.', ',', ';', ':', '!', '?', ')']);
                let rest = &word[url.len()..];
                let url = escape(url);
                out.push_str(&format!(
                    "<a href=\"{url}\" rel=\"noopener noreferrer\">{url}</a>{}",
                    escape(rest)
                ));
            } else {
                out.push_str(&escape(word));
            }
        }
    }
    out
}

/// The plain text of a reply's `body` without its fallback (the quoted lines before it).
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    match body.find("\n\n") {
        Some(i) => &body[i + 2..],
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_get_rel_and_lose_target_and_scripts_go() {
        let r = formatted(
            r#"<a href="https://example.org" target="_blank" rel="opener">x</a><script>alert(1)</script><a href="javascript:alert(1)">y</a>"#,
        );
        assert!(
            r.html.contains(r#"href="https://example.org""#),
            "{}",
            r.html
        );
        assert!(
            r.html.contains(r#"rel="noopener noreferrer""#),
            "{}",
            r.html
        );
        assert!(!r.html.contains("target"), "{}", r.html);
        assert!(!r.html.contains("<script"), "{}", r.html);
        assert!(!r.html.contains("javascript:"), "{}", r.html);
        let tel = formatted(r#"<a href="tel:+33189000000,,123%23">appeler</a>"#);
        assert!(
            tel.html.contains(r#"href="tel:+33189000000,,123%23""#),
            "{}",
            tel.html
        );
    }

    /// Every link target left in `html`, entities decoded.
    fn hrefs(html: &str) -> Vec<String> {
        html.split("href=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(|v| {
                v.replace("&amp;", "&")
                    .replace("&#58;", ":")
                    .replace("&colon;", ":")
            })
            .collect()
    }

    #[test]
    fn sanitiser_bypasses_leave_no_active_link_or_markup() {
        let corpus = [
            // Another attribute before href (ruma#2557).
            r#"<a title="x" href="javascript:alert(1)">a</a>"#,
            r#"<a rel="x" target="y" href="javascript:alert(1)">a</a>"#,
            r#"<a data-mx-color="x" href="data:text/html,<script>alert(1)</script>">a</a>"#,
            // Entities, whitespace, controls and case inside the scheme.
            r#"<a href="&#106;avascript:alert(1)">a</a>"#,
            r#"<a href="&#x6A;&#x61;vascript&#58;alert(1)">a</a>"#,
            r#"<a href="java&#x09;script:alert(1)">a</a>"#,
            r#"<a href="java&#10;script:alert(1)">a</a>"#,
            r#"<a href=" JaVaScRiPt:alert(1)">a</a>"#,
            "<a href=\"\u{1}javascript:alert(1)\">a</a>",
            r#"<a href="javascript&colon;alert(1)">a</a>"#,
            r#"<a href="vbscript:msgbox(1)">a</a>"#,
            r#"<a href="DATA:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">a</a>"#,
            r#"<a href='javascript:alert(1)'>a</a>"#,
            r#"<a href=javascript:alert(1)>a</a>"#,
            r#"<a href="//evil.example/x">a</a>"#,
            r#"<a href="/admin/services">a</a>"#,
            // Nested and malformed tags.
            r#"<a href="https://ok.example"><a href="javascript:alert(1)">b</a></a>"#,
            r#"<scr<script>ipt>alert(1)</script>"#,
            r#"<<a href="javascript:alert(1)">a</a>"#,
            r#"<a href="javascript:alert(1)"<b>x</b>"#,
            r#"<svg><a href="javascript:alert(1)">a</a></svg>"#,
            r#"<math><a href="javascript:alert(1)">a</a></math>"#,
            r#"<img src="x" onerror="alert(1)"><iframe src="javascript:alert(1)"></iframe>"#,
            r#"<font color="red" style="background:url(javascript:alert(1))">x</font>"#,
            r#"<a href="https://ok.example" onclick="alert(1)" onmouseover="alert(1)">a</a>"#,
            r#"<form action="javascript:alert(1)"><button>x</button></form>"#,
            r#"<img src="mxc://evil/../../x"><img src="javascript:alert(1)">"#,
            "<a href=\"javascript:alert(1)\u{0}\">a</a>",
        ];
        for input in corpus {
            let out = formatted(input);
            let lower = out.html.to_lowercase();
            for bad in [
                "<script",
                "<iframe",
                "<svg",
                "<math",
                "<form",
                "onerror",
                "onclick",
                "onmouseover",
                "style=",
            ] {
                assert!(!lower.contains(bad), "{input} → {}", out.html);
            }
            for href in hrefs(&out.html) {
                let h = href.to_lowercase();
                assert!(
                    [
                        "http://",
                        "https://",
                        "mailto:",
                        "tel:",
                        "/discussions/media/"
                    ]
                    .iter()
                    .any(|ok| h.starts_with(ok)),
                    "{input} → href {href:?}"
                );
            }
        }
        let kept = formatted(
            r#"<a title="t" href="https://ok.example/a">w</a> <a href="mailto:a@b.gouv.fr">m</a>"#,
        );
        assert_eq!(
            hrefs(&kept.html),
            vec!["https://ok.example/a", "mailto:a@b.gouv.fr"],
            "{}",
            kept.html
        );
    }

    #[test]
    fn inline_images_go_through_the_proxy_and_others_lose_their_source() {
        let r = formatted(
            r#"<img src="mxc://localhost/AbC123" alt="a"><img src="https://evil.example/x.png" alt="b" onerror="x()">"#,
        );
        assert!(
            r.html
                .contains(r#"src="/discussions/media/localhost/AbC123""#),
            "{}",
            r.html
        );
        assert!(!r.html.contains("evil.example"), "{}", r.html);
        assert!(!r.html.contains("onerror"), "{}", r.html);
        assert_eq!(r.media, vec!["mxc://localhost/AbC123".to_owned()]);
    }

    #[test]
    fn reply_fallbacks_are_removed() {
        let r = formatted("<mx-reply><blockquote>old</blockquote></mx-reply>new");
        assert_eq!(r.html, "new");
        assert_eq!(strip_reply_fallback("> <@a:x> old\n> more\n\nnew"), "new");
        assert_eq!(strip_reply_fallback("plain"), "plain");
    }

    #[test]
    fn plain_text_is_escaped_with_links_and_line_breaks() {
        let out = plain("<b>hi</b> & \"you\"\nsee https://example.org/a?b=1&c=2.");
        assert_eq!(
            out,
            "&lt;b&gt;hi&lt;/b&gt; &amp; &quot;you&quot;<br>see <a href=\"https://example.org/a?b=1&amp;c=2\" rel=\"noopener noreferrer\">https://example.org/a?b=1&amp;c=2</a>."
        );
        assert!(!plain("javascript:alert(1)").contains("<a"));
    }

    #[test]
    fn proxy_paths_only_for_well_formed_mxc() {
        assert_eq!(
            proxy_path("mxc://matrix.example:8448/abc_D-1").as_deref(),
            Some("/discussions/media/matrix.example:8448/abc_D-1")
        );
        assert_eq!(proxy_path("mxc://x/../../admin"), None);
        assert_eq!(proxy_path("https://x/y"), None);
        assert_eq!(proxy_path("mxc://x/"), None);
    }
}
