// mqpeer: the host side of the lab's multi-queue TAP NIC (0000:00:0a.0), run inside the run's own network
// namespace on the TAP device (lab/tapfds.c made it). An AF_PACKET peer speaking pvdrv's flow frames
// (apps/frames.ts: Ethernet, IPv4, UDP from port 0x8000 + flow, then the test frame's magic, sequence, length, the
// flow again and the byte pattern), so tun spreads them over the queues by flow hash and steers replies to the queue a flow came from.
//  - every flow frame from the guest is verified and sent back with MACs, addresses and ports swapped (the same
//    flow), while listening is on;
//  - control frames from the guest (ethertype 0x88b6, ASCII) steer it, so guest tests and benchmarks need no
//    host-side choreography:
//      "zero"                              reset the counters
//      "listen 0|1"                        stop or resume reading (verifying, reflecting) flow frames
//      "blast COUNT FLOWS FIRST SIZE PPS"  send COUNT flow frames round-robin over flows FIRST.., SIZE bytes, at
//                                          PPS frames/s (0: as fast as the device takes them), to the sender
//      "stats TOKEN"                       reply "stats TOKEN VALID CORRUPT FOREIGN BYTES REFLECTED BLASTED
//                                          DROPPED TAPRX SOCKDROPS": TAPRX is the TAP device's own count of the
//                                          frames it took from QEMU (/proc/net/dev), SOCKDROPS what the flow
//                                          socket lost
//
//   mqpeer IFNAME
// Waits up to 60 s for IFNAME; runs until stdin closes, then prints its counters as one JSON line.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOOL "mqpeer"
#include "test_frame.h"

#define ETHERTYPE_CTRL 0x88b6
#define BATCH 32
#define MAXF 1536
#define FLOW_HDR 42      // Ethernet 14 + IPv4 20 + UDP 8
#define FLOW_PORT 0x8000 // UDP source port of flow f: FLOW_PORT + f
#define MIN_FLOW 60

static const unsigned char GUEST_IP[4] = {10, 77, 0, 2}, PEER_IP[4] = {10, 77, 0, 1};

