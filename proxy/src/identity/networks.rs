//! Who a client address is, from the `networks:` table: CIDR → name, team, environment,
//! owner. The caller of an appliance is a host on a subnet, known only by its address;
//! this is how records name it and policies select it.
//!
//! The longest configured prefix holding the address wins, so a `/16` for a VPC and a
//! `/24` for one of its subnets can both be listed. IPv4-mapped IPv6 peers (a dual-stack
//! listener's view of an IPv4 client) are matched as the IPv4 address they are.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::record::NetworkRef;

/// One entry of `networks:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `address/length`, IPv4 or IPv6, e.g. `10.20.0.0/16`.
    pub cidr: String,
    /// A name for reports and policy scopes. Default: the CIDR.
    #[serde(default)]
    pub name: Option<String>,
    /// Owning team.
    #[serde(default)]
    pub team: Option<String>,
    /// Environment (prod, staging, …).
    #[serde(default)]
    pub environment: Option<String>,
    /// Owner to contact.
    #[serde(default)]
    pub owner: Option<String>,
}

impl NetworkConfig {
    /// The parsed CIDR (host bits must be zero: `10.0.0.5/8` is refused as a likely typo).
    ///
    /// # Errors
    /// What is wrong with `cidr`, to show the user.
    pub fn net(&self) -> Result<IpNet, String> {
        let net: IpNet = self.cidr.parse().map_err(|_| {
            format!(
                "{:?} is not address/length, e.g. \"10.20.0.0/16\" or \"fd00:1::/64\"",
                self.cidr
            )
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{:?} has host bits set; did you mean {}?",
                self.cidr,
                net.trunc()
            ));
        }
        Ok(net)
    }
}

/// The table, longest prefix first.
#[derive(Debug, Default)]
pub struct Networks {
    entries: Vec<(IpNet, NetworkRef)>,
}

impl Networks {
    /// Compile `networks:` (entries whose CIDR does not parse are skipped; config
    /// validation has refused them already).
    pub fn new(config: &[NetworkConfig]) -> Networks {
        let mut entries: Vec<(IpNet, NetworkRef)> = config
            .iter()
            .filter_map(|n| {
                let net = n.net().ok()?;
                Some((
                    net,
                    NetworkRef {
                        name: n.name.clone().unwrap_or_else(|| net.to_string()),
                        cidr: net.to_string(),
                        team: n.team.clone(),
                        environment: n.environment.clone(),
                        owner: n.owner.clone(),
                    },
                ))
            })
            .collect();
        entries.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Networks { entries }
    }

    /// The network holding `addr`, if one is configured.
    pub fn lookup(&self, addr: IpAddr) -> Option<&NetworkRef> {
        let addr = addr.to_canonical();
        self.entries
            .iter()
            .find(|(net, _)| net.contains(&addr))
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cidr: &str, name: Option<&str>, team: &str) -> NetworkConfig {
        NetworkConfig {
            cidr: cidr.into(),
            name: name.map(str::to_string),
            team: Some(team.into()),
            environment: None,
            owner: None,
        }
    }

    #[test]
    fn the_longest_prefix_wins_in_either_family() {
        let t = Networks::new(&[
            entry("10.20.0.0/16", Some("vpc"), "platform"),
            entry("10.20.5.0/24", None, "payments"),
            entry("fd00:1::/64", Some("v6"), "data"),
        ]);
        let at = |a: &str| t.lookup(a.parse().unwrap()).map(|r| r.name.clone());
        assert_eq!(at("10.20.5.9").as_deref(), Some("10.20.5.0/24"));
        assert_eq!(at("10.20.6.9").as_deref(), Some("vpc"));
        assert_eq!(at("::ffff:10.20.5.9").as_deref(), Some("10.20.5.0/24"));
        assert_eq!(at("fd00:1::7").as_deref(), Some("v6"));
        assert_eq!(at("192.0.2.1"), None);
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        assert!(entry("10.0.0.5/8", None, "x")
            .net()
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
        assert!(entry("10.0.0.0", None, "x")
            .net()
            .unwrap_err()
            .contains("not address/length"));
    }
}
