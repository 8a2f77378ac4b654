//! Networks in CIDR notation, and `ip_restriction`: allow and deny lists on the client
//! address (which behind trusted proxies the engine takes from `X-Forwarded-For`).

use std::net::IpAddr;

use crate::context::Context;
use crate::error::ConfigErrors;
use crate::headers::HeaderList;
use crate::identity_spec::IpRestrictionSpec;
use crate::seam::{Policy, Reply, RequestInfo, Verdict};

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("'{s}' is not an address or a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Refuses (403) clients in `deny`, or outside `allow` when it is set.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<Network>,
    deny: Vec<Network>,
    refusal: Reply,
}

impl IpRestriction {
    pub fn compile(spec: &IpRestrictionSpec, path: &str, errors: &mut ConfigErrors) -> Option<IpRestriction> {
        let before = errors.0.len();
        let mut list = |items: &[String], name: &str| -> Vec<Network> {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Network::parse(s).map_err(|e| errors.push(format!("{path}.{name}[{i}]"), e)).ok())
                .collect()
        };
        let allow = list(&spec.allow, "allow");
        let deny = list(&spec.deny, "deny");
        if spec.allow.is_empty() && spec.deny.is_empty() {
            errors.push(path.to_string(), "give allow, deny or both");
        }
        (errors.0.len() == before).then(|| IpRestriction {
            allow,
            deny,
            refusal: Reply::json_error(403, "forbidden", "the client address is not allowed on this route"),
        })
    }

    /// Whether `ip` may pass.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
    }
}

impl Policy for IpRestriction {
    fn name(&self) -> &'static str {
        "ip_restriction"
    }

    /// Before the identity band: a refused address learns nothing of its credentials, and costs
    /// no password check or token call.
    fn priority(&self) -> u32 {
        3100
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, _: &mut HeaderList<'a>, _: &mut Context) -> Verdict {
        if self.admits(req.client_ip) {
            Verdict::Continue
        } else {
            Verdict::Respond(self.refusal.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.3.4".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(!Network::parse("2001:db8::/32").unwrap().contains("2001:db9::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }

    #[test]
    fn deny_wins_and_allow_narrows() {
        let spec = IpRestrictionSpec { allow: vec!["10.0.0.0/8".into()], deny: vec!["10.9.0.0/16".into()] };
        let p = IpRestriction::compile(&spec, "r", &mut ConfigErrors::default()).unwrap();
        assert!(p.admits("10.1.2.3".parse().unwrap()));
        assert!(!p.admits("10.9.2.3".parse().unwrap()), "denied inside the allowed network");
        assert!(!p.admits("192.168.1.1".parse().unwrap()), "outside allow");
        let mut errors = ConfigErrors::default();
        let bad = IpRestrictionSpec { allow: vec!["10.0.0.0/99".into()], deny: vec![] };
        assert!(IpRestriction::compile(&bad, "routes.r.policies.ip_restriction", &mut errors).is_none());
        assert_eq!(errors.0[0].path, "routes.r.policies.ip_restriction.allow[0]");
        let mut errors = ConfigErrors::default();
        assert!(IpRestriction::compile(&IpRestrictionSpec::default(), "p", &mut errors).is_none());
    }
}
