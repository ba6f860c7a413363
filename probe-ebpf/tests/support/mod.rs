//! Real-kernel test harness: child cgroups and network namespaces owned by
//! guards that remove them on drop, and helper processes (this test binary
//! re-executed) that join a cgroup and a netns before opening a socket.
//!
//! Helpers are separate processes because a socket belongs to the cgroup of
//! the process that creates it, and moving the test process itself would
//! move every concurrently running test with it.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when privileged tests can run. Without root they are skipped
/// locally, but fail under CI: CI must never skip silently.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "privileged test cannot run under CI without root"
    );
    eprintln!("skipped: needs root (CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN)");
    false
}

// === impl TestCgroup ===

/// A child cgroup of the unified root, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let root = sluice_probe::unified_cgroup_root().expect("cgroup v2 mounted");
        let path = root.join(unique("sluice-test"));
        std::fs::create_dir(&path).expect("create child cgroup");
        Self { path }
    }

    pub fn id(&self) -> u64 {
        sluice_probe::cgroup_id(&self.path).expect("cgroup id")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Helpers have been waited for; an exiting task can keep the cgroup
        // busy for a moment, so retry a bounded number of times.
        let deadline = Instant::now() + WAIT;
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// === impl TestNetns ===

/// A network namespace (`ip netns add`) with lo up and the test's addresses
/// on lo: 198.18.0.1 and 2001:2::1 stand for a provider, 198.18.1.1 for some
/// other service. Nothing routes out of it. Deleted on drop.
pub struct TestNetns {
    pub name: String,
}

pub const PROVIDER_V4: &str = "198.18.0.1";
pub const OTHER_V4: &str = "198.18.1.1";
pub const PROVIDER_V6: &str = "2001:2::1";

impl TestNetns {
    pub fn new() -> Self {
        let name = unique("sluice-t");
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for addr in [format!("{PROVIDER_V4}/32"), format!("{OTHER_V4}/32")] {
            ip(&["-n", &ns.name, "addr", "add", &addr, "dev", "lo"]);
        }
        ip(&[
            "-n",
            &ns.name,
            "-6",
            "addr",
            "add",
            &format!("{PROVIDER_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that entered this netns (setns affects only the
    /// calling thread), e.g. to create listeners there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// A TCP listener inside this netns.
    pub fn listen(&self, addr: &str) -> TcpListener {
        let addr: SocketAddr = addr.parse().expect("listen addr");
        self.run(move || TcpListener::bind(addr).expect("bind in netns"))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn enter_netns(path: &Path) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: valid fd; CLONE_NEWNET switches only the calling thread.
    let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
}

// === accepting ===

/// Accepts one connection within [`WAIT`], or `None`.
pub fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, WAIT.as_millis() as i32) };
    if n != 1 {
        return None;
    }
    listener.accept().ok()
}

/// True if a connection is pending on `listener` right now (after the
/// helper reported its connect as done, a pending one is already queued).
pub fn has_pending(listener: &TcpListener) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

// === helper processes ===

/// What a helper does, in which cgroup and netns.
#[derive(Default, Clone)]
pub struct Helper {
    /// `tcp` (connect and report), `udp` (sendto and report) or `proxy`
    /// (listen, accept one, report SO_ORIGINAL_DST).
    pub mode: &'static str,
    pub cgroup: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    /// tcp/udp: destination; proxy: listen address.
    pub addr: String,
    pub mark: Option<u32>,
    pub uid: Option<u32>,
}

/// A running helper and the `key=value` report it printed.
pub struct Running {
    child: Child,
    pub report: HashMap<String, String>,
}

impl Running {
    pub fn get(&self, key: &str) -> &str {
        self.report
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("helper report has no {key}: {:?}", self.report))
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.get(key).parse().expect("socket address in report")
    }

    /// Reads the next report line (proxy mode prints two).
    pub fn next_report(&mut self) {
        self.report = read_report(&mut self.child);
    }

    /// Waits (bounded) for the helper to exit.
    pub fn finish(mut self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("try_wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("helper did not exit within {WAIT:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Helper {
    /// Starts the helper and waits for its first report.
    pub fn start(&self) -> Running {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "helper_entry", "--nocapture", "--test-threads=1"])
            .env("SLUICE_HELPER", self.mode)
            .env("SLUICE_ADDR", &self.addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = &self.cgroup {
            cmd.env("SLUICE_CGROUP", c);
        }
        if let Some(n) = &self.netns {
            cmd.env("SLUICE_NETNS", n);
        }
        if let Some(m) = self.mark {
            cmd.env("SLUICE_MARK", m.to_string());
        }
        if let Some(u) = self.uid {
            cmd.env("SLUICE_UID", u.to_string());
        }
        let mut child = cmd.spawn().expect("spawn helper");
        let report = read_report(&mut child);
        Running { child, report }
    }

    /// Starts, reads the report, lets the helper finish.
    pub fn run(&self) -> HashMap<String, String> {
        let running = self.start();
        let report = running.report.clone();
        running.finish();
        report
    }
}

fn read_report(child: &mut Child) -> HashMap<String, String> {
    // The helper has an alarm(20) and every socket call in it is bounded,
    // so this read ends: with a line or with EOF.
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read helper") == 0 {
            panic!("helper exited without a report");
        }
        // libtest prints "test helper_entry ... " before the test's output
        // on the same line.
        if let Some((_, rest)) = line.trim_end().split_once("SLUICE ") {
            return rest
                .split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
    }
}

/// Body of the `helper_entry` test when re-executed as a helper: a no-op in
/// a normal test run.
pub fn helper_main() {
    let Ok(mode) = std::env::var("SLUICE_HELPER") else {
        return;
    };
    // SAFETY: alarm has no preconditions; SIGALRM's default action ends a
    // helper that would otherwise hang a test.
    unsafe { libc::alarm(20) };
    if let Ok(cgroup) = std::env::var("SLUICE_CGROUP") {
        // Before any socket exists: a socket's cgroup is fixed at creation.
        std::fs::write(
            Path::new(&cgroup).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("join cgroup");
    }
    if let Ok(netns) = std::env::var("SLUICE_NETNS") {
        enter_netns(Path::new(&netns));
    }
    let addr: SocketAddr = std::env::var("SLUICE_ADDR")
        .expect("SLUICE_ADDR")
        .parse()
        .expect("addr");
    let mark: Option<u32> = std::env::var("SLUICE_MARK")
        .ok()
        .map(|m| m.parse().expect("mark"));
    if let Ok(uid) = std::env::var("SLUICE_UID") {
        let uid: u32 = uid.parse().expect("uid");
        // SAFETY: plain syscalls; a failure is reported by the assert.
        assert_eq!(unsafe { libc::setresuid(uid, uid, uid) }, 0, "setresuid");
    }
    match mode.as_str() {
        "tcp" => helper_tcp(addr, mark),
        "udp" => helper_udp(addr),
        "proxy" => helper_proxy(addr),
        other => panic!("unknown helper mode {other}"),
    }
}

fn report(fields: &[(&str, String)]) {
    let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("SLUICE {}", line.join(" "));
}

fn identity() -> Vec<(&'static str, String)> {
    // SAFETY: trivial getters.
    let (pid, tid, uid) = unsafe { (libc::getpid(), libc::gettid(), libc::getuid()) };
    // The kernel's comm is per thread: read this thread's.
    let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
    vec![
        ("tgid", pid.to_string()),
        ("pid", tid.to_string()),
        ("uid", uid.to_string()),
        ("comm", comm.trim_end().replace(' ', "_")),
    ]
}

fn socket(family: i32, ty: i32) -> OwnedFd {
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn family(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn errno_of(ret: i32) -> Option<i32> {
    (ret != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
}

fn helper_tcp(addr: SocketAddr, mark: Option<u32>) {
    let fd = socket(family(&addr), libc::SOCK_STREAM);
    if let Some(mark) = mark {
        set_int(&fd, libc::SOL_SOCKET, libc::SO_MARK, mark as i32);
    }
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // Bounds connect() too (SO_SNDTIMEO applies to a blocking connect).
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv);
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
    let (sa, len) = to_sockaddr(&addr);
    // SAFETY: sa/len describe a valid sockaddr for the socket's family.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    let mut fields = identity();
    match errno_of(ret) {
        Some(errno) => {
            fields.push(("result", "err".into()));
            fields.push(("errno", errno.to_string()));
            report(&fields);
        }
        None => {
            fields.push(("result", "ok".into()));
            fields.push(("local", sockname(&fd, libc::getsockname).to_string()));
            fields.push(("peer", sockname(&fd, libc::getpeername).to_string()));
            report(&fields);
            // Hold the connection until the test closes its end (bounded
            // by SO_RCVTIMEO), so both ends exist while it checks.
            let mut buf = [0u8; 1];
            // SAFETY: valid buffer of length 1.
            unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 1, 0) };
        }
    }
}

fn helper_udp(addr: SocketAddr) {
    let fd = socket(family(&addr), libc::SOCK_DGRAM);
    let (sa, len) = to_sockaddr(&addr);
    let msg = b"quic?";
    // SAFETY: valid buffer and sockaddr.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    let mut fields = vec![];
    match errno_of(if ret < 0 { -1 } else { 0 }) {
        Some(errno) => {
            fields.push(("result", "err".to_owned()));
            fields.push(("errno", errno.to_string()));
        }
        None => fields.push(("result", "ok".to_owned())),
    }
    // Connected UDP (what QUIC stacks usually do) goes through connect4/6.
    let fd = socket(family(&addr), libc::SOCK_DGRAM);
    // SAFETY: as above.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    match errno_of(ret) {
        Some(errno) => fields.push(("connect", format!("err{errno}"))),
        None => fields.push(("connect", "ok".to_owned())),
    }
    report(&fields);
}

fn helper_proxy(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("proxy bind");
    report(&[(
        "listen",
        listener.local_addr().expect("local addr").to_string(),
    )]);
    let (stream, peer) = accept(&listener).expect("proxy accepted nothing");
    let local = stream.local_addr().expect("local");
    let mut fields = vec![("peer", peer.to_string()), ("local", local.to_string())];
    for (name, level) in [("orig4", libc::SOL_IP), ("orig6", libc::SOL_IPV6)] {
        fields.push((name, original_dst(&stream, level)));
    }
    report(&fields);
}

/// getsockopt(SO_ORIGINAL_DST) at `level`, as Pingora asks for it.
fn original_dst(stream: &TcpStream, level: i32) -> String {
    const SO_ORIGINAL_DST: i32 = 80;
    // SAFETY: zeroed sockaddr_storage is valid; len matches the buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = if level == libc::SOL_IP {
        std::mem::size_of::<libc::sockaddr_in>()
    } else {
        std::mem::size_of::<libc::sockaddr_in6>()
    } as libc::socklen_t;
    // SAFETY: buffer of at least len bytes.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            &mut ss as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    match errno_of(ret) {
        Some(errno) => format!("err{errno}"),
        None => from_sockaddr(&ss).map_or("none".into(), |a| a.to_string()),
    }
}

fn set_int(fd: &OwnedFd, level: i32, opt: i32, v: i32) {
    set_opt(fd, level, opt, &v);
}

fn set_opt<T>(fd: &OwnedFd, level: i32, opt: i32, v: &T) {
    // SAFETY: v points to a T of the given size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        ret,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(ip, u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = IpAddr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

type NameFn = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

fn sockname(fd: &OwnedFd, f: NameFn) -> SocketAddr {
    // SAFETY: zeroed storage and its size.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out-buffers.
    let ret = unsafe {
        f(
            fd.as_raw_fd(),
            &mut ss as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    assert_eq!(
        ret,
        0,
        "get{{sock,peer}}name: {}",
        std::io::Error::last_os_error()
    );
    from_sockaddr(&ss).expect("inet address")
}

// === impl TestPinDir ===

/// A directory under /sys/fs/bpf for pins, removed (with whatever is still
/// pinned in it) on drop.
pub struct TestPinDir {
    pub path: PathBuf,
}

impl TestPinDir {
    pub fn new() -> Self {
        Self {
            path: Path::new("/sys/fs/bpf").join(unique("sluice-test")),
        }
    }

    /// File names in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for TestPinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
