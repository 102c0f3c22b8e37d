//! Link extraction: the part of the worker that reads HTML.
//!
//! A crawler needs two things from a page: the `href`s of links and the
//! document's `<base href>`. A streaming tokenizer (lol_html, the HTML
//! parser behind Cloudflare's rewriter) gives both without building a DOM,
//! so a page is parsed chunk by chunk as it arrives and the body never has
//! to be held whole. Resolution waits for the end of the document because
//! `<base>` governs every link of the page, including ones seen before it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use lol_html::{element, HtmlRewriter, OutputSink, Settings};
use url::Url;

use crate::urlnorm;

/// A page with more links than this is a trap or a sitemap dump; the rest
/// are ignored rather than held in memory.
pub const MAX_LINKS_PER_PAGE: usize = 10_000;

#[derive(Default)]
struct Found {
    hrefs: Vec<String>,
    base: Option<String>,
}

struct Discard;

impl OutputSink for Discard {
    fn handle_chunk(&mut self, _: &[u8]) {}
}

/// Feeds an HTML document in chunks; [`Extractor::finish`] returns its links.
pub struct Extractor {
    rewriter: Option<HtmlRewriter<'static, Discard>>,
    found: Rc<RefCell<Found>>,
}

impl Default for Extractor {
    fn default() -> Self {
        Self::new()
    }
}

impl Extractor {
    pub fn new() -> Self {
        let found = Rc::new(RefCell::new(Found::default()));
        let (links, base) = (found.clone(), found.clone());
        let settings = Settings::new()
            .append_element_content_handler(element!("a[href], area[href]", move |el| {
                let mut f = links.borrow_mut();
                if f.hrefs.len() < MAX_LINKS_PER_PAGE {
                    if let Some(href) = el.get_attribute("href") {
                        f.hrefs.push(htmlize::unescape_attribute(href).into_owned());
                    }
                }
                Ok(())
            }))
            .append_element_content_handler(element!("base[href]", move |el| {
                let mut f = base.borrow_mut();
                // Only the first <base href> counts (HTML: "frozen base URL").
                if f.base.is_none() {
                    f.base = el
                        .get_attribute("href")
                        .map(|b| htmlize::unescape_attribute(b).into_owned());
                }
                Ok(())
            }));
        Extractor {
            rewriter: Some(HtmlRewriter::new(settings, Discard)),
            found,
        }
    }

    /// Parses the next chunk. A parser error (only memory limits, in
    /// practice) ends parsing; links found so far are kept.
    pub fn write(&mut self, chunk: &[u8]) {
        if let Some(rw) = self.rewriter.as_mut() {
            if rw.write(chunk).is_err() {
                self.rewriter = None;
            }
        }
    }

    /// Ends the document and returns its http(s) links, resolved against the
    /// page's base URL, normalised and deduplicated in document order.
    pub fn finish(mut self, page_url: &Url) -> Vec<String> {
        if let Some(rw) = self.rewriter.take() {
            let _ = rw.end();
        }
        let found = std::mem::take(&mut *self.found.borrow_mut());
        let base = found
            .base
            .as_deref()
            .and_then(|b| page_url.join(b.trim()).ok())
            .filter(|b| matches!(b.scheme(), "http" | "https"))
            .unwrap_or_else(|| page_url.clone());
        let mut seen = HashSet::new();
        let mut links = Vec::new();
        for href in &found.hrefs {
            if let Some(url) = urlnorm::resolve(&base, href) {
                let s = String::from(url);
                if seen.insert(s.clone()) {
                    links.push(s);
                }
            }
        }
        links
    }
}

/// Convenience for a document held in memory.
pub fn extract_links(page_url: &Url, html: &[u8]) -> Vec<String> {
    let mut x = Extractor::new();
    x.write(html);
    x.finish(page_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(page: &str, html: &str) -> Vec<String> {
        extract_links(&Url::parse(page).unwrap(), html.as_bytes())
    }

    #[test]
    fn resolves_dedupes_and_filters() {
        let html = r##"<html><body>
            <a href="a.html">a</a>
            <a href="/b.html#part">b</a>
            <a href='./a.html'>again</a>
            <a href=HTTP://Example.COM:80/c>c</a>
            <a href="#top">self</a>
            <a href="mailto:x@example.com">mail</a>
            <a href="javascript:void(0)">js</a>
            <a href="ftp://example.com/f">ftp</a>
            <a href="http://[::1">broken</a>
            <a>no href</a>
            <area href="../map.html">
            <link href="/style.css" rel="stylesheet">
            <img src="/img.png">
            <script>var s = '<a href="/in-script.html">';</script>
            <!-- <a href="/in-comment.html"> -->
            <A HREF="/Upper.html">caps</A>
            <a href="/q?b=2&amp;a=1&#x26;c=&#51;">entities</a>
            <a href="/legacy?x=1&copy=2">legacy</a>
        </body></html>"##;
        assert_eq!(
            links("http://example.com/dir/page.html", html),
            vec![
                "http://example.com/dir/a.html",
                "http://example.com/b.html",
                "http://example.com/c",
                "http://example.com/dir/page.html",
                "http://example.com/map.html",
                "http://example.com/Upper.html",
                "http://example.com/q?b=2&a=1&c=3",
                // In attributes, `&copy` followed by `=` is not a reference.
                "http://example.com/legacy?x=1&copy=2",
            ]
        );
    }

    #[test]
    fn honours_base_href_even_for_earlier_links() {
        let html = r#"<a href="early.html"></a><base href="/sub/"><base href="/ignored/"><a href="x.html"></a>"#;
        assert_eq!(
            links("http://example.com/a/b.html", html),
            vec![
                "http://example.com/sub/early.html",
                "http://example.com/sub/x.html"
            ]
        );
        // An absolute base on another host moves relative links there.
        let html = r#"<head><base href="https://cdn.example.org/root/"></head><a href="p">p</a><a href="/q">q</a>"#;
        assert_eq!(
            links("http://example.com/", html),
            vec![
                "https://cdn.example.org/root/p",
                "https://cdn.example.org/q"
            ]
        );
        // A javascript: base is ignored rather than breaking every link.
        let html = r#"<base href="javascript:alert(1)"><a href="p">p</a>"#;
        assert_eq!(
            links("http://example.com/d/", html),
            vec!["http://example.com/d/p"]
        );
    }

    #[test]
    fn streams_across_chunk_boundaries() {
        let html = br#"<p><a href="/one.html">1</a><a hr"#;
        let rest = br#"ef="/two.html">2</a><base href="/b/"></p>"#;
        let mut x = Extractor::new();
        x.write(html);
        x.write(rest);
        assert_eq!(
            x.finish(&Url::parse("http://example.com/").unwrap()),
            vec!["http://example.com/one.html", "http://example.com/two.html"]
        );
    }

    #[test]
    fn survives_garbage() {
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
        let _ = extract_links(&Url::parse("http://example.com/").unwrap(), &garbage);
        // A tag cut off by the body size cap must not panic either.
        let _ = links("http://example.com/", "<a href=\"/x");
    }
}
