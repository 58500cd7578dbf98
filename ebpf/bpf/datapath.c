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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct zt_port);
} zt_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct zt_svc_cidr_key);
	__type(value, __u8);
} zt_svc_cidr SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 524288);
	__type(key, struct zt_ct_key);
	__type(value, struct zt_ct_value);
} zt_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_config);
} zt_config SEC(".maps");

/*
 * 256 KiB holds ~3,600 events (64 bytes plus the ring's 8-byte record
 * header each); the agent drains it every 50 ms, so ~70k new flows per
 * second, well above what one node's proxy opens. A burst beyond it loses
 * events (counted), never traffic. Kept small because the agent maps the
 * data pages twice (the ring wraps through a second mapping): 1 MiB here
 * was 2 MiB of the agent's resident memory.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} zt_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ZT_COUNTERS);
	__type(key, __u32);
	__type(value, struct zt_counter);
} zt_counters SEC(".maps");

/* A parsed packet: the peer is the end that is not the local pod. */
struct flow {
	struct zt_addr src;
	struct zt_addr dst;
	__u8 protocol;
	__u16 dport; /* host byte order; 0 for protocols without ports */
	__be16 sport_be;
	__be16 dport_be;
	__u8 icmp6_type;
	__u8 has_ports;
	__u8 tcp_syn_only; /* also set for ICMP echo requests: never a reply */
	__u8 tcp_synack;
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
		f->sport_be = ports[0];
		f->dport_be = ports[1];
		f->dport = bpf_ntohs(ports[1]);
		f->has_ports = 1;
		if (f->protocol == IPPROTO_TCP) {
			__u8 *flags = l4 + 13;
			if ((void *)(flags + 1) > end)
				return -1;
			/* SYN set, ACK clear: the first packet of a connection. */
			f->tcp_syn_only = (*flags & 0x12) == 0x02;
			f->tcp_synack = (*flags & 0x12) == 0x12;
		}
		} else if (f->protocol == IPPROTO_ICMP || f->protocol == IPPROTO_ICMPV6_) {
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > end)
			return -1;
		__u8 type = icmp[0];
		int request = type == 8 || type == 128;
		int echo_reply = type == 0 || type == 129;
		if (f->protocol == IPPROTO_ICMPV6_)
			f->icmp6_type = type;
		if (request || echo_reply) {
			/* Echo exchanges are tracked by their identifier, like a
			 * port on both ends; a request always starts a new flow. */
			__be16 id = *(__be16 *)(icmp + 4);
			f->sport_be = id;
			f->dport_be = id;
			f->tcp_syn_only = request;
		}
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
		/* Extension headers are not walked, but for one hop-by-hop
		 * options header, which every MLD message (link housekeeping,
		 * see is_infra) carries for its router alert: a packet whose
		 * next header after that is not TCP/UDP/SCTP/ICMPv6 is judged as
		 * that protocol, which only protocol-wildcard rules allow. */
		void *l4 = ip6 + 1;
		f->protocol = ip6->nexthdr;
		if (f->protocol == 0) {
			__u8 *hbh = l4;
			if ((void *)(hbh + 8) > end)
				return -1;
			f->protocol = hbh[0];
			l4 = hbh + ((__u32)hbh[1] + 1) * 8;
		}
		return parse_l4(l4, end, f, 1) < 0 ? -1 : 1;
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
				  __u32 *rule, __u32 *matched)
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
			*matched = ids[i];
			return ZT_REASON_RULE;
		}
	}
	return ZT_REASON_DENIED;
}

static __always_inline int is_infra(struct flow *f)
{
	/* IGMP on the local network control block (224.0.0.0/24: queries,
	 * v3 reports) is IPv4's counterpart of MLD below; behind a bridge
	 * every pod receives the host's. */
	if (f->protocol == IPPROTO_IGMP && f->dst.family == ZT_FAMILY_V4) {
		__u8 *d = (__u8 *)&f->dst.addr[0];
		return d[0] == 224 && d[1] == 0 && d[2] == 0;
	}
	/* IPv6 link housekeeping keeps the pod's link working; like ARP for
	 * IPv4 it is not subject to policy. */
	if (f->protocol != IPPROTO_ICMPV6_)
		return 0;
	__u8 t = f->icmp6_type;
	/* 133-137: router/neighbour discovery; 130-132, 143: multicast
	 * listener discovery (MLD, MLDv2). */
	return (t >= 133 && t <= 137) || (t >= 130 && t <= 132) || t == 143;
}

