//! `sluice doctor`: can this host run the eBPF redirect, and what to do when it cannot.

use std::process::ExitCode;

/// Prints each check with its fix; exit 1 (with the iptables fallback) when the redirect
/// cannot run here.
pub fn run() -> ExitCode {
    let checks = sluice_probe::doctor();
    let mut ok = true;
    for c in &checks {
        ok &= c.ok;
        println!(
            "[{}] {}: {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
        if let (false, Some(fix)) = (c.ok, &c.fix) {
            println!("       fix: {fix}");
        }
    }
    if !ok {
        println!("\nThe eBPF redirect cannot run here as is. {IPTABLES_FALLBACK}");
        return ExitCode::FAILURE;
    }
    println!("\nThis host can run the eBPF redirect (`redirect.enabled: true`).");
    ExitCode::SUCCESS
}

/// What `sluice doctor` offers when the host cannot run the eBPF redirect.
const IPTABLES_FALLBACK: &str = "Fallback without cgroup BPF: let iptables (or nftables) \
redirect provider traffic and have Sluice ask the kernel where each connection was going:

  # sluice.yaml
  listen: [\"0.0.0.0:15443\"]
  original_dst: {so_original_dst: true}   # getsockopt(SO_ORIGINAL_DST) on each connection

  # processes on this host; Sluice's own upstream sockets carry SO_MARK 0x534c (redirect.mark)
  iptables -t nat -A OUTPUT -p tcp -d <provider CIDR> --dport 443 \\
      -m mark ! --mark 0x534c -j REDIRECT --to-ports 15443
  # pods or routed clients whose traffic crosses this host
  iptables -t nat -A PREROUTING -p tcp -d <provider CIDR> --dport 443 -j REDIRECT --to-ports 15443
  (ip6tables likewise for IPv6; one rule per provider CIDR, kept current by you)

What you give up: provider addresses are not refreshed from DNS for you, records carry the
client address but not the connecting process (no connect-time attribution), and UDP/443
(HTTP/3) is not refused. `original_dst.static` and `local_addr` also work without the probe.";
