//! Which web pages may connect: the browser's `Origin` on `$connect`.
//!
//! A browser lets a page on any site open a WebSocket to any server and says
//! in `Origin` which site the page came from; deciding is the server's job.
//! Clients that are not browsers (wscat, servers, the load tool) send no
//! `Origin` and are let in: the check keeps other sites' pages from using a
//! visitor's browser, it does not authenticate clients, which could forge the
//! header anyway.

/// The origins allowed to open a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    /// Pages served by the host the handshake went to (chat-local serves
    /// its own web app).
    same_host: bool,
    /// Whether a DNS name counts as the same host, or only IP literals and
    /// `localhost` do. A name can be pointed at any address by whoever owns
    /// it (DNS rebinding): a page on such a name would be "same host" to a
    /// server only reachable on this machine.
    same_host_by_name: bool,
    /// Normalized: lower case, no default port, no trailing slash.
    allowed: Vec<String>,
}

impl Default for OriginPolicy {
    /// Any origin: the handlers' default, so a policy is always a choice.
    fn default() -> Self {
        Self::any()
    }
}

impl OriginPolicy {
    pub fn any() -> Self {
        Self {
            any: true,
            same_host: false,
            same_host_by_name: false,
            allowed: Vec::new(),
        }
    }

    /// Exactly these origins (`https://chat.example.com`,
    /// `http://127.0.0.1:8081`); a `*` among them allows any.
    pub fn only<I, S>(origins: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut policy = Self {
            any: false,
            same_host: false,
            same_host_by_name: false,
            allowed: Vec::new(),
        };
        for origin in origins {
            let origin = origin.as_ref().trim();
            if origin == "*" {
                policy.any = true;
            } else if !origin.is_empty() {
                let normalized = normalize(origin).ok_or_else(|| {
                    format!(
                        "{origin:?} is not an origin: write scheme://host[:port], e.g. https://chat.example.com"
                    )
                })?;
                policy.allowed.push(normalized);
            }
        }
        Ok(policy)
    }

    /// Also pages served from the host the handshake was sent to, when that
    /// host is an IP address or `localhost`: safe for a server that only
    /// this machine can reach.
    pub fn or_same_host(mut self) -> Self {
        self.same_host = true;
        self
    }

    /// [`Self::or_same_host`], by any name: for a server others can reach
    /// anyway, where a rebound name gains a page nothing.
    pub fn or_same_host_by_any_name(mut self) -> Self {
        self.same_host = true;
        self.same_host_by_name = true;
        self
    }

    /// `ALLOWED_ORIGINS`, comma-separated; unset or empty allows any (the
    /// SAM template always sets it).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("ALLOWED_ORIGINS") {
            Ok(list) if !list.trim().is_empty() => {
                Self::only(list.split(',')).map_err(|error| format!("ALLOWED_ORIGINS: {error}"))
            }
            _ => Ok(Self::any()),
        }
    }

    /// Whether a handshake with this `Origin` (none from non-browser
    /// clients) sent to this `Host` may connect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        // "null" (sandboxed frames, file: pages) normalizes to nothing.
        let Some(origin) = normalize(origin) else {
            return false;
        };
        if self.allowed.contains(&origin) {
            return true;
        }
        self.same_host
            && host.is_some_and(|host| {
                let (scheme, authority) = origin.split_once("://").unwrap_or_default();
                authority == without_default_port(&host.to_ascii_lowercase(), scheme)
                    && (self.same_host_by_name || names_only_this_machine(authority))
            })
    }
}

/// An IP literal or `localhost` (which browsers resolve to loopback
/// themselves): names no one else can point elsewhere.
fn names_only_this_machine(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host == "localhost" || host.ends_with(".localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// `scheme://host[:port]` in lower case without the scheme's default port, or
/// `None` when `origin` is not an http(s) origin.
fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let valid_authority = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !matches!(scheme, "http" | "https") || !valid_authority {
        return None;
    }
    Some(format!(
        "{scheme}://{}",
        without_default_port(authority, scheme)
    ))
}

fn without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_without_an_origin_are_let_in() {
        let policy = OriginPolicy::only(["https://chat.example.com"]).unwrap();
        assert!(policy.allows(None, Some("api.example.com")));
    }

    #[test]
    fn only_listed_origins_connect() {
        let policy =
            OriginPolicy::only(["https://Chat.Example.com/", "http://127.0.0.1:8081"]).unwrap();
        assert!(policy.allows(Some("https://chat.example.com"), None));
        assert!(policy.allows(Some("https://chat.example.com:443"), None));
        assert!(policy.allows(Some("http://127.0.0.1:8081"), None));
        assert!(!policy.allows(Some("http://127.0.0.1:8082"), None));
        assert!(!policy.allows(Some("http://chat.example.com"), None));
        assert!(!policy.allows(Some("https://chat.example.com.evil.example"), None));
        assert!(!policy.allows(Some("null"), None));
        assert!(!policy.allows(Some(""), None));
    }

    #[test]
    fn same_host_lets_in_the_pages_the_server_serves() {
        let local = OriginPolicy::only::<_, &str>([]).unwrap().or_same_host();
        assert!(local.allows(Some("http://localhost:8080"), Some("localhost:8080")));
        assert!(local.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(local.allows(Some("http://[::1]:8080"), Some("[::1]:8080")));
        assert!(!local.allows(Some("http://evil.example"), Some("localhost:8080")));
        assert!(!local.allows(Some("http://localhost:8080"), None));
        // DNS rebinding: a name its owner pointed at 127.0.0.1 is not this
        // machine's own page.
        assert!(!local.allows(
            Some("http://rebind.example:8080"),
            Some("rebind.example:8080")
        ));

        let public = OriginPolicy::only::<_, &str>([])
            .unwrap()
            .or_same_host_by_any_name();
        assert!(public.allows(
            Some("https://chat.example.com"),
            Some("chat.example.com:443")
        ));
        assert!(!public.allows(Some("http://evil.example"), Some("chat.example.com")));
    }

    #[test]
    fn a_star_allows_any_and_bad_entries_are_refused() {
        assert!(
            OriginPolicy::only(["*"])
                .unwrap()
                .allows(Some("http://anything.example"), None)
        );
        assert!(OriginPolicy::only(["chat.example.com"]).is_err());
        assert!(OriginPolicy::only(["https://chat.example.com/path"]).is_err());
        assert!(OriginPolicy::only(["ftp://chat.example.com"]).is_err());
    }
}