static __always_inline void count(__u8 dir, int allowed, __u32 bytes)
{
	__u32 idx = dir * 2 + (allowed ? 1 : 0);
	struct zt_counter *c = bpf_map_lookup_elem(&zt_counters, &idx);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline void emit(__u32 endpoint, __u8 dir, struct flow *f, int reason, __u32 rule, __u32 peer_id)
{
	struct zt_event *e = bpf_ringbuf_reserve(&zt_events, sizeof(*e), 0);
	if (!e) {
		/* Ring full (the agent drains it every poll): the verdict stands,
		 * only its event is lost, and counted so the agent can say so. */
		__u32 idx = ZT_COUNTER_EVENTS_LOST;
		struct zt_counter *c = bpf_map_lookup_elem(&zt_counters, &idx);
		if (c)
			c->packets += 1;
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->endpoint = endpoint;
	e->rule = rule;
	e->peer_identity = peer_id;
	e->reason = reason;
	e->direction = dir;
	e->protocol = f->protocol;
	e->family = f->src.family;
	e->allowed = reason != ZT_REASON_DENIED && reason != ZT_REASON_REVOKED;
	e->pad[0] = e->pad[1] = e->pad[2] = 0;
	__builtin_memcpy(e->src, f->src.addr, 16);
	__builtin_memcpy(e->dst, f->dst.addr, 16);
	e->sport = f->sport_be;
	e->dport = f->dport_be;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void ct_key(struct zt_ct_key *k, __u32 endpoint, __u8 dir, struct flow *f, int reversed)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->endpoint = endpoint;
	k->direction = dir;
	k->protocol = f->protocol;
	k->family = f->src.family;
	if (!reversed) {
		__builtin_memcpy(k->src, f->src.addr, 16);
		__builtin_memcpy(k->dst, f->dst.addr, 16);
		k->sport = f->sport_be;
		k->dport = f->dport_be;
	} else {
		__builtin_memcpy(k->src, f->dst.addr, 16);
		__builtin_memcpy(k->dst, f->src.addr, 16);
		k->sport = f->dport_be;
		k->dport = f->sport_be;
	}
}

static __always_inline int decide_packet(struct __sk_buff *skb, __u8 dir, struct flow *fp);

#include "legs.h"

/*
 * Assigns a TCP packet to the local proxy socket it belongs to (see
 * zt_config.mesh): the socket of its connection if one exists, else, for a
 * SYN, the capture listener. Returns the verdict: no socket, no packet.
 */
static __always_inline int assign(struct __sk_buff *skb, struct flow *f, struct zt_config *cfg)
{
	/* The connection's own proxy socket, by its 4-tuple. */
	int v6 = f->src.family == ZT_FAMILY_V6;
	__u32 tlen = v6 ? sizeof(struct bpf_sock_tuple) : sizeof(((struct bpf_sock_tuple *)0)->ipv4);
	struct bpf_sock_tuple t = {};
	if (v6) {
		__builtin_memcpy(t.ipv6.saddr, f->src.addr, 16);
		__builtin_memcpy(t.ipv6.daddr, f->dst.addr, 16);
		t.ipv6.sport = f->sport_be;
		t.ipv6.dport = f->dport_be;
	} else {
		t.ipv4.saddr = f->src.addr[0];
		t.ipv4.daddr = f->dst.addr[0];
		t.ipv4.sport = f->sport_be;
		t.ipv4.dport = f->dport_be;
	}
	/* A pod's handshake packet to a proxy socket opens a node-local leg
	 * (zt_legs): its SYN to the capture listener, or its SYN-ACK to a
	 * delivery socket. */
	int leg = 0;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN) {
			leg = f->tcp_synack;
			goto assign;
		}
		bpf_sk_release(sk);
	}
	if (!f->tcp_syn_only)
		return TC_ACT_SHOT;
	/* A new connection: the capture listener, proxy_addr4:proxy_port, or
	 * for IPv6 the same port on ::1. */
	if (v6) {
		__builtin_memset(t.ipv6.daddr, 0, 16);
		t.ipv6.daddr[3] = bpf_htonl(1);
		t.ipv6.dport = cfg->proxy_port;
	} else {
		t.ipv4.daddr = cfg->proxy_addr4;
		t.ipv4.dport = cfg->proxy_port;
	}
	sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;
	}
	leg = 1;
assign:;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return TC_ACT_SHOT;
	skb->mark = cfg->redirect_mark;
	if (leg && local_cc())
		record_leg(f);
	return TC_ACT_OK;
}

