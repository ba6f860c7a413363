//! Sluice's own accept loops, for every listener: the data plane's (`listen`) and the
//! appliance's transparent one (TPROXY, [`crate::appliance`]).
//!
//! Why not Pingora's listening service: it spawns one task per connection whose type
//! holds Pingora's accept-side handshake future (sized for a TLS handshake) next to the
//! application's, for the connection's whole life — about 9 KB per idle keep-alive
//! connection that Sluice never uses (its listeners hand Pingora plain TCP; Sluice sniffs
//! and terminates TLS itself, see [`super::InterceptApp`]). Here a connection's task holds
//! the boxed application future and its shutdown watch, nothing else.
//!
//! What an accepted stream gets: no L4 read buffer (rustls keeps its own 4 KiB receive
//! buffer; Pingora's default 64 KiB, zero-filled at accept, was most of what an idle
//! connection cost); its write buffer is Sluice's (`coalesce`, freed between flushes).
//! Sockets: `SO_REUSEADDR`, a backlog of 65,535 (as Pingora's; the kernel caps it at
//! `net.core.somaxconn`). On shutdown the loops stop accepting; connections already
//! accepted go on under the shutdown watch (idle keep-alive ones close, see `keepalive`).
//!
//! TPROXY delivers routed connections only to a socket with `IP_TRANSPARENT`; its accepted
//! sockets keep the address the client dialled as their local address, so its
//! connections go to the same application marked transparent, for the loop guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::listener::Listener;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::InterceptApp;

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A data-plane address (`listen`).
    #[error("binding listen address {addr}: {source} (is the port in use?)")]
    Plain {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The appliance's transparent listener.
    #[error(
        "opening the transparent listener {addr}: {source} (needs CAP_NET_ADMIN; is the port in use?)"
    )]
    Transparent {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Listening sockets, bound and listening but not yet accepting (connections wait in the
/// backlog until [`Bound::serve`]'s loops start). `sluice run` binds the data plane's once
/// everything they serve is ready (the redirect's maps included): an open port reads as
/// "serving" to a health check.
pub struct Bound {
    listeners: Vec<std::net::TcpListener>,
}

/// Pending connections per socket, as Pingora's listeners ask (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 65_535;

impl Bound {
    /// The data plane's addresses (`listen`).
    ///
    /// # Errors
    /// [`ListenError::Plain`]: the address is taken or not this host's.
    pub fn plain(addrs: &[SocketAddr]) -> Result<Bound, ListenError> {
        let listeners = addrs
            .iter()
            .map(|&addr| socket(addr, false).map_err(|source| ListenError::Plain { addr, source }))
            .collect::<Result<_, _>>()?;
        Ok(Bound { listeners })
    }

    /// `127.0.0.1:port` and `[::1]:port` with `IP_TRANSPARENT`/`IPV6_TRANSPARENT` (TPROXY
    /// delivers only to transparent sockets) for the appliance's capture; serve them with
    /// [`InterceptApp::transparent`].
    ///
    /// # Errors
    /// [`ListenError::Transparent`]: no CAP_NET_ADMIN, or the port is taken.
    pub fn transparent(addrs: &[SocketAddr]) -> Result<Bound, ListenError> {
        let listeners = addrs
            .iter()
            .map(|&addr| {
                socket(addr, true).map_err(|source| ListenError::Transparent { addr, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Bound { listeners })
    }

    /// The accept loops of these sockets, handing connections to `app`: a background
    /// service.
    pub fn serve(self, app: Arc<InterceptApp>) -> Listeners {
        Listeners {
            listeners: self.listeners,
            app,
        }
    }
}

/// Bound sockets and the application their connections go to; runs as a background
/// service (one accept loop per socket).
pub struct Listeners {
    listeners: Vec<std::net::TcpListener>,
    app: Arc<InterceptApp>,
}

fn socket(addr: SocketAddr, transparent: bool) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{setsockopt, sockopt};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if transparent {
        if addr.is_ipv4() {
            setsockopt(&socket, sockopt::IpTransparent, &true)?;
        } else {
            socket.set_only_v6(true)?;
            setsockopt(&socket, Ipv6Transparent, &true)?;
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// `IPV6_TRANSPARENT`, which nix does not name.
#[derive(Clone, Copy)]
struct Ipv6Transparent;

impl nix::sys::socket::SetSockOpt for Ipv6Transparent {
    type Val = bool;

    fn set<F: std::os::fd::AsFd>(&self, fd: &F, val: &bool) -> nix::Result<()> {
        use std::os::fd::AsRawFd;
        let v: libc::c_int = (*val).into();
        // SAFETY: a valid fd, an int option with its exact size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_IPV6,
                libc::IPV6_TRANSPARENT,
                std::ptr::from_ref(&v).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        nix::errno::Errno::result(r).map(drop)
    }
}

#[async_trait]
impl BackgroundService for Listeners {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = Vec::new();
        for l in &self.listeners {
            let listener = match l.try_clone().and_then(tokio::net::TcpListener::from_std) {
                Ok(l) => Listener::from(l),
                Err(e) => {
                    tracing::error!(error = %e, "listener unusable");
                    continue;
                }
            };
            let (app, shutdown) = (self.app.clone(), shutdown.clone());
            tasks.push(tokio::spawn(accept_loop(listener, app, shutdown)));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn accept_loop(listener: Listener, app: Arc<InterceptApp>, mut shutdown: ShutdownWatch) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            changed = shutdown.changed() => {
                // The server stopping (or gone): accept nothing more.
                if changed.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        match stream {
            Ok(stream) => {
                let (app, shutdown) = (app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let mut next = app.process_new(Box::new(stream), &shutdown).await;
                    while let Some(s) = next {
                        next = app.process_new(s, &shutdown).await;
                    }
                });
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) keeps failing at once: pause instead
                // of spinning, as Pingora's loop does.
                tracing::warn!(error = %e, "accepting a connection failed");
                let pause = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    Duration::from_millis(500)
                } else {
                    Duration::from_millis(10)
                };
                tokio::time::sleep(pause).await;
            }
        }
    }
}
