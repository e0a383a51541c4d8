// Test-only C for `deno bench`: the split-virtqueue ring work of one TX batch and one RX batch (virtio 1.2 §2.7),
// driver and device side both, written the way a C driver does it, so bench/ring.bench.ts can report pvdrv's
// TypeScript ring path as a ratio to C doing the same work in the same run. Not part of the runtime.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QSIZE 256
#define SLOT 2048
#define HDR 12

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

struct ring {
  struct desc desc[QSIZE];
  uint16_t avail_flags, avail_idx, avail_ring[QSIZE], used_event;
  uint16_t used_flags, used_idx;
  struct { uint32_t id, len; } used_ring[QSIZE];
  uint16_t avail_event;
  // driver state
  uint16_t free_list[QSIZE], nfree, next_avail, last_used, kicked, in_flight;
  uint8_t owned[QSIZE];
  uint32_t cap[QSIZE];
  uint32_t buf_of[QSIZE];  // which pool slot a head carries
  // device state
  uint16_t dev_last_avail, dev_used;
  // the pool: frames and a free stack of slot indexes
  uint8_t *pool;
  uint32_t pool_free[QSIZE], npool;
  uint64_t notifications, completed, errors;
  uint32_t rx_seen;  // what the RX loop read of each frame, kept so the compiler cannot drop the read
};

struct ring *ring_new(void) {
  struct ring *r = calloc(1, sizeof *r);
  r->pool = aligned_alloc(4096, (size_t)QSIZE * SLOT);
  memset(r->pool, 0, (size_t)QSIZE * SLOT);
  for (int i = 0; i < QSIZE; i++) r->free_list[i] = QSIZE - 1 - i, r->pool_free[i] = QSIZE - 1 - i;
  r->nfree = QSIZE, r->npool = QSIZE;
  return r;
}

void ring_free(struct ring *r) {
  free(r->pool);
  free(r);
}

static inline int need_event(uint16_t ev, uint16_t new_idx, uint16_t old) {
  return (uint16_t)(new_idx - ev - 1) < (uint16_t)(new_idx - old);
}

// Driver: reclaim completed heads (checking each id and length, as pvdrv does), returning their slots.
static int reclaim(struct ring *r) {
  uint16_t idx = __atomic_load_n(&r->used_idx, __ATOMIC_ACQUIRE);
  uint16_t n = idx - r->last_used;
  if (n > r->in_flight) return r->errors++, -1;
  for (; n; n--) {
    uint32_t slot = r->last_used & (QSIZE - 1), id = r->used_ring[slot].id, len = r->used_ring[slot].len;
    if (id >= QSIZE || !r->owned[id] || len > r->cap[id]) return r->errors++, -1;
    r->owned[id] = 0, r->in_flight--;
    r->free_list[r->nfree++] = id;
    r->pool_free[r->npool++] = r->buf_of[id];
    r->last_used++;
    r->completed++;
  }
  return 0;
}

// Device: complete every published buffer with `len`.
static void device_complete(struct ring *r, uint32_t len) {
  uint16_t end = __atomic_load_n(&r->avail_idx, __ATOMIC_ACQUIRE);
  while (r->dev_last_avail != end) {
    uint32_t slot = r->dev_used & (QSIZE - 1);
    r->used_ring[slot].id = r->avail_ring[r->dev_last_avail & (QSIZE - 1)];
    r->used_ring[slot].len = len;
    r->dev_last_avail++, r->dev_used++;
  }
  __atomic_store_n(&r->used_idx, r->dev_used, __ATOMIC_RELEASE);
}

// Driver: queue `n` frames of `len` bytes (a 12-byte virtio-net header each), publish, kick if asked.
static int post(struct ring *r, int n, uint32_t len, int device_writable) {
  if (r->nfree < n) reclaim(r);
  int k = 0;
  for (; k < n && r->nfree && r->npool; k++) {
    uint32_t b = r->pool_free[--r->npool];
    uint8_t *frame = r->pool + (size_t)b * SLOT;
    if (!device_writable) memset(frame, 0, HDR);  // the TX header
    uint16_t head = r->free_list[--r->nfree];
    r->desc[head] = (struct desc){(uint64_t)b * SLOT, device_writable ? SLOT : HDR + len, device_writable ? 2 : 0, 0};
    r->owned[head] = 1, r->cap[head] = device_writable ? SLOT : HDR + len, r->buf_of[head] = b;
    r->avail_ring[r->next_avail++ & (QSIZE - 1)] = head;
    r->in_flight++;
  }
  uint16_t old = r->kicked;
  __atomic_store_n(&r->avail_idx, r->next_avail, __ATOMIC_SEQ_CST);
  r->kicked = r->next_avail;
  if (need_event(r->avail_event, r->next_avail, old)) r->notifications++;
  return k;
}

