//! Bearer-token authentication of `POST /execute`.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The shared secret clients must present. Its `Debug` never shows the value, so a
/// logged config cannot leak it.
#[derive(Clone)]
pub struct AuthToken(Box<[u8]>);

impl AuthToken {
    /// Whether the configured token is empty, which the service refuses to start with.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `Authorization` header: 401 when it is missing or not `Bearer <token>`,
    /// 403 when the token is wrong.
    pub fn check(&self, header: Option<&HeaderValue>) -> Result<(), ApiError> {
        let presented = parse_bearer(header).ok_or(ApiError::MissingAuth)?;
        // The comparison takes the same time wherever the first differing byte is, so
        // timing does not reveal a prefix of the token; only the length can show.
        if bool::from(presented.ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(ApiError::InvalidToken)
        }
    }
}

impl FromStr for AuthToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(AuthToken(s.as_bytes().into()))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// The token of an `Authorization: Bearer <token>` header, if it has that form.
///
/// As RFC 9110 §11.4 allows, the scheme is matched case-insensitively and may be
/// followed by several spaces; the token is one non-empty run of visible characters.
fn parse_bearer(header: Option<&HeaderValue>) -> Option<&[u8]> {
    let value = header?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = &rest[spaces..];
    let visible = |b: &u8| b.is_ascii_graphic();
    (!token.is_empty() && token.iter().all(visible)).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(s).unwrap()
    }

    fn token() -> AuthToken {
        "s3cret-token".parse().unwrap()
    }

    #[test]
    fn bearer_forms_that_parse() {
        assert_eq!(
            parse_bearer(Some(&header(b"Bearer abc"))),
            Some(&b"abc"[..])
        );
        assert_eq!(
            parse_bearer(Some(&header(b"bearer abc"))),
            Some(&b"abc"[..])
        );
        assert_eq!(
            parse_bearer(Some(&header(b"BEARER a.b~c/="))),
            Some(&b"a.b~c/="[..])
        );
        assert_eq!(
            parse_bearer(Some(&header(b"Bearer  abc"))),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn malformed_headers_do_not_parse() {
        assert_eq!(parse_bearer(None), None);
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer \tabc",
            b"Bearer abc def",
            b"Bearer abc ",
            b"Basic YWJjOmRlZg==",
            b"Bearerabc",
            b"Token abc",
            b"abc",
            b"Bearer \xffabc",
        ] {
            assert_eq!(parse_bearer(Some(&header(bad))), None, "{bad:?}");
        }
    }

    #[test]
    fn check_maps_to_401_and_403() {
        let t = token();
        assert_eq!(t.check(Some(&header(b"Bearer s3cret-token"))), Ok(()));
        assert_eq!(t.check(None), Err(ApiError::MissingAuth));
        assert_eq!(
            t.check(Some(&header(b"Basic s3cret-token"))),
            Err(ApiError::MissingAuth)
        );
        assert_eq!(
            t.check(Some(&header(b"Bearer s3cret-tokeN"))),
            Err(ApiError::InvalidToken)
        );
        assert_eq!(
            t.check(Some(&header(b"Bearer s3cret"))),
            Err(ApiError::InvalidToken)
        );
        assert_eq!(
            t.check(Some(&header(b"Bearer s3cret-token-and-more"))),
            Err(ApiError::InvalidToken)
        );
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let shown = format!("{:?}", token());
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn empty_token_is_detected() {
        assert!("".parse::<AuthToken>().unwrap().is_empty());
        assert!(!token().is_empty());
    }
}
