// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Sluice redirect probe: cgroup programs that send TCP connections bound for
 * LLM provider prefixes to the local Sluice proxy, and tell the proxy where
 * they were going.
 *
 *   connect4/6     match dst in provider_v4/6, record original dst + who
 *                  (process context is only available here), rewrite dst
 *   sockops        re-key the record by the client 4-tuple once established
 *   getpeername4/6 the client keeps seeing the provider's address
 *   sendmsg4/6     refuse UDP/443 to providers so QUIC falls back to TCP
 *   getsockopt     answer SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for the
 *                  proxy's accepted sockets (attach to the proxy cgroup only)
 *
 * Byte order differs per context and is the classic source of bugs here:
 *   bpf_sock_addr.user_ip4/user_ip6  network order
 *   bpf_sock_addr.user_port          u32 holding a network-order u16
 *   bpf_sock_ops.local_port          host order
 *   bpf_sock_ops.remote_port         network-order u16 in the upper 16 bits
 *                                    (little-endian layout of the ctx rewrite)
 *   bpf_sock.src_port                host order
 *   bpf_sock.dst_port                network order (__be16)
 * Every key is built in the one convention of redirect.h.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "redirect.h"

#define AF_INET 2
#define AF_INET6 10
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#define PAGE_SIZE 4096
#define QUIC_PORT 443

/* A ctx field read the compiler may neither merge with another nor move
 * behind a pointer select (see tuple_from_sock_ops). */
#define CTX_READ(field) (*(volatile typeof(field) *)&(field))

#define ALLOW 1
#define REFUSE 0 /* sock_addr / sockopt programs: the syscall fails with EPERM */

/* === maps === */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__uint(max_entries, 16384);
	__type(key, struct sluice_lpm_v4);
	__type(value, struct sluice_ports);
} provider_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct sluice_lpm_v6);
	__type(value, struct sluice_ports);
} provider_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_config);
} config SEC(".maps");

/* Last bpf_ktime_get_ns() (CLOCK_MONOTONIC) written by the proxy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} heartbeat SEC(".maps");

/* Socket cookies are never reused within a boot, so a stale entry can only
 * waste space; LRU bounds that and sockops deletes entries on close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sluice_orig);
} orig_by_cookie SEC(".maps");

/* Not deleted on client close: the proxy may accept (and look up) after the
 * client already sent its request and closed. LRU and 4-tuple reuse evict. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sluice_tuple);
	__type(value, struct sluice_orig);
} orig_by_tuple SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* === helpers === */

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline struct sluice_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void set_v4_mapped(__u32 a[4], __u32 ip4)
{
	a[0] = 0;
	a[1] = 0;
	a[2] = bpf_htonl(0x0000ffff);
	a[3] = ip4;
}

static __always_inline int ports_match(const struct sluice_ports *p, __u16 port_host)
{
	int any = 1;

#pragma unroll
	for (int i = 0; i < SLUICE_MAX_PORTS; i++) {
		if (p->ports[i] == 0)
			continue;
		any = 0;
		if (p->ports[i] == port_host)
			return 1;
	}
	return any;
}

/* dst is in the 16-byte form; a v4-mapped address is looked up in the v4 trie
 * so dual-stack sockets match the same prefixes as AF_INET ones. */
static __always_inline struct sluice_ports *provider_lookup(const __u32 dst[4])
{
	if (is_v4_mapped(dst)) {
		struct sluice_lpm_v4 k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, &dst[3], 4);
		return bpf_map_lookup_elem(&provider_v4, &k);
	} else {
		struct sluice_lpm_v6 k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, dst, 16);
		return bpf_map_lookup_elem(&provider_v6, &k);
	}
}

/* TCP: the prefix matches and the port is one of its ports. */
static __always_inline int is_provider(const __u32 dst[4], __u16 port_be)
{
	struct sluice_ports *p = provider_lookup(dst);

	return p && ports_match(p, bpf_ntohs(port_be));
}

/* UDP/443 to any provider prefix, whatever its TCP ports: QUIC. */
static __always_inline int is_provider_quic(const __u32 dst[4], __u16 port_be)
{
	return port_be == bpf_htons(QUIC_PORT) && provider_lookup(dst);
}