// One TX batch: post `n` frames, the device completes them, the next batch reclaims them.
int ring_tx_batch(struct ring *r, int n, uint32_t len) {
  int k = post(r, n, len, 0);
  device_complete(r, 0);
  return k;
}

// One RX batch: the device fills `n` posted buffers with `len`-byte frames; the driver takes them (checking
// each), hands them to the "application" (reads the frame length) and reposts the buffers.
int ring_rx_batch(struct ring *r, int n, uint32_t len) {
  if (r->in_flight == 0) post(r, QSIZE, 0, 1);
  device_complete(r, HDR + len);
  uint16_t idx = __atomic_load_n(&r->used_idx, __ATOMIC_ACQUIRE);
  uint16_t avail = idx - r->last_used;
  if (avail > r->in_flight) return -1;
  int got = 0;
  uint32_t sink = 0;
  for (; got < n && avail; got++, avail--) {
    uint32_t slot = r->last_used & (QSIZE - 1), id = r->used_ring[slot].id, l = r->used_ring[slot].len;
    if (id >= QSIZE || !r->owned[id] || l > r->cap[id] || l < HDR + 14) return -1;
    r->owned[id] = 0, r->in_flight--;
    r->free_list[r->nfree++] = id;
    sink += r->pool[(size_t)r->buf_of[id] * SLOT + HDR];
    r->pool_free[r->npool++] = r->buf_of[id];
    r->last_used++;
  }
  r->rx_seen += sink;  // a driver reads each frame (pvdrv: the header's flags); unkept, -O2 drops the loads
  post(r, got, 0, 1);
  return got;
}

// ---- the device side alone, as a vhost-user backend does it (bench/vhost_device.bench.ts) ----
// The guest's descriptors are static (head i: buffer i); a batch is the guest publishing `n` heads and the
// device taking them: TX copies each frame out of guest memory behind its header into a host buffer, checking
// head, flags, link and range; RX writes a header and a frame into each published buffer. Then used entries and
// the EVENT_IDX decision.
static uint8_t host_pool[QSIZE * SLOT];

static int backend_take(struct ring *r, int n, uint32_t len, int rx) {
  for (int i = 0; i < n; i++, r->next_avail++) {
    r->avail_ring[r->next_avail & (QSIZE - 1)] = (uint16_t)(r->next_avail & (QSIZE / 2 - 1));
  }
  __atomic_store_n(&r->avail_idx, r->next_avail, __ATOMIC_RELEASE);
  uint16_t end = __atomic_load_n(&r->avail_idx, __ATOMIC_ACQUIRE), old = r->dev_used;
  if ((uint16_t)(end - r->dev_last_avail) > QSIZE) return -1;
  int got = 0;
  while (r->dev_last_avail != end) {
    uint16_t head = r->avail_ring[r->dev_last_avail & (QSIZE - 1)];
    if (head >= QSIZE) return -1;
    struct desc d = r->desc[head];
    if (d.flags & 4) return -1;                         // indirect
    if ((d.flags & 2) != (rx ? 2 : 0)) return -1;       // direction
    if (d.addr + d.len > (uint64_t)QSIZE * SLOT) return -1;
    uint8_t *g = r->pool + d.addr, *h = host_pool + (size_t)(got & (QSIZE - 1)) * SLOT;
    uint32_t wrote = 0;
    if (rx) {
      if (d.len < HDR + len) return -1;
      memset(g, 0, HDR);
      g[10] = 1;  // num_buffers
      memcpy(g + HDR, h, len);
      wrote = HDR + len;
    } else {
      if (d.len < HDR + 14 || g[1] != 0) return -1;   // GSO never offered
      memcpy(h, g + HDR, d.len - HDR);
    }
    uint32_t slot = r->dev_used & (QSIZE - 1);
    r->used_ring[slot].id = head;
    r->used_ring[slot].len = wrote;
    r->dev_last_avail++, r->dev_used++, got++;
  }
  __atomic_store_n(&r->used_idx, r->dev_used, __ATOMIC_RELEASE);
  if (need_event(r->used_event, r->dev_used, old)) r->notifications++;
  return got;
}

// Static descriptors for the backend batches: head i carries buffer i, TX frames of `len` bytes, RX room of SLOT.
void ring_backend_setup(struct ring *r, uint32_t len, int rx) {
  for (int i = 0; i < QSIZE; i++) {
    r->desc[i] = (struct desc){(uint64_t)i * SLOT, rx ? SLOT : HDR + len, rx ? 2 : 0, 0};
    if (!rx) memset(r->pool + (size_t)i * SLOT, 0, HDR);
  }
}

int ring_backend_tx(struct ring *r, int n, uint32_t len) { return backend_take(r, n, len, 0); }
int ring_backend_rx(struct ring *r, int n, uint32_t len) { return backend_take(r, n, len, 1); }
