//! The rules every key fetch follows: https (plain http only to loopback),
//! redirects only within one origin, bounded answers, and how long to keep
//! what was fetched (`Cache-Control: max-age`).

use std::net::IpAddr;
use std::time::Duration;

use crate::error::ConfigError;

use super::MAX_REDIRECTS;

/// Checks a configured or discovered URL: `https`, or `http` to a loopback
/// host.
pub(super) fn check_url(what: &str, url: &str) -> Result<(), ConfigError> {
    let allowed = reqwest::Url::parse(url).is_ok_and(|u| match (u.scheme(), u.host_str()) {
        ("https", Some(_)) => true,
        ("http", Some(host)) => is_loopback(host),
        _ => false,
    });
    if allowed {
        Ok(())
    } else {
        Err(ConfigError::new(
            "jwks",
            format!(
                "{what} `{url}` must be an https URL (plain http is allowed only to a loopback \
                 host: 127.0.0.0/8, [::1] or localhost)"
            ),
        ))
    }
}

/// A URL host (as `Url::host_str` spells it) that is the loopback interface.
pub(super) fn is_loopback(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Why a redirect was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RedirectRefused {
    OtherOrigin,
    TooMany,
}

impl RedirectRefused {
    fn reason(self) -> &'static str {
        match self {
            Self::OtherOrigin => {
                "refused a redirect to another scheme, host or port (keys are fetched from \
                 the configured origin only; configure the final URL)"
            }
            // Keep in step with MAX_REDIRECTS.
            Self::TooMany => "refused more than 3 redirects (configure the final URL)",
        }
    }
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for RedirectRefused {}

/// Follows redirects within one origin, at most [`MAX_REDIRECTS`] in a row.
pub(super) fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` starts with the first URL requested and ends with the
        // one that answered with this redirect.
        let hops = attempt.previous().len();
        let verdict = match attempt.previous().last() {
            Some(from) => check_redirect(from, attempt.url(), hops),
            None => Err(RedirectRefused::OtherOrigin),
        };
        match verdict {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// Whether to follow a redirect from `from` to `to`, the `hops`-th of this
/// fetch: only within one origin, so a redirect cannot move the fetch to
/// another host or down to plain http.
pub(super) fn check_redirect(
    from: &reqwest::Url,
    to: &reqwest::Url,
    hops: usize,
) -> Result<(), RedirectRefused> {
    if hops > MAX_REDIRECTS {
        Err(RedirectRefused::TooMany)
    } else if from.origin() != to.origin() {
        Err(RedirectRefused::OtherOrigin)
    } else {
        Ok(())
    }
}

/// Why a request failed, without the details of the transport error.
pub(super) fn send_failure(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        return "timed out";
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RedirectRefused>() {
            return refused.reason();
        }
        source = cause.source();
    }
    "request failed"
}

pub(super) fn parse_max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("Max-Age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-cache"), None);
        assert_eq!(parse_max_age("max-age=soon"), None);
    }

    #[test]
    fn https_or_loopback_http() {
        for ok in [
            "https://idp.example/jwks.json",
            "https://10.0.0.1:8443/keys",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.255.0.9/jwks.json",
            "http://[::1]:8080/jwks.json",
            "http://localhost/jwks.json",
            "http://LocalHost:1/jwks.json",
        ] {
            assert!(check_url("the JWKS URL", ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://idp.example/jwks.json",
            "http://128.0.0.1/jwks.json",
            "http://[::ffff:127.0.0.1]/jwks.json",
            "http://localhost.idp.example/jwks.json",
            "http://localhost./jwks.json",
            "ws://127.0.0.1/jwks.json",
            "file:///etc/jwks.json",
            "idp.example/jwks.json",
            "",
        ] {
            let err = check_url("the JWKS URL", refused).expect_err(refused);
            assert_eq!(err.setting(), "jwks");
            assert!(err.reason().contains("https"), "{err}");
        }
    }

    #[test]
    fn redirects_stay_in_one_origin() {
        let url = |s: &str| reqwest::Url::parse(s).expect(s);
        let from = url("https://idp.example/jwks");
        assert_eq!(
            check_redirect(&from, &url("https://idp.example:443/keys?v=2"), 1),
            Ok(())
        );
        assert_eq!(
            check_redirect(&from, &url("https://IDP.example/keys"), MAX_REDIRECTS),
            Ok(())
        );
        for other in [
            "http://idp.example/jwks",
            "https://idp.example:8443/jwks",
            "https://evil.example/jwks",
            "https://idp.example.evil.example/jwks",
            "https://127.0.0.1/jwks",
        ] {
            assert_eq!(
                check_redirect(&from, &url(other), 1),
                Err(RedirectRefused::OtherOrigin),
                "{other}"
            );
        }
        assert_eq!(
            check_redirect(&from, &url("https://idp.example/keys"), MAX_REDIRECTS + 1),
            Err(RedirectRefused::TooMany)
        );
    }
}
