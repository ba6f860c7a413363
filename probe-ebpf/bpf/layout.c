/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host program run by build.rs: prints the layout of every struct in
 * redirect.h as a Rust table, so the Rust mirrors in src/maps.rs are checked
 * against what clang actually lays out (tests in src/maps/tests.rs).
 */
#include <stddef.h>
#include <stdio.h>

#include "redirect.h"

#define SIZE(t) printf("    (\"sizeof(struct %s)\", %zu),\n", #t, sizeof(struct t))
#define OFF(t, f) printf("    (\"offsetof(struct %s, %s)\", %zu),\n", #t, #f, offsetof(struct t, f))

int main(void)
{
	printf("/// Layout of redirect.h as compiled by the host C compiler.\n");
	printf("pub(crate) const C_LAYOUT: &[(&str, usize)] = &[\n");
	SIZE(sluice_lpm_v4);
	OFF(sluice_lpm_v4, addr);
	SIZE(sluice_lpm_v6);
	OFF(sluice_lpm_v6, addr);
	SIZE(sluice_ports);
	SIZE(sluice_target);
	OFF(sluice_target, port);
	OFF(sluice_target, enabled);
	SIZE(sluice_config);
	OFF(sluice_config, heartbeat_timeout_ns);
	OFF(sluice_config, proxy_cgroup_id);
	OFF(sluice_config, mark);
	OFF(sluice_config, on_proxy_down);
	OFF(sluice_config, host_v4);
	OFF(sluice_config, host_v6);
	OFF(sluice_config, pod_v4);
	OFF(sluice_config, pod_v6);
	SIZE(sluice_orig);
	OFF(sluice_orig, port);
	OFF(sluice_orig, family);
	OFF(sluice_orig, pid);
	OFF(sluice_orig, tgid);
	OFF(sluice_orig, uid);
	OFF(sluice_orig, gid);
	OFF(sluice_orig, cgroup_id);
	OFF(sluice_orig, netns_cookie);
	OFF(sluice_orig, comm);
	SIZE(sluice_tuple);
	OFF(sluice_tuple, proxy_addr);
	OFF(sluice_tuple, client_port);
	OFF(sluice_tuple, proxy_port);
	printf("];\n");
	printf("/// Stats slots as numbered in redirect.h.\n");
	printf("pub(crate) const C_STAT_MAX: usize = %d;\n", SLUICE_STAT_MAX);
	return 0;
}
