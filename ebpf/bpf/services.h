// SPDX-License-Identifier: Apache-2.0
/*
 * Service translation at the socket: the cgroup programs and their maps,
 * part of the datapath object (included by datapath.c, which defines the
 * helpers and types used here). The reasons and the agent's side are in
 * ztunnel/src/agent/services.rs; the map layouts in maps.h.
 */
#ifndef ZT_SERVICES_H
#define ZT_SERVICES_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_svc_key);
	__type(value, struct zt_svc_value);
} zt_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct zt_backend_key);
	__type(value, struct zt_backend);
} zt_svc_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_rev_key);
	__type(value, struct zt_backend);
} zt_svc_rev SEC(".maps");

/*
 * Service translation at the socket (cgroup programs on the pods' cgroup
 * tree): connect and UDP sendmsg to a Service frontend are sent to one of
 * its ready backends, chosen by the socket's cookie (so a socket keeps its
 * backend); recvmsg and getpeername show the frontend again. Returns 1 to
 * let the call proceed, 0 to refuse it (a Service without ready backends:
 * EPERM, where kube-proxy's reject gives ECONNREFUSED).
 */
static __always_inline void sock_addr_get(struct bpf_sock_addr *ctx, int v6, struct zt_addr *a, __be16 *port)
{
	a->family = v6 ? ZT_FAMILY_V6 : ZT_FAMILY_V4;
	if (v6) {
		a->addr[0] = ctx->user_ip6[0];
		a->addr[1] = ctx->user_ip6[1];
		a->addr[2] = ctx->user_ip6[2];
		a->addr[3] = ctx->user_ip6[3];
	} else {
		a->addr[0] = ctx->user_ip4;
	}
	*port = (__be16)ctx->user_port;
}

static __always_inline void sock_addr_set(struct bpf_sock_addr *ctx, int v6, const struct zt_backend *b)
{
	if (v6) {
		ctx->user_ip6[0] = b->addr.addr[0];
		ctx->user_ip6[1] = b->addr.addr[1];
		ctx->user_ip6[2] = b->addr.addr[2];
		ctx->user_ip6[3] = b->addr.addr[3];
	} else {
		ctx->user_ip4 = b->addr.addr[0];
	}
	ctx->user_port = b->port;
}

/* An IPv4 address an IPv6 socket uses (::ffff:a.b.c.d): read as the IPv4
 * address, so a dual-stack socket (Java's default) reaches IPv4 Services. */
static __always_inline int v4_mapped(const struct zt_addr *a)
{
	return a->family == ZT_FAMILY_V6 && a->addr[0] == 0 && a->addr[1] == 0 && a->addr[2] == bpf_htonl(0xffff);
}

static __always_inline void unmap(struct zt_addr *a)
{
	if (v4_mapped(a)) {
		a->family = ZT_FAMILY_V4;
		a->addr[0] = a->addr[3];
		a->addr[1] = 0;
		a->addr[2] = 0;
		a->addr[3] = 0;
	}
}

/* What an IPv6 socket is given for an IPv4 address: the mapped form. */
static __always_inline void remap(struct zt_backend *b, int v6)
{
	if (v6 && b->addr.family == ZT_FAMILY_V4) {
		b->addr.family = ZT_FAMILY_V6;
		b->addr.addr[3] = b->addr.addr[0];
		b->addr.addr[0] = 0;
		b->addr.addr[1] = 0;
		b->addr.addr[2] = bpf_htonl(0xffff);
	}
}

static __always_inline int sock_translate(struct bpf_sock_addr *ctx, int v6)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct zt_svc_key k = {};
	sock_addr_get(ctx, v6, &k.addr, &k.port);
	unmap(&k.addr);
	k.protocol = proto;
	struct zt_svc_value *svc = bpf_map_lookup_elem(&zt_svc, &k);
	if (!svc)
		return 1;
	__u32 count = svc->count;
	if (count == 0)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct zt_backend_key bk = { .id = svc->id, .index = (__u32)(cookie % count) };
	struct zt_backend *found = bpf_map_lookup_elem(&zt_svc_backends, &bk);
	if (!found)
		return 0;
	struct zt_backend b = *found;
	/* An IPv4 backend cannot be given to an IPv6 socket but mapped; an
	 * IPv6 one cannot be given to an IPv4 socket at all (the agent only
	 * lists backends of the frontend's family). */
	if (!v6 && b.addr.family != ZT_FAMILY_V4)
		return 0;
	struct zt_rev_key rk = { .cookie = cookie, .addr = b.addr, .port = b.port };
	struct zt_backend front = { .addr = k.addr, .port = k.port };
	bpf_map_update_elem(&zt_svc_rev, &rk, &front, BPF_ANY);
	remap(&b, v6);
	sock_addr_set(ctx, v6, &b);
	return 1;
}

static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct zt_rev_key rk = { .cookie = bpf_get_socket_cookie(ctx) };
	sock_addr_get(ctx, v6, &rk.addr, &rk.port);
	unmap(&rk.addr);
	struct zt_backend *found = bpf_map_lookup_elem(&zt_svc_rev, &rk);
	if (!found)
		return 1;
	struct zt_backend front = *found;
	remap(&front, v6);
	sock_addr_set(ctx, v6, &front);
	return 1;
}

SEC("cgroup/connect4")
int zt_connect4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 0);
}

SEC("cgroup/sendmsg4")
int zt_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 0);
}

SEC("cgroup/recvmsg4")
int zt_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/getpeername4")
int zt_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/connect6")
int zt_connect6(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 1);
}

SEC("cgroup/sendmsg6")
int zt_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 1);
}

SEC("cgroup/recvmsg6")
int zt_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

SEC("cgroup/getpeername6")
int zt_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

#endif
