//! Calls to installations: one HTTP client that refuses what an attacker-controlled registration
//! could point it at. URLs must be https (unless the operator allows http), and a target that is or
//! resolves to a loopback, private, link-local (cloud metadata included), CGNAT, multicast or
//! unspecified address is refused at connect time, after DNS, so a name that later re-resolves to
//! an internal address is caught too (unless the operator allows private targets). No redirects,
//! no proxies from the environment. Every answer is read with a byte cap *while it streams*
//! ([`read_capped`]): a 1 GiB answer is abandoned at the cap, never buffered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{field}: not a valid URL")]
    Invalid { field: String },
    #[error("{field}: must be https (plain http is allowed only with outbound_allow_http)")]
    NotHttps { field: String },
    #[error(
        "{field}: {ip} is a loopback, private, link-local or otherwise internal address (allowed only with outbound_allow_private)"
    )]
    Internal { field: String, ip: IpAddr },
    #[error(
        "{field}: {ip} is an IPv6 address carrying an IPv4 one (IPv4-mapped, IPv4-translated, IPv4-compatible or NAT64); give the IPv4 address or a name instead"
    )]
    Embedded { field: String, ip: IpAddr },
}

/// Why an answer's body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("answer timed out")]
    Timeout,
    #[error("answer unreadable")]
    Broken,
}

/// The body of `response`, at most `cap` bytes, read chunk by chunk: a declared length over the cap
/// is refused before reading, and an undeclared one is abandoned as soon as it passes the cap.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<axum::body::Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge(cap));
    }
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(ReadError::TooLarge(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.into()),
            Err(e) if e.is_timeout() => return Err(ReadError::Timeout),
            Err(_) => return Err(ReadError::Broken),
        }
    }
}

/// [`read_capped`] for any HTTP body (octocrab's answers).
pub async fn read_body_capped<B>(body: B, cap: usize) -> Result<axum::body::Bytes, ReadError>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    if body.size_hint().lower() > cap as u64 {
        return Err(ReadError::TooLarge(cap));
    }
    match http_body_util::Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ReadError::TooLarge(cap))
        }
        Err(_) => Err(ReadError::Broken),
    }
}

/// Which outbound targets the operator allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_http: bool,
    pub allow_private: bool,
}

impl Policy {
    /// Checks a URL's scheme and, for an IP literal, its address (names are checked after DNS).
    pub fn check(&self, field: &str, url: &str) -> Result<url::Url, UrlError> {
        let parsed = url::Url::parse(url).map_err(|_| UrlError::Invalid {
            field: field.into(),
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => {
                return Err(UrlError::NotHttps {
                    field: field.into(),
                });
            }
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => {
                return Err(UrlError::Invalid {
                    field: field.into(),
                });
            }
        };
        if let Some(ip) = ip.filter(|_| !self.allow_private) {
            if is_internal(ip) {
                return Err(UrlError::Internal {
                    field: field.into(),
                    ip,
                });
            }
            if let IpAddr::V6(v6) = ip
                && embeds_ipv4(v6)
            {
                return Err(UrlError::Embedded {
                    field: field.into(),
                    ip,
                });
            }
        }
        Ok(parsed)
    }
}

/// True for IPv6 literals that carry an IPv4 address for a translator to reach: IPv4-mapped
/// (`::ffff:0:0/96`, written `::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:0:0/96`, RFC 2765),
/// IPv4-compatible (`::/96`), NAT64 well-known (`64:ff9b::/96`) and local-use (`64:ff9b:1::/48`,
/// RFC 8215) prefixes. A registration has no reason to write an address this way; refusing the form
/// outright leaves no embedding for [`is_internal`] to miss. (Names that resolve to NAT64 addresses
/// under DNS64 are judged by their embedded address at connect time instead.)
pub fn embeds_ipv4(v6: Ipv6Addr) -> bool {
    let seg = v6.segments();
    seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) // mapped, compatible
        || seg[..6] == [0, 0, 0, 0, 0xffff, 0] // translated
        || seg[..2] == [0x64, 0xff9b] && (seg[2..6] == [0; 4] || seg[2] == 1) // NAT64
}