/* True when the proxy has not written its heartbeat within the timeout. */
static __always_inline int proxy_down(const struct sluice_config *cfg)
{
	__u32 zero = 0;
	__u64 *last, now;

	if (cfg->heartbeat_timeout_ns == 0)
		return 0;
	last = bpf_map_lookup_elem(&heartbeat, &zero);
	if (!last)
		return 1;
	now = bpf_ktime_get_ns();
	/* The proxy may store a heartbeat newer than our `now` between the two
	 * reads; unsigned now - last would then wrap and look stale. */
	return now > *last && now - *last > cfg->heartbeat_timeout_ns;
}

/* user_ip6 must be read and written one 32-bit word at a time: the verifier
 * rejects wider (and narrower-than-word for writes) ctx accesses. */
static __always_inline void load_user_ip6(const struct bpf_sock_addr *ctx, __u32 a[4])
{
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
}

static __always_inline void store_user_ip6(struct bpf_sock_addr *ctx, const __u32 a[4])
{
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
}

/* === connect4 / connect6 === */

/*
 * Decide for one connect(). dst is the 16-byte form of the destination;
 * on return with a redirect, *target holds the proxy address to write.
 * Returns ALLOW or REFUSE; *target is NULL when the socket stays untouched.
 */
static __always_inline int decide_connect(struct bpf_sock_addr *ctx, const __u32 dst[4],
					  __u16 port_be, const struct sluice_target **target)
{
	struct sluice_config *cfg;
	const struct sluice_target *t;
	struct sluice_orig orig = {};
	__u64 cookie, pid_tgid, uid_gid, netns;
	int mapped = is_v4_mapped(dst);

	*target = 0;

	if (ctx->protocol == IPPROTO_UDP) {
		/* Connected UDP sockets never reach sendmsg4/6 with an address,
		 * so QUIC must be refused here too. */
		if (is_provider_quic(dst, port_be)) {
			count(SLUICE_STAT_QUIC_REFUSED);
			return REFUSE;
		}
		return ALLOW;
	}
	if (ctx->protocol != IPPROTO_TCP)
		return ALLOW;
	if (!is_provider(dst, port_be))
		return ALLOW;

	cfg = get_config();
	if (!cfg)
		return ALLOW;

	/* Loop avoidance: the proxy's upstream sockets carry its SO_MARK. The
	 * sock_addr context has no mark, but its sk is a full socket whose
	 * bpf_sock.mark is readable (cheaper than bpf_getsockopt(SO_MARK),
	 * which is also allowed here). Only CAP_NET_ADMIN can set a mark, so
	 * workloads cannot use this to escape. */
	if (cfg->mark != 0 && ctx->sk->mark == cfg->mark) {
		count(SLUICE_STAT_SKIPPED_MARKED);
		return ALLOW;
	}
	if (cfg->proxy_cgroup_id != 0 && bpf_get_current_cgroup_id() == cfg->proxy_cgroup_id) {
		count(SLUICE_STAT_SKIPPED_PROXY_CGROUP);
		return ALLOW;
	}

	if (proxy_down(cfg)) {
		if (cfg->on_proxy_down == SLUICE_PROXY_DOWN_FAIL_CLOSED) {
			count(SLUICE_STAT_FAIL_CLOSED);
			return REFUSE;
		}
		count(SLUICE_STAT_FAIL_OPEN);
		return ALLOW;
	}

	/* 127.0.0.1 in a pod's netns is the pod's own loopback: callers outside
	 * the host netns are sent to the pod-facing address instead. */
	netns = bpf_get_netns_cookie(ctx);
	if (netns == cfg->host_netns_cookie)
		t = mapped ? &cfg->host_v4 : &cfg->host_v6;
	else
		t = mapped ? &cfg->pod_v4 : &cfg->pod_v6;
	if (!t->enabled) {
		count(SLUICE_STAT_NO_PROXY_ADDR);
		return ALLOW;
	}

	/* Attribution is captured here and only here: sockops and getsockopt
	 * do not run in the client's process context. */
	pid_tgid = bpf_get_current_pid_tgid();
	uid_gid = bpf_get_current_uid_gid();
	__builtin_memcpy(orig.addr, dst, 16);
	orig.port = port_be;
	orig.family = ctx->family;
	orig.pid = (__u32)pid_tgid;
	orig.tgid = pid_tgid >> 32;
	orig.uid = (__u32)uid_gid;
	orig.gid = uid_gid >> 32;
	orig.cgroup_id = bpf_get_current_cgroup_id();
	orig.netns_cookie = netns;
	bpf_get_current_comm(orig.comm, sizeof(orig.comm));

	cookie = bpf_get_socket_cookie(ctx);
	/* Without the record the proxy could not forward: better go direct. */
	if (bpf_map_update_elem(&orig_by_cookie, &cookie, &orig, BPF_ANY) != 0)
		return ALLOW;

	*target = t;
	count(SLUICE_STAT_REDIRECTED);
	return ALLOW;
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	const struct sluice_target *t;
	__u32 dst[4];
	__u16 port_be = (__u16)ctx->user_port;
	int verdict;

	set_v4_mapped(dst, ctx->user_ip4);
	verdict = decide_connect(ctx, dst, port_be, &t);
	if (t) {
		ctx->user_ip4 = t->addr[3];
		ctx->user_port = t->port;
	}
	return verdict;
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	const struct sluice_target *t;
	__u32 dst[4];
	__u16 port_be = (__u16)ctx->user_port;
	int verdict;

	load_user_ip6(ctx, dst);
	verdict = decide_connect(ctx, dst, port_be, &t);
	if (t) {
		/* For a v4-mapped destination t is a v4 target, already stored
		 * in mapped form: the socket stays on its v4-mapped path. */
		store_user_ip6(ctx, t->addr);
		ctx->user_port = t->port;
	}
	return verdict;
}

