/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one definition of every map the ztunnel datapath reads. The Rust
 * mirrors live in ebpf/src/maps.rs; a test compares both against the BTF of
 * the built object, so the two can never drift apart silently.
 *
 * All policy logic is compiled in user space (policy/src/compile); these
 * maps hold its output and the programs only look things up. Numbers:
 *   identity 0 = ANY (wildcard peer, any address), 1 = ALL_PODS;
 *   endpoint 0 = none; node 0 = not a node address.
 */
#ifndef ZT_MAPS_H
#define ZT_MAPS_H

#include <linux/types.h>

#define ZT_IDENTITY_ANY 0
#define ZT_IDENTITY_ALL_PODS 1

#define ZT_DIR_INGRESS 0
#define ZT_DIR_EGRESS 1

#define ZT_FAMILY_V4 4
#define ZT_FAMILY_V6 6

/*
 * zt_ipcache (HASH): pod or node address -> its identities.
 *   key:   family + address (IPv4 in addr[0], network byte order, rest zero)
 *   value: endpoint (local endpoint owning the address, for self traffic),
 *          identity (label identity), ns_identity, addr_identity (per pod
 *          address), node (node owning the address, for node traffic).
 * A miss means "not a pod, not a node": only CIDR and ANY entries can match.
 */
struct zt_addr {
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

struct zt_ip_info {
	__u32 endpoint;
	__u32 identity;
	__u32 ns_identity;
	__u32 addr_identity;
	__u32 node;
};

/*
 * zt_endpoints (HASH): host-side interface index of a local pod -> endpoint.
 * A packet on an interface with no entry is dropped (fail closed): programs
 * are only attached to known pods, so a miss is a pod being set up or torn
 * down.
 */
struct zt_endpoint {
	__u32 endpoint;
	__u32 node;
	__u8 ingress_isolated;
	__u8 egress_isolated;
	/* Non-zero: the pod's namespace is in policy audit mode; what its own
	 * policies deny is let through and reported (as zt_config.audit does
	 * for every pod). Was padding: pins from older builds read 0. */
	__u8 audit;
	__u8 pad;
};

/*
 * zt_ports (HASH): host-side interface index of a local pod that is a port
 * of a bridge (flannel's cni0, kubenet's cbr0) -> the bridge's own MAC.
 * Routed CNIs have no entry. A bridge switches a frame a pod addresses to
 * another pod of its bridge straight to that pod's port, past the host's IP
 * stack and so past the proxy; a steered packet therefore gets the bridge's
 * MAC as its destination, which makes the bridge hand it up to the stack
 * (and its assigned socket). The same holds for the replies a pod sends to
 * the original source address of a delivered tunnel.
 */
struct zt_port {
	__u8 l3_mac[6];
	__u8 pad[2];
};

/*
 * Service translation at the socket (cgroup programs; see
 * ztunnel/src/agent/services.rs): a connect or UDP send to a Service's
 * cluster IP and port goes to one of its ready backends instead.
 *   zt_svc (HASH): frontend (cluster IP, port, protocol) -> the id of its
 *         current backend list and its length (0: refused).
 *   zt_svc_backends (HASH): (id, index) -> backend address and port. A new
 *         list is written under a new id before the frontend points at it.
 *   zt_svc_rev (LRU_HASH): (socket cookie, backend) -> frontend, so that a
 *         UDP reply and getpeername show the application the address it
 *         asked for.
 * Ports are in network byte order.
 */
struct zt_svc_key {
	struct zt_addr addr;
	__be16 port;
	__u8 protocol;
	__u8 pad;
};

struct zt_svc_value {
	__u32 id;
	__u32 count;
};

struct zt_backend_key {
	__u32 id;
	__u32 index;
};

struct zt_backend {
	struct zt_addr addr;
	__be16 port;
	__u16 pad;
};

/*
 * zt_svc_cidr (LPM_TRIE): the cluster's Service CIDRs (--service-cidr).
 * With steering on, pod TCP still addressed to one of them at the pod's
 * veth was not translated at its socket (a Service the agent has not seen
 * yet): dropped, since kube-proxy would carry it past the mesh in the
 * clear. match: family (32 bits, exact), then the address.
 */
struct zt_svc_cidr_key {
	__u32 prefixlen;
	__u32 family;
	__u32 addr[4];
};

struct zt_rev_key {
	__u64 cookie;
	struct zt_addr addr;
	__be16 port;
	__u16 pad;
};

/*
 * zt_cidr4 / zt_cidr6 (LPM_TRIE): per endpoint and direction, the ipBlock
 * prefixes of the policies selecting the endpoint -> prefix identity.
 *   match: endpoint (32 bits) and direction + pad (32 bits) always exact,
 *          then the address on (prefixlen - 64) bits.
 * The longest match names the most specific prefix containing the peer;
 * an ipBlock is compiled to the identities of the prefixes inside it and
 * outside its exceptions, which makes `except` exact.
 */
struct zt_cidr4_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u8 direction;
	__u8 pad[3];
	__u32 addr;
};

