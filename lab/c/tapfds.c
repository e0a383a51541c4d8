// tapfds: start QEMU on a multi-queue TAP device that lives in another network namespace. It enters the namespace
// of process NSPID, creates IFNAME (IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE) with QUEUES queues (one fd each, in
// queue order, so tun's queue i is QEMU's queue i), turns IPv6 off on it and brings it up, returns to its own
// namespace and execs the command with every "@FDS@" in its arguments replaced by the fd list ("3:4:5:6").
// Nothing is created in the caller's namespace; the device goes away when QEMU closes the fds.
//
//   tapfds NSPID IFNAME QUEUES COMMAND [ARGS...]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXQ 16

static void die(const char *what) {
  fprintf(stderr, "tapfds: %s: %s\n", what, strerror(errno));
  exit(125);
}

// Set disable_ipv6 for `dev` in the current namespace (the sysctl is absent when the kernel has no IPv6).
static void ipv6_off(const char *dev) {
  char path[128];
  snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", dev);
  int f = open(path, O_WRONLY);
  if (f < 0) return;
  if (write(f, "1", 1) != 1) die(path);
  close(f);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: tapfds NSPID IFNAME QUEUES COMMAND [ARGS...]\n");
    return 125;
  }
  int queues = atoi(argv[3]);
  if (queues < 1 || queues > MAXQ || strlen(argv[2]) >= IFNAMSIZ) {
    fprintf(stderr, "tapfds: QUEUES must be 1..%d and IFNAME shorter than %d\n", MAXQ, IFNAMSIZ);
    return 125;
  }
  char nspath[64];
  snprintf(nspath, sizeof nspath, "/proc/%d/ns/net", atoi(argv[1]));
  int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), target = open(nspath, O_RDONLY | O_CLOEXEC);
  if (self < 0 || target < 0) die(nspath);
  if (setns(target, CLONE_NEWNET) < 0) die("setns (target)");
  // /proc/sys/net follows the reader's namespace: devices made from here on start with IPv6 off (no router
  // solicitations or DAD frames on the guest's wire).
  ipv6_off("default");
  char fds[MAXQ * 12] = "";
  for (int q = 0; q < queues; q++) {
    int fd = open("/dev/net/tun", O_RDWR);  // inherited by QEMU: no O_CLOEXEC
    if (fd < 0) die("/dev/net/tun");
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[2]);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    snprintf(fds + strlen(fds), sizeof fds - strlen(fds), "%s%d", q ? ":" : "", fd);
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq up = {0};
  snprintf(up.ifr_name, IFNAMSIZ, "%s", argv[2]);
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &up) < 0) die("SIOCGIFFLAGS");
  up.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &up) < 0) die("SIOCSIFFLAGS");
  close(s);
  if (setns(self, CLONE_NEWNET) < 0) die("setns (back)");
  char **args = argv + 4;
  for (int i = 0; args[i]; i++) {
    char *at = strstr(args[i], "@FDS@");
    if (!at) continue;
    size_t n = strlen(args[i]) - 5 + strlen(fds) + 1;
    char *a = malloc(n);
    if (!a) die("malloc");
    snprintf(a, n, "%.*s%s%s", (int)(at - args[i]), args[i], fds, at + 5);
    args[i] = a;
  }
  execvp(args[0], args);
  die(args[0]);
}
