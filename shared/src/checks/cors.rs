//! A bucket's CORS rules evaluated the way the store evaluates them, so that
//! a connection check can tell whether pages of the platform's origin may
//! load the bucket's objects through direct (signed) URLs. Proxied URLs do
//! not need them: `tether-api` answers CORS itself (contract §8).
//!
//! Both stores apply the first rule that matches the request's origin and
//! method. They differ in origin patterns: an S3 `AllowedOrigin` may hold one
//! `*` anywhere (`https://*.example.com`, or `*` alone for every origin),
//! while a GCS `origin` is either exact or `*` alone; GCS also allows `*` as
//! a method. Origins are compared as given: browsers send them in lower case.

/// Whose rules these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    S3,
    Gcs,
}

/// One CORS rule: who may send which methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
}

/// The position of the rule the store applies to a `method` request from
/// `origin`, if any rule lets it through.
pub fn first_allowing(rules: &[Rule], dialect: Dialect, origin: &str, method: &str) -> Option<usize> {
    rules.iter().position(|rule| {
        rule.origins.iter().any(|pattern| origin_matches(dialect, pattern, origin))
            && rule.methods.iter().any(|m| method_matches(dialect, m, method))
    })
}

fn origin_matches(dialect: Dialect, pattern: &str, origin: &str) -> bool {
    match dialect {
        Dialect::S3 => match pattern.split_once('*') {
            None => pattern == origin,
            // The wildcard stands for any run of characters, empty included,
            // between what comes before and after it.
            Some((head, tail)) => {
                origin.len() >= head.len() + tail.len() && origin.starts_with(head) && origin.ends_with(tail)
            }
        },
        Dialect::Gcs => pattern == "*" || pattern == origin,
    }
}

fn method_matches(dialect: Dialect, allowed: &str, method: &str) -> bool {
    match dialect {
        Dialect::S3 => allowed == method,
        Dialect::Gcs => allowed == "*" || allowed.eq_ignore_ascii_case(method),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str]) -> Rule {
        Rule {
            origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            methods: methods.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn s3_takes_one_wildcard_anywhere_in_an_origin() {
        let app = "https://app.example.com";
        let allows = |pattern: &str| first_allowing(&[rule(&[pattern], &["GET"])], Dialect::S3, app, "GET");
        for pattern in [
            "*",
            "https://*.example.com",
            "https://app.example.*",
            "*.example.com",
            "https://app.example.com",
            "https://*",
        ] {
            assert_eq!(allows(pattern), Some(0), "{pattern}");
        }
        for pattern in [
            "http://*.example.com",
            "https://*.example.org",
            "https://app.example.com:443",
            "https://APP.example.com",
            "https://*.app.example.com",
        ] {
            assert_eq!(allows(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn gcs_takes_exact_origins_or_any() {
        let rules = |origin: &str| [rule(&[origin], &["get"])];
        let app = "https://app.example.com";
        assert_eq!(first_allowing(&rules("*"), Dialect::Gcs, app, "GET"), Some(0));
        assert_eq!(first_allowing(&rules(app), Dialect::Gcs, app, "GET"), Some(0));
        assert_eq!(first_allowing(&rules("https://*.example.com"), Dialect::Gcs, app, "GET"), None);
        assert_eq!(first_allowing(&[rule(&[app], &["*"])], Dialect::Gcs, app, "GET"), Some(0));
    }

    #[test]
    fn the_method_must_be_allowed_and_the_first_matching_rule_wins() {
        let app = "https://app.example.com";
        let rules = [
            rule(&["https://other.example.com"], &["GET"]),
            rule(&[app], &["PUT", "POST"]),
            rule(&["https://*.example.com"], &["GET", "HEAD"]),
            rule(&["*"], &["GET"]),
        ];
        assert_eq!(first_allowing(&rules, Dialect::S3, app, "GET"), Some(2));
        assert_eq!(first_allowing(&rules, Dialect::S3, app, "PUT"), Some(1));
        assert_eq!(first_allowing(&rules, Dialect::S3, app, "DELETE"), None);
        // S3 methods are upper case, as S3 stores them.
        assert_eq!(first_allowing(&[rule(&[app], &["get"])], Dialect::S3, app, "GET"), None);
        assert_eq!(first_allowing(&[], Dialect::S3, app, "GET"), None);
    }
}
