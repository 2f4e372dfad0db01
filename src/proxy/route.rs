//! Which upstream a request path belongs to.

/// Path-prefix routes, longest prefix first. Prefixes match whole segments only:
/// `/crm` matches `/crm` and `/crm/x`, never `/crmx`.
pub struct RouteTable {
    routes: Vec<(String, usize)>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<(String, usize)>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        RouteTable { routes }
    }

    /// The upstream index and the rest of the path after the prefix.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.routes.iter().find_map(|(prefix, idx)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((*idx, rest))
        })
    }
}

/// Whether a path holds a `.` or `..` segment, literally or percent-encoded, between
/// literal or encoded (`%2f`) slashes, with or without `;parameters`, or a backslash (which some servers treat as a
/// separator), also encoded. Such a path could climb out of
/// the upstream's base path, and with it its credential. Allocation-free: it runs on every
/// request.
pub fn has_dot_segment(path: &str) -> bool {
    // Most paths hold none of the bytes that either needs: one pass settles them.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    path.contains('\\')
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%5c"))
        || path.split('/').any(|segment| {
            // `%2f` is a separator too for upstreams that decode it before they resolve dot
            // segments (nginx does): `/a/..%2fb` climbs like `/a/../b`.
            let mut rest = segment;
            while let Some(at) = rest
                .as_bytes()
                .windows(3)
                .position(|w| w.eq_ignore_ascii_case(b"%2f"))
            {
                if is_dot_segment(&rest[..at]) {
                    return true;
                }
                rest = &rest[at + 3..];
            }
            is_dot_segment(rest)
        })
}

/// `.` or `..`, each dot possibly written `%2e`, before any `;parameters` (`;` possibly
/// written `%3b`): servlet containers drop a segment's parameters before they resolve dot
/// segments, so for them `..;x` is `..`.
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.as_bytes();
    let name_end = name
        .iter()
        .enumerate()
        .position(|(i, &b)| {
            b == b';'
                || (b == b'%'
                    && name
                        .get(i..i + 3)
                        .is_some_and(|w| w.eq_ignore_ascii_case(b"%3b")))
        })
        .unwrap_or(name.len());
    let mut rest = &name[..name_end];
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let t = RouteTable::new(vec![
            ("/a".into(), 0),
            ("/a/b".into(), 1),
            ("/crm".into(), 2),
        ]);
        assert_eq!(t.lookup("/a/b/c"), Some((1, "/c")));
        assert_eq!(t.lookup("/a/bc"), Some((0, "/bc")));
        assert_eq!(t.lookup("/crm"), Some((2, "")));
        assert_eq!(t.lookup("/crmx"), None);
        assert_eq!(t.lookup("/"), None);
    }

    #[test]
    fn dot_segments_in_every_spelling() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/%2e",
            "/a\\b",
            "/a%5cb",
            "/a%5C..",
            "//..//",
            "/a/..%2fb",
            "/crm/..%2F..%2Fadmin",
            "/a%2F.%2Fb",
            "/a/%2e%2e%2Fb",
            "/a/b%2f..",
            "/a/..;/b",
            "/a/..;jsessionid=1/b",
            "/a/.;x",
            "/a/%2e%2e;/b",
            "/a/..%3b/b",
            "/a/..%3Bx/b",
            "/a%2f..;x%2fb",
            "/..;",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/",
            "/a/b",
            "/a/.../b",
            "/a/..b",
            "/a/b..",
            "/.well-known/x",
            "/a/%2e%2e%2e",
            "/a/%2",
            "/a/%2f",
            "/a.b/c.d",
            "/projects/group%2Fproject",
            "/a%2f.b/c",
            "/a/..b%2fc",
            "/items;v=2",
            "/a/;../b",
            "/a/...;x",
            "/a/b;..",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