/* === sockops === */

static __always_inline void tuple_from_sock_ops(const struct bpf_sock_ops *skops,
						struct sluice_tuple *k)
{
	/* Volatile ctx reads: otherwise clang turns "load both, pick one" into
	 * one load through a pointer picked by family (ctx + 28 or ctx + 60),
	 * and the verifier rejects a ctx access at a variable offset
	 * ("dereference of modified ctx ptr"). A compiler barrier is not enough. */
	__u32 family = CTX_READ(skops->family);
	__u32 l4 = CTX_READ(skops->local_ip4), r4 = CTX_READ(skops->remote_ip4);
	__u32 l6[4] = { CTX_READ(skops->local_ip6[0]), CTX_READ(skops->local_ip6[1]),
			CTX_READ(skops->local_ip6[2]), CTX_READ(skops->local_ip6[3]) };
	__u32 r6[4] = { CTX_READ(skops->remote_ip6[0]), CTX_READ(skops->remote_ip6[1]),
			CTX_READ(skops->remote_ip6[2]), CTX_READ(skops->remote_ip6[3]) };
	__u32 local_port = CTX_READ(skops->local_port);
	__u32 remote_port = CTX_READ(skops->remote_port);

	if (family == AF_INET) {
		set_v4_mapped(k->client_addr, l4);
		set_v4_mapped(k->proxy_addr, r4);
	} else {
		__builtin_memcpy(k->client_addr, l6, 16);
		__builtin_memcpy(k->proxy_addr, r6, 16);
	}
	/* local_port is host order; remote_port is the __be16 shifted into the
	 * upper half of the u32 (see the header comment). */
	k->client_port = bpf_htons((__u16)local_port);
	k->proxy_port = (__u16)(remote_port >> 16);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	struct sluice_orig *orig;
	struct sluice_tuple k = {};
	__u64 cookie;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
		if (!orig)
			return 1;
		tuple_from_sock_ops(skops, &k);
		if (bpf_map_update_elem(&orig_by_tuple, &k, orig, BPF_ANY) == 0)
			count(SLUICE_STAT_TUPLE_RECORDED);
		/* Ask for state changes of this socket only, to drop the cookie
		 * entry on close. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			cookie = bpf_get_socket_cookie(skops);
			bpf_map_delete_elem(&orig_by_cookie, &cookie);
		}
		break;
	}
	return 1;
}

/* === getpeername4 / getpeername6 === */

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sluice_orig *orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);

	if (orig) {
		ctx->user_ip4 = orig->addr[3];
		ctx->user_port = orig->port;
		count(SLUICE_STAT_GETPEERNAME_REWRITTEN);
	}
	return ALLOW; /* getpeername hooks must return 1 */
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sluice_orig *orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);

	if (orig) {
		/* Stored in 16-byte form: a v4-mapped original comes back
		 * v4-mapped, as the dual-stack client connected to it. */
		store_user_ip6(ctx, orig->addr);
		ctx->user_port = orig->port;
		count(SLUICE_STAT_GETPEERNAME_REWRITTEN);
	}
	return ALLOW;
}

/* === sendmsg4 / sendmsg6 === */

/* Only unconnected UDP sends (sendto/sendmsg with an address) get here;
 * connected UDP sockets are refused in connect4/6. */
SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u16 port_be = (__u16)ctx->user_port;
	__u32 dst[4];

	if (port_be != bpf_htons(QUIC_PORT))
		return ALLOW; /* skip the trie lookup for most datagrams */
	set_v4_mapped(dst, ctx->user_ip4);
	if (is_provider_quic(dst, port_be)) {
		count(SLUICE_STAT_QUIC_REFUSED);
		return REFUSE;
	}
	return ALLOW;
}

SEC("cgroup/sendmsg6")
int sluice_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u16 port_be = (__u16)ctx->user_port;
	__u32 dst[4];

	if (port_be != bpf_htons(QUIC_PORT))
		return ALLOW;
	load_user_ip6(ctx, dst);
	if (is_provider_quic(dst, port_be)) {
		count(SLUICE_STAT_QUIC_REFUSED);
		return REFUSE;
	}
	return ALLOW;
}

/* === getsockopt === */

/*
 * Runs after every getsockopt() of sockets in the cgroup it is attached to,
 * so attach it to the proxy's cgroup only. On the proxy's accepted socket
 * the peer (dst) is the client and the local end (src) the listener.
 */
SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sluice_tuple k = {};
	struct sluice_orig *orig;
	void *optval = ctx->optval;
	void *optval_end = ctx->optval_end;
	int v6;

	if (ctx->optname != SO_ORIGINAL_DST ||
	    (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		goto passthrough;
	if (sk->protocol != IPPROTO_TCP) /* sk: never NULL for sockopt progs */
		goto passthrough;

	if (sk->family == AF_INET) {
		set_v4_mapped(k.client_addr, sk->dst_ip4);
		set_v4_mapped(k.proxy_addr, sk->src_ip4);
	} else if (sk->family == AF_INET6) {
		k.client_addr[0] = sk->dst_ip6[0];
		k.client_addr[1] = sk->dst_ip6[1];
		k.client_addr[2] = sk->dst_ip6[2];
		k.client_addr[3] = sk->dst_ip6[3];
		k.proxy_addr[0] = sk->src_ip6[0];
		k.proxy_addr[1] = sk->src_ip6[1];
		k.proxy_addr[2] = sk->src_ip6[2];
		k.proxy_addr[3] = sk->src_ip6[3];
	} else {
		goto passthrough;
	}
	k.client_port = sk->dst_port; /* already network order */
	k.proxy_port = bpf_htons((__u16)sk->src_port); /* host order in bpf_sock */

	orig = bpf_map_lookup_elem(&orig_by_tuple, &k);
	if (!orig)
		goto passthrough;

	/* Answer in the family the caller asked for, like netfilter does:
	 * SOL_IP wants a sockaddr_in (only possible for a v4 original),
	 * SOL_IPV6 a sockaddr_in6. */
	v6 = ctx->level == SOL_IPV6;
	if (!v6) {
		struct sockaddr_in *sin = optval;

		if (!is_v4_mapped(orig->addr))
			goto passthrough;
		if ((void *)(sin + 1) > optval_end)
			goto passthrough; /* caller's buffer too small */
		__builtin_memset(sin, 0, sizeof(*sin));
		sin->sin_family = AF_INET;
		sin->sin_port = orig->port;
		sin->sin_addr.s_addr = orig->addr[3];
		ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = optval;

		if ((void *)(sin6 + 1) > optval_end)
			goto passthrough;
		__builtin_memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = orig->port;
		sin6->sin6_addr.in6_u.u6_addr32[0] = orig->addr[0];
		sin6->sin6_addr.in6_u.u6_addr32[1] = orig->addr[1];
		sin6->sin6_addr.in6_u.u6_addr32[2] = orig->addr[2];
		sin6->sin6_addr.in6_u.u6_addr32[3] = orig->addr[3];
		ctx->optlen = sizeof(*sin6);
	}
	/* Without conntrack the kernel answered ENOPROTOOPT (or ENOENT):
	 * override it. */
	ctx->retval = 0;
	count(SLUICE_STAT_ORIGINAL_DST_ANSWERED);
	return ALLOW;

passthrough:
	/* For optlen > PAGE_SIZE the program only saw the first page; leaving
	 * optlen as is would make the kernel return EFAULT. 0 tells it to use
	 * its own answer (Documentation/bpf/prog_cgroup_sockopt.rst). */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	return ALLOW;
}

/* Declared to the kernel as GPL-compatible; the source is dual-licensed. */
char LICENSE[] SEC("license") = "GPL";
