//! The transparent listener of appliance mode ([`crate::appliance`]): TPROXY delivers
//! routed connections to a socket with `IP_TRANSPARENT` whose accepted sockets keep the
//! address the client dialled as their local address. Its connections go to the same
//! application as every other listener's, marked transparent for the loop guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::listener::Listener;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::InterceptApp;

/// The transparent listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "opening the transparent listener {addr}: {source} (needs CAP_NET_ADMIN; is the port in use?)"
)]
pub struct ListenError {
    /// Its address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The transparent listener: accepts captured connections (their local address is the
/// provider's) and hands them to the same application as every other listener.
pub struct TransparentListener {
    listeners: Vec<std::net::TcpListener>,
    app: Arc<InterceptApp>,
}

impl TransparentListener {
    /// Bind `127.0.0.1:port` and `[::1]:port` with `IP_TRANSPARENT`/`IPV6_TRANSPARENT`
    /// (TPROXY delivers only to transparent sockets).
    ///
    /// # Errors
    /// [`ListenError`]: no CAP_NET_ADMIN, or the port is taken.
    pub fn bind(
        addrs: &[SocketAddr],
        app: Arc<InterceptApp>,
    ) -> Result<TransparentListener, ListenError> {
        let listeners = addrs
            .iter()
            .map(|&addr| transparent_listener(addr).map_err(|source| ListenError { addr, source }))
            .collect::<Result<_, _>>()?;
        Ok(TransparentListener { listeners, app })
    }
}

fn transparent_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{setsockopt, sockopt};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::IpTransparent, &true)?;
    } else {
        socket.set_only_v6(true)?;
        setsockopt(&socket, Ipv6Transparent, &true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
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
impl BackgroundService for TransparentListener {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = Vec::new();
        for l in &self.listeners {
            let std = match l.try_clone().and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "transparent listener unusable");
                    continue;
                }
            };
            let listener = match tokio::net::TcpListener::from_std(std) {
                Ok(l) => Listener::from(l),
                Err(e) => {
                    tracing::error!(error = %e, "transparent listener unusable");
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
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
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
                tracing::warn!(error = %e, "accepting a captured connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
