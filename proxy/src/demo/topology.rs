//! The demo's network, made when it starts and removed when it ends: a client namespace
//! (a "pod", with no proxy setting anywhere) and a provider namespace holding the mock
//! provider, each joined to the host by a veth pair.
//!
//! ```text
//!   client netns                    host (sluice run)                provider netns
//!   eth0 198.18.n.2 ──── veth ──── 198.18.n.1 (pod-facing listener)
//!   /etc/hosts: api.openai.com → 198.19.n.2        198.19.n.1 ──── veth ──── eth0 198.19.n.2
//!                                                                   mock provider :443
//! ```
//!
//! The addresses come from the benchmarking range (198.18.0.0/15), so nothing the demo
//! sends can reach a real host. `ip netns exec` bind-mounts `/etc/netns/<client>/hosts`
//! over `/etc/hosts` for the client, so curl resolves the provider names as any program
//! on a node resolves them — to the "provider's" address, which the eBPF connect hook
//! then redirects into Sluice.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Both namespaces and their links; removed on drop.
pub struct Topology {
    client: String,
    provider: String,
    /// The host's end of the client link: where the proxy listens for pods.
    pub client_gw: Ipv4Addr,
    /// The mock provider's address, in the provider namespace.
    pub provider_addr: Ipv4Addr,
    etc: PathBuf,
}

impl Topology {
    /// Makes the namespaces and links on the first free `198.18.n.0/30` and
    /// `198.19.n.0/30` (n from 200).
    ///
    /// # Errors
    /// `ip` is missing or fails (the message says which command), or no subnet is free.
    pub fn create() -> anyhow::Result<Topology> {
        let n = free_subnet()?;
        let id = std::process::id() % 1_000_000;
        let mut topo = Topology {
            client: format!("sdc{id}"),
            provider: format!("sdp{id}"),
            client_gw: Ipv4Addr::new(198, 18, n, 1),
            provider_addr: Ipv4Addr::new(198, 19, n, 2),
            etc: PathBuf::new(),
        };
        topo.etc = Path::new("/etc/netns").join(&topo.client);
        // From here on, drop removes whatever was made.
        for (ns, host, inside) in [
            (
                topo.client.clone(),
                topo.client_gw,
                Ipv4Addr::new(198, 18, n, 2),
            ),
            (
                topo.provider.clone(),
                Ipv4Addr::new(198, 19, n, 1),
                topo.provider_addr,
            ),
        ] {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["addr", "add", &format!("{host}/30"), "dev", &ns])?;
            ip(&["link", "set", &ns, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &host.to_string(),
            ])?;
        }
        Ok(topo)
    }

    /// The client namespace's name (for `ip netns exec`).
    pub fn client_name(&self) -> &str {
        &self.client
    }

    /// Makes `names` resolve to the provider's address inside the client namespace, and
    /// DNS fail at once there (nothing listens on 127.0.0.1:53 in it).
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn client_hosts(&self, names: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.etc)
            .with_context(|| format!("cannot create {}", self.etc.display()))?;
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for name in names {
            hosts.push_str(&format!("{} {name}\n", self.provider_addr));
        }
        std::fs::write(self.etc.join("hosts"), hosts)?;
        std::fs::write(self.etc.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        Ok(())
    }

    /// A listening socket bound to `port` on the provider's address, inside the provider
    /// namespace (a socket keeps its namespace, so the mock serves it from here).
    ///
    /// # Errors
    /// The namespace cannot be entered or the address bound.
    pub fn bind_provider(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        let addr = SocketAddr::from((self.provider_addr, port));
        let ns = std::fs::File::open(Path::new("/run/netns").join(&self.provider))
            .with_context(|| format!("cannot open the namespace {}", self.provider))?;
        // Only this short-lived thread enters the namespace.
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<std::net::TcpListener> {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("cannot enter the provider namespace")?;
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on {addr}"))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })
    }

    /// `program ARGS` as a process of the client namespace that first joins `cgroup`
    /// (where the eBPF redirect is attached; joined before `ip netns exec`, which mounts
    /// its own `/sys`), with no proxy variables.
    pub fn client_command(&self, cgroup: &Path, program: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                cgroup.display()
            ))
            .args(["sh", "ip", "netns", "exec", &self.client, program]);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().to_ascii_lowercase().contains("proxy") {
                cmd.env_remove(var);
            }
        }
        cmd
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.provider] {
            // Deleting one end of a veth deletes both.
            let _ = ip(&["link", "delete", ns]);
            let _ = ip(&["netns", "delete", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The first n ≥ 200 whose demo subnets no address on this host uses.
fn free_subnet() -> anyhow::Result<u8> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    let used = String::from_utf8_lossy(&out.stdout);
    (200..=254)
        .find(|n| {
            !used.contains(&format!(" 198.18.{n}.")) && !used.contains(&format!(" 198.19.{n}."))
        })
        .context("no free 198.18.n.0/30 subnet for the demo (n 200-254 are all in use)")
}
