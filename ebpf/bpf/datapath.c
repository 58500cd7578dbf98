// SPDX-License-Identifier: Apache-2.0
/*
 * ztunnel datapath: TC classifiers on the host side of every pod veth.
 *   from_pod: packets the pod sends (its egress), attached at TC ingress of
 *             the host-side veth;
 *   to_pod:   packets delivered to the pod (its ingress), at TC egress.
 * Each looks up the compiled tables (maps.h) and passes or drops. No policy
 * logic lives here: the decision procedure is policy::compile::Tables::decide,
 * and the tests hold the two to the same verdicts.
 *
 * Only UAPI types are used (struct __sk_buff and the packet headers), so the
 * object needs no kernel-internal BTF and no CO-RE relocations.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define IPPROTO_ICMPV6_ 58

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct zt_addr);
	__type(value, struct zt_ip_info);
} zt_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct zt_endpoint);
} zt_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct zt_cidr4_key);
	__type(value, __u32);
} zt_cidr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct zt_cidr6_key);
	__type(value, __u32);
} zt_cidr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct zt_policy_key);
	__type(value, struct zt_policy_value);
} zt_policy SEC(".maps");

/* A parsed packet: the peer is the end that is not the local pod. */
struct flow {
	struct zt_addr src;
	struct zt_addr dst;
	__u8 protocol;
	__u16 dport; /* host byte order; 0 for protocols without ports */
	__u8 icmp6_type;
	__u8 has_ports;
};

static __always_inline int parse_l4(void *l4, void *end, struct flow *f, int first_fragment)
{
	f->has_ports = 0;
	f->dport = 0;
	if (f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP || f->protocol == IPPROTO_SCTP) {
		/* Source and destination ports are the first 4 bytes of all three. */
		if (!first_fragment) {
			/* Non-first fragments carry no ports: decided as port 0,
			 * which no port rule opens (fail closed). */
			return 0;
		}
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return -1;
		f->dport = bpf_ntohs(ports[1]);
		f->has_ports = 1;
	} else if (f->protocol == IPPROTO_ICMPV6_) {
		__u8 *type = l4;
		if ((void *)(type + 1) > end)
			return -1;
		f->icmp6_type = *type;
	}
	return 0;
}

/* Returns 1 for IP packets parsed into f, 0 for non-IP, -1 for malformed. */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memset(f, 0, sizeof(*f));
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		f->src.family = ZT_FAMILY_V4;
		f->dst.family = ZT_FAMILY_V4;
		f->src.addr[0] = ip->saddr;
		f->dst.addr[0] = ip->daddr;
		f->protocol = ip->protocol;
		int first = (ip->frag_off & bpf_htons(0x1fff)) == 0;
		return parse_l4((void *)ip + ip->ihl * 4, end, f, first) < 0 ? -1 : 1;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		f->src.family = ZT_FAMILY_V6;
		f->dst.family = ZT_FAMILY_V6;
		__builtin_memcpy(f->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(f->dst.addr, &ip6->daddr, 16);
		/* Extension headers are not walked: a packet whose first next
		 * header is not TCP/UDP/SCTP/ICMPv6 is judged as that protocol,
		 * which only protocol-wildcard rules allow. */
		f->protocol = ip6->nexthdr;
		return parse_l4(ip6 + 1, end, f, 1) < 0 ? -1 : 1;
	}
	return 0;
}

static __always_inline __u32 lookup_cidr(__u32 endpoint, __u8 dir, struct zt_addr *peer)
{
	__u32 *id;
	if (peer->family == ZT_FAMILY_V4) {
		struct zt_cidr4_key k = {
			.prefixlen = ZT_CIDR_FIXED_BITS + 32,
			.endpoint = endpoint,
			.direction = dir,
			.addr = peer->addr[0],
		};
		id = bpf_map_lookup_elem(&zt_cidr4, &k);
	} else {
		struct zt_cidr6_key k = {
			.prefixlen = ZT_CIDR_FIXED_BITS + 128,
			.endpoint = endpoint,
			.direction = dir,
		};
		__builtin_memcpy(k.addr, peer->addr, 16);
		id = bpf_map_lookup_elem(&zt_cidr6, &k);
	}
	return id ? *id : 0;
}

static __always_inline struct zt_policy_value *lookup_policy(__u32 endpoint, __u8 dir, __u32 peer, __u8 protocol,
							    __u16 port)
{
	struct zt_policy_key k = {
		.prefixlen = ZT_POLICY_FULL_BITS,
		.endpoint = endpoint,
		.peer = peer,
		.direction = dir,
		.protocol = protocol,
		.port = bpf_htons(port),
	};
	return bpf_map_lookup_elem(&zt_policy, &k);
}

/* The decision for the first packet of a flow (Tables::decide). */
static __always_inline int decide(struct zt_endpoint *ep, __u8 dir, struct zt_addr *peer, struct flow *f,
				  __u32 *rule)
{
	struct zt_ip_info *info = bpf_map_lookup_elem(&zt_ipcache, peer);
	if (info && info->endpoint != 0 && info->endpoint == ep->endpoint)
		return ZT_REASON_SELF;
	if (info && info->node != 0 && info->node == ep->node)
		return ZT_REASON_NODE;
	if (!(dir == ZT_DIR_INGRESS ? ep->ingress_isolated : ep->egress_isolated))
		return ZT_REASON_NOT_ISOLATED;

	__u16 port = f->has_ports ? f->dport : 0;
	__u32 ids[6];
	ids[0] = info ? info->identity : 0;
	ids[1] = info ? info->addr_identity : 0;
	ids[2] = info ? info->ns_identity : 0;
	ids[3] = (info && info->identity) ? ZT_IDENTITY_ALL_PODS : 0;
	ids[4] = lookup_cidr(ep->endpoint, dir, peer);
	ids[5] = ZT_IDENTITY_ANY;
#pragma unroll
	for (int i = 0; i < 6; i++) {
		if (i < 5 && ids[i] == 0)
			continue;
		struct zt_policy_value *v = lookup_policy(ep->endpoint, dir, ids[i], f->protocol, port);
		if (v) {
			*rule = v->rule;
			return ZT_REASON_RULE;
		}
	}
	return ZT_REASON_DENIED;
}

static __always_inline int is_infra(struct flow *f)
{
	/* IPv6 neighbour discovery and router messages keep the pod's link
	 * working; like ARP for IPv4 they are not subject to policy. */
	return f->protocol == IPPROTO_ICMPV6_ && f->icmp6_type >= 133 && f->icmp6_type <= 137;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow f;
	int parsed = parse(skb, &f);
	if (parsed == 0)
		return TC_ACT_OK; /* not IP (ARP, ...) */
	if (parsed < 0)
		return TC_ACT_SHOT;
	if (is_infra(&f))
		return TC_ACT_OK;

	__u32 ifindex = skb->ifindex;
	struct zt_endpoint *ep = bpf_map_lookup_elem(&zt_endpoints, &ifindex);
	if (!ep)
		return TC_ACT_SHOT;

	struct zt_addr *peer = dir == ZT_DIR_EGRESS ? &f.dst : &f.src;
	__u32 rule = 0;
	int reason = decide(ep, dir, peer, &f, &rule);
	return reason == ZT_REASON_DENIED ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("classifier/from_pod")
int zt_from_pod(struct __sk_buff *skb)
{
	return handle(skb, ZT_DIR_EGRESS);
}

SEC("classifier/to_pod")
int zt_to_pod(struct __sk_buff *skb)
{
	return handle(skb, ZT_DIR_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
