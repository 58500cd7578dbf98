/*
 * Spike (not part of the product): splice a host-local TCP leg with
 * sockmap. sock_ops puts both ends of every connection to or from port 5201
 * (iperf3) into a SOCKHASH keyed by (local ip, remote ip, local port,
 * remote port); sk_msg hands each sendmsg straight to the peer socket's
 * receive queue, so no segment crosses the veth or the TCP stack. Used by
 * run.sh to measure what splicing the mesh's two local legs could save.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key { __u32 lip, rip, lport, rport; };

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, __u32);
} socks SEC(".maps");

SEC("sockops")
int ops(struct bpf_sock_ops *s)
{
	if (s->family != 2)
		return 0;
	if (s->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && s->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 0;
	__u32 lport = s->local_port, rport = bpf_ntohl(s->remote_port);
	if (lport != 5201 && rport != 5201)
		return 0;
	struct key k = { s->local_ip4, s->remote_ip4, lport, rport };
	bpf_sock_hash_update(s, &socks, &k, BPF_NOEXIST);
	return 0;
}

SEC("sk_msg")
int msg(struct sk_msg_md *m)
{
	struct key k = { m->remote_ip4, m->local_ip4, bpf_ntohl(m->remote_port), m->local_port };
	bpf_msg_redirect_hash(m, &socks, &k, BPF_F_INGRESS);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
