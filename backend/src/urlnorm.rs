//! URL rules shared by validation, link extraction and the cache key.
//!
//! A URL must have one spelling everywhere: the BFS dedupes on it, the cache
//! is keyed by it and clients compare levels with it. Parsing with the `url`
//! crate already lowercases scheme and host, drops default ports, resolves
//! dot segments and percent-encodes; on top of that we drop fragments (they
//! name a place in a page, not another page), credentials (never sent by a
//! crawler) and an empty trailing `?`.

use url::Url;

/// Why a string is not a crawlable URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    /// Not a URL at all, or an http(s) URL without a host.
    Invalid,
    /// A URL, but not http or https.
    UnsupportedScheme,
}

/// Parses an absolute URL and normalises it (see the module docs).
pub fn normalize(input: &str) -> Result<Url, UrlError> {
    let url = Url::parse(input.trim()).map_err(|_| UrlError::Invalid)?;
    finish(url)
}

/// Resolves a link as written in a page against the page's base URL and
/// normalises it. `None` for links a crawler does not follow (`mailto:`,
/// `javascript:`, unparseable hrefs, ...).
pub fn resolve(base: &Url, href: &str) -> Option<Url> {
    let url = base.join(href.trim()).ok()?;
    finish(url).ok()
}

fn finish(mut url: Url) -> Result<Url, UrlError> {
    match url.scheme() {
        "http" | "https" => {}
        _ => return Err(UrlError::UnsupportedScheme),
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(UrlError::Invalid),
    }
    url.set_fragment(None);
    if url.query() == Some("") {
        url.set_query(None);
    }
    // Credentials in a link are either a mistake or a trap; a crawler should
    // neither send them nor let them split one page into two cache keys.
    // Both setters only fail for URLs without a host, excluded above.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(url)
}

/// The host part used by the same-host option: hostname or IP literal,
/// without scheme or port (`http://a/` and `https://a:8443/` are one host).
pub fn host_of(url: &Url) -> Option<&str> {
    url.host_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).unwrap().to_string()
    }

    #[test]
    fn canonical_spelling() {
        assert_eq!(n("HTTP://Example.COM"), "http://example.com/");
        assert_eq!(n("http://example.com:80/a"), "http://example.com/a");
        assert_eq!(n("https://example.com:443/a"), "https://example.com/a");
        assert_eq!(
            n("https://example.com:8443/a"),
            "https://example.com:8443/a"
        );
        assert_eq!(n("http://example.com/a/./b/../c"), "http://example.com/a/c");
        assert_eq!(n("http://example.com/a#frag"), "http://example.com/a");
        assert_eq!(n("http://example.com/a?"), "http://example.com/a");
        assert_eq!(
            n("http://example.com/a?b=2&a=1"),
            "http://example.com/a?b=2&a=1"
        );
        assert_eq!(n("http://user:pw@example.com/"), "http://example.com/");
        assert_eq!(n("  http://example.com/x y  "), "http://example.com/x%20y");
        assert_eq!(n("http://bücher.example/"), "http://xn--bcher-kva.example/");
        // Path case is meaningful on most servers: kept.
        assert_eq!(n("http://example.com/Upper"), "http://example.com/Upper");
    }

    #[test]
    fn rejects_what_is_not_crawlable() {
        assert_eq!(normalize("not a url").unwrap_err(), UrlError::Invalid);
        assert_eq!(normalize("/relative").unwrap_err(), UrlError::Invalid);
        assert_eq!(normalize("http://").unwrap_err(), UrlError::Invalid);
        assert_eq!(normalize("http://[::1").unwrap_err(), UrlError::Invalid);
        assert_eq!(
            normalize("ftp://example.com/").unwrap_err(),
            UrlError::UnsupportedScheme
        );
        assert_eq!(
            normalize("mailto:a@b.c").unwrap_err(),
            UrlError::UnsupportedScheme
        );
        assert_eq!(
            normalize("file:///etc/passwd").unwrap_err(),
            UrlError::UnsupportedScheme
        );
    }

    #[test]
    fn resolves_relative_links() {
        let base = normalize("http://example.com/dir/page.html").unwrap();
        let r = |h: &str| resolve(&base, h).map(|u| u.to_string());
        assert_eq!(
            r("other.html").as_deref(),
            Some("http://example.com/dir/other.html")
        );
        assert_eq!(
            r("../up.html").as_deref(),
            Some("http://example.com/up.html")
        );
        assert_eq!(
            r("/root.html").as_deref(),
            Some("http://example.com/root.html")
        );
        assert_eq!(
            r("//cdn.example.org/x").as_deref(),
            Some("http://cdn.example.org/x")
        );
        assert_eq!(
            r("#top").as_deref(),
            Some("http://example.com/dir/page.html")
        );
        assert_eq!(
            r("?q=1#f").as_deref(),
            Some("http://example.com/dir/page.html?q=1")
        );
        assert_eq!(
            r("https://other.example/").as_deref(),
            Some("https://other.example/")
        );
        assert_eq!(r("mailto:someone@example.com"), None);
        assert_eq!(r("javascript:void(0)"), None);
        assert_eq!(r("http://[::1"), None);
    }

    #[test]
    fn same_host_ignores_scheme_and_port() {
        let a = normalize("http://example.com/").unwrap();
        let b = normalize("https://example.com:8443/x").unwrap();
        assert_eq!(host_of(&a), host_of(&b));
    }
}
