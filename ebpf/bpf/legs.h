// SPDX-License-Identifier: Apache-2.0
/*
 * Node-local legs: the pod sockets of steered connections, and the
 * congestion control they switch to (part of the datapath object, included
 * by datapath.c after its flow parser). The reasons are at zt_local_cc
 * and zt_legs in maps.h.
 */
#ifndef ZT_LEGS_H
#define ZT_LEGS_H

#define ZT_SOL_TCP 6
#define ZT_TCP_CONGESTION 13
#define ZT_AF_INET 2
#define ZT_AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_leg_key);
	__type(value, __u8);
} zt_legs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_local_cc);
} zt_local_cc SEC(".maps");

/* The algorithm for pod sockets of node-local legs, if any. */
static __always_inline const struct zt_local_cc *local_cc(void)
{
	__u32 zero = 0;
	struct zt_local_cc *cc = bpf_map_lookup_elem(&zt_local_cc, &zero);
	return cc && cc->name[0] ? cc : 0;
}

/* Remembers the pod end of a leg whose handshake packet f (sent by the pod)
 * was just assigned to a proxy socket. */
static __always_inline void record_leg(const struct flow *f)
{
	struct zt_leg_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.local = f->src;
	k.remote = f->dst;
	k.lport = f->sport_be;
	k.rport = f->dport_be;
	__u8 one = 1;
	/* A failed insert only leaves that socket on its own algorithm. */
	bpf_map_update_elem(&zt_legs, &k, &one, BPF_ANY);
}

/*
 * On the pods' cgroup tree: when a TCP socket is established (either side)
 * and it is the pod end of a leg zt_from_pod recorded, it switches to
 * zt_local_cc's algorithm. The established callbacks run before the kernel
 * initialises the socket's congestion control, so the socket starts on the
 * new algorithm and never runs (nor paces with) the one it had.
 */
SEC("sockops")
int zt_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	const struct zt_local_cc *want = local_cc();
	if (!want)
		return 1;
	/* Every context field is read once, up front and unconditionally:
	 * loads behind the branches below get merged by clang into one load
	 * through a computed context pointer, which the verifier refuses. */
	__u32 family = skops->family;
	__u32 l4 = skops->local_ip4, r4 = skops->remote_ip4;
	__u32 l6[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };
	__u32 r6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3] };
	__u32 lport = skops->local_port, rport = skops->remote_port;
	barrier_var(l4);
	barrier_var(r4);
	struct zt_leg_key k;
	__builtin_memset(&k, 0, sizeof(k));
	if (family == ZT_AF_INET) {
		k.local.family = ZT_FAMILY_V4;
		k.remote.family = ZT_FAMILY_V4;
		k.local.addr[0] = l4;
		k.remote.addr[0] = r4;
	} else if (family == ZT_AF_INET6 && r6[0] == 0 && r6[1] == 0 && r6[2] == bpf_htonl(0xffff)) {
		/* A dual-stack socket's IPv4 connection (::ffff:a.b.c.d): the
		 * packets, and so the recorded leg, are IPv4. */
		k.local.family = ZT_FAMILY_V4;
		k.remote.family = ZT_FAMILY_V4;
		k.local.addr[0] = l6[3];
		k.remote.addr[0] = r6[3];
	} else if (family == ZT_AF_INET6) {
		k.local.family = ZT_FAMILY_V6;
		k.remote.family = ZT_FAMILY_V6;
		__builtin_memcpy(k.local.addr, l6, 16);
		__builtin_memcpy(k.remote.addr, r6, 16);
	} else {
		return 1;
	}
	/* local_port is in host order; remote_port holds the network-order
	 * port in its upper 16 bits on little-endian machines (the field's
	 * historical layout), in its lower 16 on big-endian ones. */
	k.lport = bpf_htons((__u16)lport);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	k.rport = (__be16)(rport >> 16);
#else
	k.rport = (__be16)rport;
#endif
	if (!bpf_map_lookup_elem(&zt_legs, &k))
		return 1;
	bpf_map_delete_elem(&zt_legs, &k);
	char cc[16];
	__builtin_memcpy(cc, want->name, sizeof(cc));
	cc[15] = 0;
	/* Failure (an unknown name) leaves the socket as it was. */
	bpf_setsockopt(skops, ZT_SOL_TCP, ZT_TCP_CONGESTION, cc, sizeof(cc));
	return 1;
}

#endif