/*
 * Steers a permitted TCP packet from a pod to another pod into the local
 * proxy. Returns the verdict.
 */
static __always_inline int steer(struct __sk_buff *skb, struct flow *f, struct zt_config *cfg)
{
	struct zt_ip_info *dst = bpf_map_lookup_elem(&zt_ipcache, &f->dst);
	if (!dst || dst->identity == 0) {
		/* Not a pod: external, node, host network — or a Service's
		 * cluster IP its socket was not translated for. */
		struct zt_svc_cidr_key ck = { .prefixlen = 32 + (f->dst.family == ZT_FAMILY_V6 ? 128 : 32),
					      .family = f->dst.family };
		__builtin_memcpy(ck.addr, f->dst.addr, 16);
		return bpf_map_lookup_elem(&zt_svc_cidr, &ck) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	__u32 ifindex = skb->ifindex;
	struct zt_port *port = bpf_map_lookup_elem(&zt_ports, &ifindex);
	if (!port)
		return assign(skb, f, cfg);
	/* A bridge port. The frame is addressed to the bridge itself, or one
	 * for a pod of the same bridge would be switched to it past the proxy;
	 * the mark sends it to the local stack. The socket is assigned by
	 * zt_bridge_in when the bridge hands the frame up: an assignment made
	 * here does not survive the bridge's netfilter pass (br_netfilter,
	 * which Kubernetes nodes run). */
	if (bpf_skb_store_bytes(skb, 0, port->l3_mac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	skb->mark = cfg->redirect_mark;
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow f;
	__builtin_memset(&f, 0, sizeof(f));
	int verdict = decide_packet(skb, dir, &f);
	if (verdict != TC_ACT_OK || dir != ZT_DIR_EGRESS || f.protocol != IPPROTO_TCP || f.src.family == 0)
		return verdict;
	__u32 zero = 0;
	struct zt_config *cfg = bpf_map_lookup_elem(&zt_config, &zero);
	if (!cfg || !cfg->mesh)
		return verdict;
	int r = steer(skb, &f, cfg);
	if (r == TC_ACT_SHOT) {
		__u32 ifindex = skb->ifindex;
		struct zt_endpoint *ep = bpf_map_lookup_elem(&zt_endpoints, &ifindex);
		count(dir, 0, skb->len);
		emit(ep ? ep->endpoint : 0, dir, &f, ZT_REASON_NO_PROXY, 0, 0);
	}
	return r;
}

/* Whether a denial on this endpoint's side is audited (let through and
 * reported) rather than enforced: the whole node, or the pod's namespace. */
static __always_inline int audited(const struct zt_config *cfg, const struct zt_endpoint *ep)
{
	return (cfg && cfg->audit) || ep->audit;
}

static __always_inline int decide_packet(struct __sk_buff *skb, __u8 dir, struct flow *fp)
{
	struct flow f;
	__builtin_memset(&f, 0, sizeof(f));
	int parsed = parse(skb, &f);
	*fp = f;
	if (parsed == 0)
		return TC_ACT_OK; /* not IP (ARP, ...) */
	if (parsed < 0) {
		count(dir, 0, skb->len);
		return TC_ACT_SHOT;
	}
	if (is_infra(&f))
		return TC_ACT_OK;

	__u32 ifindex = skb->ifindex;
	struct zt_endpoint *ep = bpf_map_lookup_elem(&zt_endpoints, &ifindex);
	if (!ep) {
		count(dir, 0, skb->len);
		return TC_ACT_SHOT;
	}
	__u32 zero = 0;
	struct zt_config *cfg = bpf_map_lookup_elem(&zt_config, &zero);
	__u32 epoch = cfg ? cfg->epoch : 0;
	__u64 idle = cfg ? (f.protocol == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->other_idle_ns) : 0;
	/* The coarse clock (jiffies resolution) is plenty for idle timeouts of
	 * seconds and the 100 ms refresh below, and costs a quarter of the
	 * established-flow path less than the precise one (BENCHMARKS.md). */
	__u64 now = bpf_ktime_get_coarse_ns();

	/* Tracked flow: this direction, or the reply of the other. */
	struct zt_ct_key k;
	ct_key(&k, ep->endpoint, dir, &f, 0);
	struct zt_ct_value *ct = bpf_map_lookup_elem(&zt_ct, &k);
	__u8 orig_dir = dir;
	int reply = 0;
		if (!ct) {
		/* Kept apart from the test above: clang would otherwise OR the
		 * pointer with the flag, which the verifier rejects. */
		barrier_var(ct);
		if (!f.tcp_syn_only) {
			ct_key(&k, ep->endpoint, dir ^ 1, &f, 1);
			ct = bpf_map_lookup_elem(&zt_ct, &k);
			orig_dir = dir ^ 1;
			reply = 1;
		}
	}
	if (ct && idle && now - ct->last_seen_ns > idle) {
		bpf_map_delete_elem(&zt_ct, &k);
		ct = 0;
	}
	if (ct && !(f.tcp_syn_only && !reply)) {
		if (ct->epoch == epoch) {
			/* Refresh the idle clock at most every 100 ms: a write per
			 * packet would bounce the entry's cache line between the
			 * CPUs of the two directions for nothing (timeouts are
			 * tens of seconds). */
			if (now - ct->last_seen_ns > 100000000ULL)
				ct->last_seen_ns = now;
			count(dir, 1, skb->len);
			return TC_ACT_OK;
		}
		/* Policy changed since the verdict: decide the original flow
		 * again (for a reply, with the addresses and port reversed). */
		struct flow orig = f;
		if (reply) {
			orig.src = f.dst;
			orig.dst = f.src;
			orig.sport_be = f.dport_be;
			orig.dport_be = f.sport_be;
			orig.dport = bpf_ntohs(f.sport_be);
		}
		struct zt_addr *opeer = orig_dir == ZT_DIR_EGRESS ? &orig.dst : &orig.src;
		__u32 rule = 0, matched = 0;
		int reason = decide(ep, orig_dir, opeer, &orig, &rule, &matched);
		if (reason == ZT_REASON_DENIED && !audited(cfg, ep)) {
			bpf_map_delete_elem(&zt_ct, &k);
			emit(ep->endpoint, orig_dir, &orig, ZT_REASON_REVOKED, 0, 0);
			count(dir, 0, skb->len);
			return TC_ACT_SHOT;
		}
		if (reason == ZT_REASON_DENIED)
			emit(ep->endpoint, orig_dir, &orig, ZT_REASON_AUDIT, rule, matched);
		ct->epoch = epoch;
		ct->rule = rule;
		ct->last_seen_ns = now;
		count(dir, 1, skb->len);
		return TC_ACT_OK;
	}

	/* New flow. */
	struct zt_addr *peer = dir == ZT_DIR_EGRESS ? &f.dst : &f.src;
	__u32 rule = 0, matched = 0;
	int reason = decide(ep, dir, peer, &f, &rule, &matched);
	if (reason == ZT_REASON_DENIED && audited(cfg, ep))
		reason = ZT_REASON_AUDIT;
	int allowed = reason != ZT_REASON_DENIED;
	emit(ep->endpoint, dir, &f, reason, rule, matched);
	count(dir, allowed, skb->len);
	if (!allowed)
		return TC_ACT_SHOT;
	struct zt_ct_value v = { .last_seen_ns = now, .epoch = epoch, .rule = rule };
	ct_key(&k, ep->endpoint, dir, &f, 0);
	/* If the table is full the LRU evicts the oldest flow; a failed insert
	 * only means the next packet is decided again. */
	bpf_map_update_elem(&zt_ct, &k, &v, BPF_ANY);
	return TC_ACT_OK;
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

/*
 * At TC ingress of a bridge whose ports are pods' veths: a frame the bridge
 * hands up to the host that zt_from_pod steered (it carries the redirect
 * mark) is assigned to its proxy socket here, past the bridge. Nothing
 * else is touched. No socket, no packet, as on a routed veth.
 */
SEC("classifier/bridge_in")
int zt_bridge_in(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct zt_config *cfg = bpf_map_lookup_elem(&zt_config, &zero);
	if (!cfg || !cfg->redirect_mark || (skb->mark & ZT_MARK_MASK) != (cfg->redirect_mark & ZT_MARK_MASK))
		return TC_ACT_OK;
	struct flow f;
	if (parse(skb, &f) != 1 || f.protocol != IPPROTO_TCP)
		return TC_ACT_SHOT; /* only pod TCP is ever marked */
	int r = assign(skb, &f, cfg);
	if (r == TC_ACT_SHOT) {
		struct zt_ip_info *src = bpf_map_lookup_elem(&zt_ipcache, &f.src);
		count(ZT_DIR_EGRESS, 0, skb->len);
		emit(src ? src->endpoint : 0, ZT_DIR_EGRESS, &f, ZT_REASON_NO_PROXY, 0, 0);
	}
	return r;
}

#include "services.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