/// True for addresses an outbound call must not reach by default.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let seg = v6.segments();
            let first = seg[0];
            let embedded = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            // NAT64 (64:ff9b::/96) and IPv4-compatible (::/96) addresses carry an IPv4 address in
            // their last 32 bits, 6to4 (2002::/16) in bits 16..48: judge that address.
            // So do IPv4-translated addresses (::ffff:0:0:0/96).
            if (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || seg[..6] == [0; 6]
                || seg[..6] == [0, 0, 0, 0, 0xffff, 0])
                && is_internal_v4(embedded(seg[6], seg[7]))
            {
                return true;
            }
            // The local-use NAT64 prefix (64:ff9b:1::/48, RFC 8215) translates inside a network.
            if seg[..3] == [0x64, 0xff9b, 1] {
                return true;
            }
            if first == 0x2002 && is_internal_v4(embedded(seg[1], seg[2])) {
                return true;
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS IMDS over IPv6
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata lives here
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || a >= 240 // reserved 240/4
}

/// A name that resolves only to addresses the policy refuses: the resolver's error, found again in
/// a failed request's source chain by [`refusal`] so the call ends at once instead of being retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves only to internal addresses (allowed only with outbound_allow_private)")]
pub struct InternalOnly {
    pub host: String,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The outbound policy refused the target (after DNS): retrying cannot help.
    Refused(String),
    /// Something a later try may cure, named briefly (safe to store: never a body or a URL).
    Transient(&'static str),
}

/// What a failed `send` means: a timeout, a policy refusal, a connection that failed, or other.
pub fn send_error(e: &reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::Transient("timed out")
    } else if let Some(refused) = refusal(e) {
        SendError::Refused(refused.to_string())
    } else if e.is_connect() {
        SendError::Transient("cannot connect")
    } else {
        SendError::Transient("request failed")
    }
}

/// `Retry-After` as seconds or an HTTP-date, capped at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// The policy refusal behind a failed request, if that is why it failed.
pub fn refusal<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e InternalOnly> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<InternalOnly>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// Resolves names with the system resolver, then drops internal addresses.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(InternalOnly { host }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The client for installation calls, with the policy it enforces.
#[derive(Clone)]
pub struct Outbound {
    pub client: reqwest::Client,
    pub policy: Policy,
}

impl Outbound {
    pub fn new(policy: Policy, timeout: Duration) -> anyhow::Result<Outbound> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(64)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: policy.allow_private,
            }))
            .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Outbound { client, policy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "64:ff9b::7f00:1",
            "::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "240.0.0.1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::101:101",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn policy_names_the_field_and_the_reason() {
        let strict = Policy::default();
        assert_eq!(
            strict.check("revoke_url", "http://example.com/r"),
            Err(UrlError::NotHttps {
                field: "revoke_url".into()
            })
        );
        let err = strict
            .check("verify_url", "https://169.254.169.254/latest")
            .unwrap_err();
        assert!(err.to_string().contains("verify_url"), "{err}");
        assert!(strict.check("notify_url", "https://example.com/n").is_ok());
        // Every IPv6 form carrying an IPv4 address is refused as a literal, internal or not.
        for literal in [
            "https://[::ffff:0:127.0.0.1]/r",
            "https://[64:ff9b:1::a00:1]/r",
            "https://[::ffff:1.1.1.1]/r",
            "https://[::ffff:0:1.1.1.1]/r",
            "https://[64:ff9b::101:101]/r",
            "https://[64:ff9b:1:abcd::1]/r",
            "https://[::1.1.1.1]/r",
        ] {
            let err = strict.check("revoke_url", literal).unwrap_err();
            assert!(
                matches!(err, UrlError::Internal { .. } | UrlError::Embedded { .. }),
                "{literal}: {err}"
            );
            assert!(err.to_string().starts_with("revoke_url: "), "{err}");
        }
        assert!(
            strict
                .check("revoke_url", "https://[2606:4700::1111]/r")
                .is_ok()
        );
        let open = Policy {
            allow_http: true,
            allow_private: true,
        };
        assert!(open.check("revoke_url", "http://127.0.0.1:9/r").is_ok());
        assert!(open.check("revoke_url", "ftp://x/").is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let outbound = Outbound::new(
            Policy {
                allow_http: true,
                allow_private: false,
            },
            Duration::from_secs(2),
        )
        .unwrap();
        let err = outbound
            .client
            .get("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        let refused = refusal(&err).expect("the refusal is in the error's source chain");
        assert_eq!(refused.host, "localhost");
    }
}
