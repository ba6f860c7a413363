/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map key and value layouts shared by redirect.bpf.c and the Rust loader
 * (probe-ebpf/src/maps.rs mirrors every struct here with #[repr(C)]; the
 * layout test in tests/layout.rs compares sizes and offsets against this file,
 * so change both sides together).
 *
 * Address convention, used by every program that builds a key or a value:
 * an address is always 16 bytes in network order, IPv4 as the v4-mapped IPv6
 * address ::ffff:a.b.c.d. A dual-stack socket connecting to ::ffff:a.b.c.d and
 * an AF_INET socket connecting to a.b.c.d therefore produce the same bytes.
 * Ports are stored as they travel on the wire (network order) unless a field
 * says otherwise.
 *
 * Only fixed-width UAPI types: this header is also compiled for the host by
 * build.rs to measure the layout.
 */
#ifndef SLUICE_REDIRECT_H
#define SLUICE_REDIRECT_H

#include <linux/types.h>

/* Stats slots (per-CPU array indices). Keep in step with `StatSlot` in maps.rs. */
#define SLUICE_STAT_REDIRECTED 0
#define SLUICE_STAT_SKIPPED_MARKED 1
#define SLUICE_STAT_FAIL_OPEN 2
#define SLUICE_STAT_FAIL_CLOSED 3
#define SLUICE_STAT_QUIC_REFUSED 4
#define SLUICE_STAT_GETPEERNAME_REWRITTEN 5
#define SLUICE_STAT_NO_PROXY_ADDR 6
#define SLUICE_STAT_TUPLE_RECORDED 7
#define SLUICE_STAT_ORIGINAL_DST_ANSWERED 8
#define SLUICE_STAT_SKIPPED_PROXY_CGROUP 9
#define SLUICE_STAT_MAX 10

#define SLUICE_PROXY_DOWN_FAIL_OPEN 0
#define SLUICE_PROXY_DOWN_FAIL_CLOSED 1

/* Up to this many ports per provider prefix; all zero means "any port". */
#define SLUICE_MAX_PORTS 8

/* LPM trie keys: prefixlen first, as BPF_MAP_TYPE_LPM_TRIE requires. */
struct sluice_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct sluice_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of provider_v4 / provider_v6. Ports in host order (they are compared
 * after bpf_ntohs), unused slots are 0. */
struct sluice_ports {
	__u16 ports[SLUICE_MAX_PORTS];
};

/* One proxy listener address. */
struct sluice_target {
	__u32 addr[4]; /* 16-byte form, v4 mapped */
	__u16 port; /* network order */
	__u16 enabled; /* 0: not configured, leave such connections untouched */
};

/* Single entry of the `config` array. */
struct sluice_config {
	/* Netns cookie of the host netns: callers elsewhere are "pods". */
	__u64 host_netns_cookie;
	/* Max age of `heartbeat`; 0 disables the proxy-down check. */
	__u64 heartbeat_timeout_ns;
	/* cgroup id of the proxy (skipped by connect4/6); 0 if unknown. */
	__u64 proxy_cgroup_id;
	/* SO_MARK of the proxy's upstream sockets; 0 disables the check. */
	__u32 mark;
	__u32 on_proxy_down; /* SLUICE_PROXY_DOWN_* */
	struct sluice_target host_v4;
	struct sluice_target host_v6;
	struct sluice_target pod_v4;
	struct sluice_target pod_v6;
};

/* Original destination and attribution of a redirected connection. Value of
 * both `orig_by_cookie` and `orig_by_tuple`. */
struct sluice_orig {
	__u32 addr[4]; /* original destination, 16-byte form */
	__u16 port; /* network order */
	__u16 family; /* AF_INET / AF_INET6 of the client's socket */
	__u32 pid; /* thread id (lower half of bpf_get_current_pid_tgid) */
	__u32 tgid; /* process id */
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	__u64 netns_cookie;
	char comm[16];
};

/* Client connection as the proxy sees it when it accepts: peer = client
 * local address, local = proxy listener address. Key of `orig_by_tuple`. */
struct sluice_tuple {
	__u32 client_addr[4]; /* 16-byte form */
	__u32 proxy_addr[4]; /* 16-byte form */
	__u16 client_port; /* network order */
	__u16 proxy_port; /* network order */
};

#endif /* SLUICE_REDIRECT_H */