struct zt_cidr6_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u8 direction;
	__u8 pad[3];
	__u32 addr[4];
};

#define ZT_CIDR_FIXED_BITS 64

/*
 * zt_policy (LPM_TRIE): per endpoint and direction, allowed
 * (peer identity, protocol, destination port block) -> rule.
 *   match: endpoint, peer, direction (72 bits) always exact;
 *          protocol: prefixlen 72 = any protocol (and any port);
 *          port (network byte order): prefixlen 80 + n matches the first n
 *          bits, so a port range is a few entries.
 * Lookup precedence (the program tries each identity the peer has, in this
 * order, and the first hit allows): label identity, address identity,
 * namespace identity, ALL_PODS (pods only), CIDR identity, ANY. Entries only
 * allow; the order only changes which rule is reported.
 */
struct zt_policy_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u32 peer;
	__u8 direction;
	__u8 protocol;
	__be16 port;
};

#define ZT_POLICY_FIXED_BITS 72
#define ZT_POLICY_FULL_BITS 96

struct zt_policy_value {
	__u32 rule;
};

/*
 * zt_ct (LRU_HASH): connection tracking, per endpoint and direction.
 *   key:   the endpoint, the direction the flow was first seen in at that
 *          endpoint, protocol and the tuple in that original direction.
 *   value: the policy epoch the verdict was taken under, last packet time.
 * A packet at endpoint E in direction d passes without a policy lookup when
 * (E, d, tuple) exists (original direction) or (E, !d, reversed tuple)
 * exists (reply), unless:
 *   - the entry's epoch differs from zt_config.epoch: the agent changed
 *     policy since, so the flow's original verdict is re-decided; a revoked
 *     flow is deleted and its packets dropped (revocation takes effect on
 *     the flow's next packet);
 *   - the entry is idle longer than its protocol's timeout;
 *   - a TCP SYN without ACK: always a new connection, never a reply.
 */
struct zt_ct_key {
	__u32 endpoint;
	__u8 direction;
	__u8 protocol;
	__u8 family;
	__u8 pad;
	__u32 src[4];
	__u32 dst[4];
	__be16 sport;
	__be16 dport;
};

/*
 * zt_legs (LRU_HASH): the pod ends of node-local legs, by the pod socket's
 * own view (local address and port, remote address and port). zt_from_pod
 * adds one when it assigns a pod's SYN to the capture listener (the pod is
 * the client; its peer is the proxy) or a pod's SYN-ACK to a delivery
 * socket (the pod is the server); zt_sockops takes it when that pod socket
 * is established and sets zt_local_cc's algorithm on it. An entry whose
 * socket never gets there (the handshake failed) is evicted by newer ones.
 */
struct zt_leg_key {
	struct zt_addr local;
	struct zt_addr remote;
	__be16 lport;
	__be16 rport;
};

struct zt_ct_value {
	__u64 last_seen_ns;
	__u32 epoch;
	__u32 rule;
};

/*
 * zt_config (ARRAY, 1 entry): global settings written by the agent.
 *   epoch: bumped after every policy sync that can revoke anything.
 *   mesh: non-zero when the node proxy runs; from then on every permitted
 *         TCP packet a pod sends to another pod is steered to a local proxy
 *         socket (bpf_sk_assign): the socket of its connection if one
 *         exists (the capture side on the source node, the delivery side's
 *         transparent socket for replies on the destination node), else,
 *         for a SYN, the capture listener at proxy_addr4:proxy_port (IPv6:
 *         [::1]:proxy_port). No socket means the packet is dropped: with
 *         the proxy down, pod TCP fails closed instead of leaving the node
 *         in plaintext.
 *   redirect_mark: set on steered packets; the agent routes marked packets
 *         to the local stack (ip rule fwmark -> local default route),
 *         matching the bits of ZT_MARK_MASK.
 */
#define ZT_MARK_MASK 0xff00
struct zt_config {
	__u32 epoch;
	__u32 mesh;
	__u64 tcp_idle_ns;
	__u64 other_idle_ns;
	__u32 proxy_addr4; /* network byte order */
	__be16 proxy_port;
	__u16 pad;
	__u32 redirect_mark;
	/* Non-zero: policy audit mode. A flow policy denies is let through
	 * and reported with reason ZT_REASON_AUDIT instead of dropped. */
	__u32 audit;
};

