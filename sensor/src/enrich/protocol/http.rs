//! An HTTP/1.x request head, parsed by `httparse`: method, Host and User-Agent only.

use serde::{Deserialize, Serialize};

use super::clean;

/// The longest Host printed (a DNS name is at most 253 bytes; a port may follow).
pub const MAX_HOST: usize = 262;
/// The longest User-Agent printed.
pub const MAX_USER_AGENT: usize = 512;
/// Headers looked at; a head with more is judged on what it has.
const MAX_HEADERS: usize = 64;

/// Request methods (RFC 9110 and WebDAV's common ones) a request line may start with.
pub const METHODS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "PROPFIND",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFacts {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl HttpFacts {
    pub fn heap_bytes(&self) -> usize {
        self.method.len()
            + self.host.as_ref().map_or(0, String::len)
            + self.user_agent.as_ref().map_or(0, String::len)
    }
}

/// A known method followed by a space.
pub fn looks_like(b: &[u8]) -> bool {
    METHODS
        .iter()
        .any(|m| b.starts_with(m.as_bytes()) && b.get(m.len()) == Some(&b' '))
}

/// The request's facts, and whether the head did not end within the bytes.
pub fn parse(b: &[u8]) -> (Option<HttpFacts>, bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let complete = match req.parse(b) {
        Ok(httparse::Status::Complete(_)) => true,
        Ok(httparse::Status::Partial) => false,
        // More headers than looked at: judged on the request line alone.
        Err(httparse::Error::TooManyHeaders) => {
            return (request_line_only(b), false);
        }
        // Not HTTP after all (or hostile): the method alone.
        Err(_) => return (request_line_only(b), false),
    };
    let Some(method) = req.method else {
        return (request_line_only(b), !complete);
    };
    // A partial parse leaves the headers it read: the last may be cut, so only complete
    // heads give Host and User-Agent.
    let header = |name: &str, max: usize| {
        complete
            .then(|| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
            })
            .flatten()
            .map(|h| clean(h.value, max))
    };
    let facts = HttpFacts {
        method: clean(method.as_bytes(), 16),
        host: header("host", MAX_HOST),
        user_agent: header("user-agent", MAX_USER_AGENT),
    };
    (Some(facts), !complete)
}

/// The method alone, when the head does not parse (`looks_like` found one).
fn request_line_only(b: &[u8]) -> Option<HttpFacts> {
    let method = METHODS
        .iter()
        .find(|m| b.starts_with(m.as_bytes()) && b.get(m.len()) == Some(&b' '))?;
    Some(HttpFacts {
        method: (*method).to_string(),
        host: None,
        user_agent: None,
    })
}