static uint16_t ip_checksum(const unsigned char *h) {
  uint32_t s = 0;
  for (int i = 0; i < 20; i += 2) s += h[i] << 8 | h[i + 1];
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

static void put16(unsigned char *p, unsigned v) { p[0] = v >> 8, p[1] = v & 0xff; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v >> 16), put16(p + 2, v & 0xffff); }
static int get16(const unsigned char *p) { return p[0] << 8 | p[1]; }
static uint32_t get32(const unsigned char *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

// The fold of `seq` the pattern starts from (seqFold in apps/frames.ts).
static unsigned fold(uint32_t seq) { return (seq ^ seq >> 8 ^ seq >> 16 ^ seq >> 24) & 0xff; }

// Flow frame `seq` of `flow`, `len` bytes, from the peer to `dst` (the layout of writeFlowFrame in apps/frames.ts).
static void write_flow(unsigned char *b, int len, uint32_t seq, unsigned flow, const unsigned char *dst,
                       const unsigned char *src) {
  memcpy(b, dst, 6), memcpy(b + 6, src, 6), put16(b + 12, 0x0800);
  unsigned char *ip = b + 14, *udp = b + 34, *body = b + FLOW_HDR;
  memset(ip, 0, 20);
  ip[0] = 0x45, put16(ip + 2, len - 14), put16(ip + 6, 0x4000), ip[8] = 64, ip[9] = 17;
  memcpy(ip + 12, PEER_IP, 4), memcpy(ip + 16, GUEST_IP, 4), put16(ip + 10, ip_checksum(ip));
  put16(udp, 9), put16(udp + 2, FLOW_PORT + flow), put16(udp + 4, len - 34), put16(udp + 6, 0);
  put32(body, MAGIC), put32(body + 4, seq), put16(body + 8, len), put16(body + 10, flow);
  unsigned h = fold(seq);
  for (int i = FLOW_HDR + 12; i < len; i++) b[i] = (h * 7 + i) & 0xff;
}

// 1 ok, 0 foreign, -1 corrupt (checkFlowFrame's rules).
static int check_flow(const unsigned char *b, int len) {
  if (len < MIN_FLOW || get16(b + 12) != 0x0800 || b[14] != 0x45 || b[23] != 17) return 0;
  if (get32(b + FLOW_HDR) != MAGIC) return 0;
  int want = get16(b + FLOW_HDR + 8);
  if (want != len || get16(b + 16) != len - 14 || get16(b + 38) != len - 34 || ip_checksum(b + 14) != 0) return -1;
  int sport = get16(b + 34), dport = get16(b + 36);
  int port = sport >= FLOW_PORT ? sport : dport, other = sport >= FLOW_PORT ? dport : sport;
  if (other != 9 || get16(b + 40) != 0 || port - FLOW_PORT != get16(b + FLOW_HDR + 10)) return -1;
  unsigned h = fold(get32(b + FLOW_HDR + 4));
  for (int i = FLOW_HDR + 12; i < len; i++)
    if (b[i] != ((h * 7 + i) & 0xff)) return -1;
  return 1;
}

static void swap(unsigned char *a, unsigned char *b, int n) {
  unsigned char t[6];
  memcpy(t, a, n), memcpy(a, b, n), memcpy(b, t, n);
}

static struct {
  long valid, corrupt, foreign, bytes, reflected, blasted, dropped, sockdrops;
} c;

// Frames `ifn` received (from QEMU), from this namespace's /proc/net/dev; -1 when unreadable.
static long tap_rx(const char *ifn) {
  FILE *f = fopen("/proc/net/dev", "r");
  char line[512], name[IFNAMSIZ + 2];
  long bytes, packets = -1;
  snprintf(name, sizeof name, "%s:", ifn);
  while (f && fgets(line, sizeof line, f)) {
    char *p = line;
    while (*p == ' ') p++;
    if (!strncmp(p, name, strlen(name)) && sscanf(p + strlen(name), "%ld %ld", &bytes, &packets) == 2) break;
  }
  if (f) fclose(f);
  return packets;
}

// Add what the socket dropped since the last call (PACKET_STATISTICS resets on read).
static void count_sockdrops(int s) {
  struct tpacket_stats st;
  socklen_t l = sizeof st;
  if (!getsockopt(s, SOL_PACKET, PACKET_STATISTICS, &st, &l)) c.sockdrops += st.tp_drops;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: mqpeer IFNAME\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  unsigned char mac[6], guest[6] = {0};
  // Flow frames (IPv4) and control frames arrive on sockets of their own: a control frame never waits behind a
  // flood, and with listening off the flood is not even read (the kernel drops what the socket cannot hold).
  // QEMU's launcher makes the device: wait up to 60 s for it.
  int s = packet_socket(argv[1], 0x0800, SOCK_NONBLOCK, 600, mac);
  int k = packet_socket(argv[1], ETHERTYPE_CTRL, SOCK_NONBLOCK, 600, mac);
  static unsigned char rbuf[BATCH][MAXF], tbuf[BATCH][MAXF], reply[MAXF];
  struct mmsghdr rm[BATCH], tm[BATCH];
  struct iovec riov[BATCH], tiov[BATCH];
  struct sockaddr_ll from[BATCH];
  int listen = 1, size = 0;
  long to_blast = 0, blast_sent = 0, flows = 1, first = 0;
  double pps = 0, t_blast = 0;
  printf("ready\n");
  for (;;) {
    struct pollfd p[3] = {{.fd = 0, .events = POLLIN}, {.fd = k, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    int wait = blast_sent < to_blast ? (pps > 0 ? 1 : 0) : 100;
    if (poll(p, listen ? 3 : 2, wait) < 0 && errno != EINTR) die("poll");
    if (p[0].revents) {  // stdin: EOF ends the run
      char tmp[64];
      if (read(0, tmp, sizeof tmp) <= 0) break;
    }
    for (int i = 0; i < BATCH; i++) set_msg(&rm[i], &riov[i], rbuf[i], MAXF, &from[i]);
    int n = recvmmsg(k, rm, BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < n; i++) {
      if (from[i].sll_pkttype == PACKET_OUTGOING) continue;  // our own replies
      unsigned char *b = rbuf[i];
      char cmd[128];
      int l = (int)rm[i].msg_len - 14;
      l = l < 0 ? 0 : l > 127 ? 127 : l;
      memcpy(cmd, b + 14, l), cmd[l] = 0;
      memcpy(guest, b + 6, 6);
      if (!strcmp(cmd, "zero")) count_sockdrops(s), memset(&c, 0, sizeof c);
      else if (!strncmp(cmd, "listen ", 7)) listen = atoi(cmd + 7);
      else if (!strncmp(cmd, "blast ", 6)) {
        long count;
        if (sscanf(cmd + 6, "%ld %ld %ld %d %lf", &count, &flows, &first, &size, &pps) != 5 || size < MIN_FLOW ||
            size > 1514 || flows < 1 || first < 0 || first + flows > 0x7fff)
          continue;
        to_blast = count, blast_sent = 0, t_blast = now();
      } else if (!strncmp(cmd, "stats ", 6)) {
        memcpy(reply, guest, 6), memcpy(reply + 6, mac, 6), put16(reply + 12, ETHERTYPE_CTRL);
        count_sockdrops(s);
        int m = snprintf((char *)reply + 14, MAXF - 15, "stats %ld %ld %ld %ld %ld %ld %ld %ld %ld %ld",
                         atol(cmd + 6), c.valid, c.corrupt, c.foreign, c.bytes, c.reflected, c.blasted, c.dropped,
                         tap_rx(argv[1]), c.sockdrops);
        int rl = 14 + m + 1 < 60 ? 60 : 14 + m + 1;
        memset(reply + 14 + m, 0, rl - 14 - m);
        if (send(k, reply, rl, 0) < 0) c.dropped++;
      }
    }
    // Flow frames: verify each, and reflect it (MACs, addresses and ports swapped: the same flow).
    int out = 0;
    n = listen ? recvmmsg(s, rm, BATCH, MSG_DONTWAIT, NULL) : 0;
    for (int i = 0; i < n; i++) {
      if (from[i].sll_pkttype == PACKET_OUTGOING) continue;  // our own sends
      unsigned char *b = rbuf[i];
      int len = rm[i].msg_len, v = check_flow(b, len);
      if (v == 0) { c.foreign++; continue; }
      if (v < 0) { c.corrupt++; continue; }
      c.valid++, c.bytes += len;
      swap(b, b + 6, 6), swap(b + 26, b + 30, 4), swap(b + 34, b + 36, 2);
      set_msg(&tm[out], &tiov[out], b, len, NULL);
      out++;
    }
    if (out) {
      int r = sendmmsg(s, tm, out, 0);
      r = r < 0 ? 0 : r;
      c.reflected += r, c.dropped += out - r;
    }
    // Blast: the next batch that is due.
    if (blast_sent < to_blast) {
      long due = pps > 0 ? (long)((now() - t_blast) * pps) + 1 : to_blast;
      int m = 0;
      for (; m < BATCH && blast_sent + m < to_blast && blast_sent + m < due; m++) {
        long q = blast_sent + m;
        write_flow(tbuf[m], size, (uint32_t)q, first + q % flows, guest, mac);
        set_msg(&tm[m], &tiov[m], tbuf[m], size, NULL);
      }
      if (m) {
        int r = sendmmsg(s, tm, m, 0);
        if (r < 0 && errno != ENOBUFS && errno != EAGAIN) die("sendmmsg");
        if (r > 0) blast_sent += r, c.blasted += r;
      }
    }
  }
  count_sockdrops(s);
  printf("{\"valid\":%ld,\"corrupt\":%ld,\"foreign\":%ld,\"bytes\":%ld,\"reflected\":%ld,\"blasted\":%ld,"
         "\"dropped\":%ld,\"socketDrops\":%ld}\n",
         c.valid, c.corrupt, c.foreign, c.bytes, c.reflected, c.blasted, c.dropped, c.sockdrops);
  return 0;
}