/*
 * zt_local_cc (ARRAY, 1 entry): a TCP congestion control name (NUL-padded)
 * or empty, written by the agent. Set, the pods' sockets of steered
 * connections switch to it when they are established (zt_legs). Such a
 * socket's peer is the local proxy one veth away, so its congestion control
 * governs only that hop: a pacing algorithm (BBR) there arms a timer per
 * burst and models no real path. The tunnel between the proxies keeps the
 * node's own choice. (Kept out of zt_config, whose pinned layout a
 * restarted agent must be able to adopt.)
 */
struct zt_local_cc {
	char name[16]; /* TCP_CA_NAME_MAX */
};

/*
 * zt_events (RINGBUF): one event per new flow decision (allowed or denied)
 * and per drop of a tracked flow (revoked). Flags carry the direction.
 */
struct zt_event {
	__u64 ts_ns;
	__u32 endpoint;
	__u32 rule;
	__u32 peer_identity;
	__u8 reason;
	__u8 direction;
	__u8 protocol;
	__u8 family;
	__u8 allowed;
	__u8 pad[3];
	__u32 src[4];
	__u32 dst[4];
	__be16 sport;
	__be16 dport;
};

/*
 * zt_counters (PERCPU_ARRAY): index = direction * 2 + allowed (packets and
 * bytes judged); index ZT_COUNTER_EVENTS_LOST counts, in `packets`, verdict
 * events dropped because the zt_events ring was full.
 */
#define ZT_COUNTER_EVENTS_LOST 4
#define ZT_COUNTERS 5
struct zt_counter {
	__u64 packets;
	__u64 bytes;
};

/* Verdict reasons, as reported in events and counters. */
enum zt_reason {
	ZT_REASON_DENIED = 0,
	ZT_REASON_RULE = 1,
	ZT_REASON_NOT_ISOLATED = 2,
	ZT_REASON_SELF = 3,
	ZT_REASON_NODE = 4,
	ZT_REASON_UNKNOWN_ENDPOINT = 5,
	ZT_REASON_MALFORMED = 6,
	ZT_REASON_INFRA = 7,
	ZT_REASON_TRACKED = 8,
	ZT_REASON_REVOKED = 9,
	ZT_REASON_NO_PROXY = 10,
	ZT_REASON_AUDIT = 11, /* denied by policy, let through in audit mode */
};

_Static_assert(sizeof(struct zt_addr) == 20, "zt_addr layout");
_Static_assert(sizeof(struct zt_ip_info) == 20, "zt_ip_info layout");
_Static_assert(sizeof(struct zt_endpoint) == 12, "zt_endpoint layout");
_Static_assert(sizeof(struct zt_port) == 8, "zt_port layout");
_Static_assert(sizeof(struct zt_svc_key) == 24, "zt_svc_key layout");
_Static_assert(sizeof(struct zt_svc_value) == 8, "zt_svc_value layout");
_Static_assert(sizeof(struct zt_backend_key) == 8, "zt_backend_key layout");
_Static_assert(sizeof(struct zt_backend) == 24, "zt_backend layout");
_Static_assert(sizeof(struct zt_rev_key) == 32, "zt_rev_key layout");
_Static_assert(sizeof(struct zt_svc_cidr_key) == 24, "zt_svc_cidr_key layout");
_Static_assert(sizeof(struct zt_cidr4_key) == 16, "zt_cidr4_key layout");
_Static_assert(sizeof(struct zt_cidr6_key) == 28, "zt_cidr6_key layout");
_Static_assert(sizeof(struct zt_policy_key) == 16, "zt_policy_key layout");
_Static_assert(sizeof(struct zt_policy_value) == 4, "zt_policy_value layout");
_Static_assert(sizeof(struct zt_ct_key) == 44, "zt_ct_key layout");
_Static_assert(sizeof(struct zt_ct_value) == 16, "zt_ct_value layout");
_Static_assert(sizeof(struct zt_config) == 40, "zt_config layout");
_Static_assert(sizeof(struct zt_local_cc) == 16, "zt_local_cc layout");
_Static_assert(sizeof(struct zt_leg_key) == 44, "zt_leg_key layout");
_Static_assert(sizeof(struct zt_event) == 64, "zt_event layout");
_Static_assert(sizeof(struct zt_counter) == 16, "zt_counter layout");

#endif
