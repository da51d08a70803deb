/*
 * virtio.c - multiboot ELF32 guest (virtio.elf, entry in mb_hello_entry.S)
 * with a minimal virtio-mmio (version 2) driver: it scans the windows from
 * 0xfeb00000 (512 bytes apart, where hvsh and QEMU's microvm put them),
 * sets a device up, and drives split virtqueues by polling the used ring
 * (no interrupts). Paging is off, so buffers' addresses are physical.
 *
 * The multiboot command line picks what it does (first word), e.g.
 * `blk`, `blk-ev`, `rng`, `bench 4096 500`, `loop`, `oob`, `qsize`, `early`:
 *
 *   blk      block device: GET_ID, read sector 0, write sector 8 with a
 *            pattern, read it back, flush. Prints
 *            "id=<serial> s0=<first 8 bytes hex> rw=ok flush=0 done\n"
 *   blk-ev   the same with VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC
 *            negotiated, every request in an indirect table
 *   rng      entropy: asks for 64 bytes; prints "rng=64 nonzero=yes\n"
 *   bench S N  N sequential reads of S bytes (S a multiple of 4096, ≤ 65536)
 *            from sector 0 on, wrapping at the disk's end; prints "bench done\n"
 *   loop     descriptors 0 and 1 link to each other
 *   oob      a read into a buffer at 0xfffff000, outside RAM
 *   qsize    queue size 6 (not a power of two)
 *   vsock    socket device (id 19, three queues): serves one connection
 *            on guest port 52 that the host opens with "CONNECT 52\n":
 *            answers the REQUEST, echoes the bytes uppercased, and on the
 *            host's SHUTDOWN closes with SHUTDOWN(3) and waits for the RST.
 *            Prints "vsock cid=<cid> request 2:<port> -> 52\n",
 *            "echo <bytes>\n", "shutdown flags=<f>\n", "rst\n", "vsock done\n"
 *   early    notify before DRIVER_OK
 *            each hostile mode then prints "status=<hex> status-byte=<hex>\n"
 *            (the device status after the notify, and the request's status
 *            byte, left at 0xff when the device wrote nothing), resets the
 *            device, runs one good read and prints "recovered s0=<hex>\n".
 *
 * Host test expects: the lines above, then exit V=0 (status 1); a missing
 * device prints "no virtio device <id>\n" and exits V=1 (status 3).
 */
#include "pc.h"

#define MMIO_BASE 0xfeb00000u
#define MMIO_STRIDE 0x200u
#define MMIO_SLOTS 32

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_DRIVER_LOW 0x090
#define R_QUEUE_DRIVER_HIGH 0x094
#define R_QUEUE_DEVICE_LOW 0x0a0
#define R_QUEUE_DEVICE_HIGH 0x0a4
#define R_CONFIG 0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

#define F_INDIRECT_DESC (1u << 28)
#define F_EVENT_IDX (1u << 29)

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4

#define QSIZE 8

struct desc {
  unsigned long long addr;
  unsigned int len;
  unsigned short flags;
  unsigned short next;
} __attribute__((packed));

/* The rings of the one queue used, each on its own page. */
static struct desc descs[QSIZE] __attribute__((aligned(4096)));
static volatile unsigned short avail[2 + QSIZE + 1] __attribute__((aligned(4096)));
static volatile unsigned int used[1 + 2 * QSIZE + 1] __attribute__((aligned(4096)));
static struct desc indirect[4] __attribute__((aligned(16)));

struct blk_req {
  unsigned int type;
  unsigned int reserved;
  unsigned long long sector;
} __attribute__((packed));

static struct blk_req req;
static volatile unsigned char status_byte;
static unsigned char data[65536] __attribute__((aligned(4096)));

static unsigned int base;
static unsigned short avail_idx;
static unsigned short used_seen;
static int use_indirect;

static unsigned int rd(unsigned int reg) { return mmio_read32(base + reg); }
static void wr(unsigned int reg, unsigned int value) { mmio_write32(base + reg, value); }

static int word_is(const char *text, const char *word) {
  while (*word && *text == *word) text++, word++;
  return *word == 0 && (*text == 0 || *text == ' ');
}

static const char *next_word(const char *s) {
  while (*s && *s != ' ') s++;
  while (*s == ' ') s++;
  return s;
}

static unsigned long parse_dec(const char *s) {
  unsigned long v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + (unsigned long)(*s++ - '0');
  return v;
}

static int find_device(unsigned int id) {
  for (unsigned int i = 0; i < MMIO_SLOTS; i++) {
    unsigned int at = MMIO_BASE + i * MMIO_STRIDE;
    if (mmio_read32(at + R_MAGIC) == 0x74726976 && mmio_read32(at + R_VERSION) == 2 &&
        mmio_read32(at + R_DEVICE_ID) == id) {
      base = at;
      return 1;
    }
  }
  return 0;
}

/* Status, features and queue 0 of `size` entries; DRIVER_OK only when `ok`. */
static void setup(unsigned int features, unsigned int size, int ok) {
  wr(R_STATUS, 0);
  wr(R_STATUS, S_ACKNOWLEDGE);
  wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
  wr(R_DEVICE_FEATURES_SEL, 0);
  unsigned int offered = rd(R_DEVICE_FEATURES);
  wr(R_DRIVER_FEATURES_SEL, 0);
  wr(R_DRIVER_FEATURES, features & offered);
  wr(R_DRIVER_FEATURES_SEL, 1);
  wr(R_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 */
  wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
  wr(R_QUEUE_SEL, 0);
  wr(R_QUEUE_NUM, size);
  wr(R_QUEUE_DESC_LOW, (unsigned int)descs);
  wr(R_QUEUE_DESC_HIGH, 0);
  wr(R_QUEUE_DRIVER_LOW, (unsigned int)avail);
  wr(R_QUEUE_DRIVER_HIGH, 0);
  wr(R_QUEUE_DEVICE_LOW, (unsigned int)used);
  wr(R_QUEUE_DEVICE_HIGH, 0);
  for (unsigned int i = 0; i < 2 + QSIZE + 1; i++) avail[i] = 0;
  for (unsigned int i = 0; i < 1 + 2 * QSIZE + 1; i++) used[i] = 0;
  avail_idx = 0;
  used_seen = 0;
  wr(R_QUEUE_READY, 1);
  if (ok) wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* Makes descriptor chain `head` available and notifies. */
static void submit(unsigned short head) {
  avail[2 + (avail_idx % QSIZE)] = head;
  __asm__ volatile("" ::: "memory");
  avail_idx++;
  avail[1] = avail_idx;
  __asm__ volatile("" ::: "memory");
  wr(R_QUEUE_NOTIFY, 0);
}

/* Waits for the device to use one chain (bounded, in case the device has given up). */
static int wait_used(void) {
  for (unsigned long spin = 0; spin < 2000000; spin++) {
    unsigned short idx = (unsigned short)(used[0] >> 16);
    if (idx != used_seen) {
      used_seen++;
      wr(R_INTERRUPT_ACK, rd(R_INTERRUPT_STATUS));
      return 1;
    }
    if ((spin & 1023) == 1023 && (rd(R_STATUS) & 0x40)) return 0; /* DEVICE_NEEDS_RESET */
  }
  return 0;
}

static void fill(struct desc *d, unsigned long long addr, unsigned int len, unsigned short flags, unsigned short next) {
  d->addr = addr;
  d->len = len;
  d->flags = flags;
  d->next = next;
}

/* One block request: header, `len` bytes of data (device-writable for reads), status. */
static int blk_request(unsigned int type, unsigned long long sector, void *buffer, unsigned int len) {
  req.type = type;
  req.reserved = 0;
  req.sector = sector;
  status_byte = 0xff;
  unsigned short data_flags = type == 1 ? 0 : DESC_F_WRITE;
  struct desc *table = use_indirect ? indirect : descs;
  unsigned short n = 0;
  fill(&table[n], (unsigned int)&req, sizeof req, DESC_F_NEXT, (unsigned short)(n + 1));
  n++;
  if (len) {
    fill(&table[n], (unsigned int)buffer, len, (unsigned short)(data_flags | DESC_F_NEXT), (unsigned short)(n + 1));
    n++;
  }
  fill(&table[n], (unsigned int)&status_byte, 1, DESC_F_WRITE, 0);
  if (use_indirect) fill(&descs[0], (unsigned int)indirect, (unsigned int)((n + 1) * sizeof(struct desc)), DESC_F_INDIRECT, 0);
  submit(0);
  if (!wait_used()) return -1;
  return status_byte;
}

static void put_bytes(const unsigned char *p, int n) {
  for (int i = 0; i < n; i++) put_hex(p[i], 2);
}

static void blk_test(int event_idx) {
  setup(event_idx ? (F_EVENT_IDX | F_INDIRECT_DESC) : 0, QSIZE, 1);
  use_indirect = event_idx;
  unsigned char id[21];
  for (int i = 0; i < 21; i++) id[i] = 0;
  int s = blk_request(8, 0, id, 20);
  puts("id=");
  puts(s == 0 ? (const char *)id : "?");
  s = blk_request(0, 0, data, 4096);
  puts(" s0=");
  if (s == 0) put_bytes(data, 8); else puts("error");
  for (int i = 0; i < 4096; i++) data[i] = (unsigned char)(i * 7 + 3);
  int w = blk_request(1, 8, data, 4096);
  for (int i = 0; i < 4096; i++) data[i] = 0;
  int r = blk_request(0, 8, data, 4096);
  int same = w == 0 && r == 0;
  for (int i = 0; i < 4096 && same; i++) same = data[i] == (unsigned char)(i * 7 + 3);
  puts(same ? " rw=ok" : " rw=bad");
  puts(" flush=");
  put_dec((unsigned long)blk_request(4, 0, 0, 0));
  puts(" done\n");
}

static void rng_test(void) {
  setup(0, QSIZE, 1);
  for (int i = 0; i < 64; i++) data[i] = 0;
  fill(&descs[0], (unsigned int)data, 64, DESC_F_WRITE, 0);
  submit(0);
  if (!wait_used()) {
    puts("rng=none\n");
    return;
  }
  int nonzero = 0;
  for (int i = 0; i < 64; i++) nonzero |= data[i];
  puts("rng=");
  put_dec(used[2]); /* used ring entry 0: id at [1], len at [2] */
  puts(nonzero ? " nonzero=yes\n" : " nonzero=no\n");
}

static void bench(unsigned long size, unsigned long count) {
  setup(0, QSIZE, 1);
  unsigned long long capacity = (unsigned long long)rd(R_CONFIG) | ((unsigned long long)rd(R_CONFIG + 4) << 32);
  unsigned long long sectors = size / 512, sector = 0;
  for (unsigned long i = 0; i < count; i++) {
    if (sector + sectors > capacity) sector = 0;
    if (blk_request(0, sector, data, (unsigned int)size) != 0) {
      puts("bench error\n");
      return;
    }
    sector += sectors;
  }
  puts("bench done\n");
}

/* ---- vsock: rx (0), tx (1) and event (2) queues, each with its own rings */

#define VQ_SIZE 8
#define VQ_RX_BUFFERS 4
#define VSOCK_HDR 44
#define VSOCK_PAYLOAD 256

struct vsock_hdr {
  unsigned long long src_cid;
  unsigned long long dst_cid;
  unsigned int src_port;
  unsigned int dst_port;
  unsigned int len;
  unsigned short type;
  unsigned short op;
  unsigned int flags;
  unsigned int buf_alloc;
  unsigned int fwd_cnt;
} __attribute__((packed));

static struct desc vq_desc[3][256] __attribute__((aligned(4096))); /* a page each */
static volatile unsigned short vq_avail[3][2048] __attribute__((aligned(4096)));
static volatile unsigned int vq_used[3][1024] __attribute__((aligned(4096)));
static unsigned short vq_avail_idx[3];
static unsigned short vq_used_seen[3];
static unsigned char vs_rx[VQ_RX_BUFFERS][VSOCK_HDR + VSOCK_PAYLOAD] __attribute__((aligned(16)));
static unsigned char vs_tx[VSOCK_HDR + VSOCK_PAYLOAD] __attribute__((aligned(16)));
static unsigned long long vs_cid;
static unsigned int vs_host_port;
static unsigned int vs_fwd_cnt;

static void vq_setup(unsigned int q) {
  wr(R_QUEUE_SEL, q);
  wr(R_QUEUE_NUM, VQ_SIZE);
  wr(R_QUEUE_DESC_LOW, (unsigned int)vq_desc[q]);
  wr(R_QUEUE_DESC_HIGH, 0);
  wr(R_QUEUE_DRIVER_LOW, (unsigned int)vq_avail[q]);
  wr(R_QUEUE_DRIVER_HIGH, 0);
  wr(R_QUEUE_DEVICE_LOW, (unsigned int)vq_used[q]);
  wr(R_QUEUE_DEVICE_HIGH, 0);
  wr(R_QUEUE_READY, 1);
}

static void vq_submit(unsigned int q, unsigned short head) {
  vq_avail[q][2 + (vq_avail_idx[q] % VQ_SIZE)] = head;
  __asm__ volatile("" ::: "memory");
  vq_avail_idx[q]++;
  vq_avail[q][1] = vq_avail_idx[q];
  __asm__ volatile("" ::: "memory");
  wr(R_QUEUE_NOTIFY, q);
}

/* Waits for a used entry on queue q; each turn reads a register, so each is an exit the host can use. */
static int vq_wait(unsigned int q, unsigned int *id) {
  for (unsigned long spin = 0; spin < 5000000; spin++) {
    if ((unsigned short)(vq_used[q][0] >> 16) != vq_used_seen[q]) {
      *id = vq_used[q][1 + 2 * (vq_used_seen[q] % VQ_SIZE)];
      vq_used_seen[q]++;
      return 1;
    }
    unsigned int isr = rd(R_INTERRUPT_STATUS);
    if (isr) wr(R_INTERRUPT_ACK, isr);
    if (rd(R_STATUS) & 0x40) return 0; /* DEVICE_NEEDS_RESET */
  }
  return 0;
}

/* The next packet the device put in an rx buffer (copied to `out`), the buffer given back at once. */
static int vs_receive(struct vsock_hdr *out, unsigned char *payload) {
  unsigned int id;
  if (!vq_wait(0, &id) || id >= VQ_RX_BUFFERS) return 0;
  const struct vsock_hdr *h = (const struct vsock_hdr *)vs_rx[id];
  *out = *h;
  for (unsigned int i = 0; i < h->len && i < VSOCK_PAYLOAD; i++) payload[i] = vs_rx[id][VSOCK_HDR + i];
  vq_submit(0, (unsigned short)id);
  return 1;
}

static int vs_send(unsigned short op, unsigned int flags, const unsigned char *payload, unsigned int len) {
  struct vsock_hdr *h = (struct vsock_hdr *)vs_tx;
  h->src_cid = vs_cid;
  h->dst_cid = 2;
  h->src_port = 52;
  h->dst_port = vs_host_port;
  h->len = len;
  h->type = 1;
  h->op = op;
  h->flags = flags;
  h->buf_alloc = VSOCK_PAYLOAD * VQ_RX_BUFFERS;
  h->fwd_cnt = vs_fwd_cnt;
  for (unsigned int i = 0; i < len; i++) vs_tx[VSOCK_HDR + i] = payload[i];
  fill(&vq_desc[1][0], (unsigned int)vs_tx, VSOCK_HDR + len, 0, 0);
  vq_submit(1, 0);
  unsigned int id;
  return vq_wait(1, &id);
}

static void vsock_test(void) {
  wr(R_STATUS, 0);
  wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
  wr(R_DRIVER_FEATURES_SEL, 0);
  wr(R_DRIVER_FEATURES, 0);
  wr(R_DRIVER_FEATURES_SEL, 1);
  wr(R_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 */
  wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
  for (unsigned int q = 0; q < 3; q++) vq_setup(q);
  wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  vs_cid = (unsigned long long)rd(R_CONFIG) | ((unsigned long long)rd(R_CONFIG + 4) << 32);
  for (unsigned short i = 0; i < VQ_RX_BUFFERS; i++) {
    fill(&vq_desc[0][i], (unsigned int)vs_rx[i], VSOCK_HDR + VSOCK_PAYLOAD, DESC_F_WRITE, 0);
    vq_submit(0, i);
  }
  struct vsock_hdr h;
  unsigned char payload[VSOCK_PAYLOAD];
  if (!vs_receive(&h, payload) || h.op != 1 || h.dst_port != 52) {
    puts("vsock no request\n");
    return;
  }
  vs_host_port = h.src_port;
  puts("vsock cid=");
  put_dec((unsigned long)vs_cid);
  puts(" request 2:");
  put_dec(h.src_port);
  puts(" -> 52\n");
  vs_send(2, 0, 0, 0); /* RESPONSE */
  /* Echo data until the host shuts down. */
  for (;;) {
    if (!vs_receive(&h, payload)) {
      puts("vsock stalled\n");
      return;
    }
    if (h.op == 5) { /* RW */
      puts("echo ");
      for (unsigned int i = 0; i < h.len; i++) {
        putc((char)payload[i]);
        if (payload[i] >= 'a' && payload[i] <= 'z') payload[i] = (unsigned char)(payload[i] - 32);
      }
      putc('\n');
      vs_fwd_cnt += h.len;
      vs_send(5, 0, payload, h.len);
    } else if (h.op == 4) { /* SHUTDOWN */
      puts("shutdown flags=");
      put_dec(h.flags);
      putc('\n');
      break;
    }
  }
  vs_send(4, 3, 0, 0); /* SHUTDOWN, both ways: the device answers RST */
  while (vs_receive(&h, payload) && h.op != 3) {
  }
  puts(h.op == 3 ? "rst\nvsock done\n" : "vsock no rst\n");
}

static void hostile(const char *mode) {
  status_byte = 0xff;
  if (word_is(mode, "qsize")) {
    setup(0, 6, 1);
    fill(&descs[0], (unsigned int)data, 512, DESC_F_WRITE, 0);
    submit(0);
  } else if (word_is(mode, "early")) {
    setup(0, QSIZE, 0);
    fill(&descs[0], (unsigned int)data, 512, DESC_F_WRITE, 0);
    submit(0);
  } else {
    setup(0, QSIZE, 1);
    req.type = 0;
    req.sector = 0;
    status_byte = 0xff;
    if (word_is(mode, "loop")) {
      fill(&descs[0], (unsigned int)&req, sizeof req, DESC_F_NEXT, 1);
      fill(&descs[1], (unsigned int)&req, sizeof req, DESC_F_NEXT, 0); /* readable both: only the loop is wrong */
    } else { /* oob */
      fill(&descs[0], (unsigned int)&req, sizeof req, DESC_F_NEXT, 1);
      fill(&descs[1], 0xfffff000u, 4096, DESC_F_WRITE | DESC_F_NEXT, 2);
      fill(&descs[2], (unsigned int)&status_byte, 1, DESC_F_WRITE, 0);
    }
    submit(0);
  }
  puts("status=");
  put_hex(rd(R_STATUS), 2);
  puts(" status-byte=");
  put_hex(status_byte, 2);
  putc('\n');
  use_indirect = 0;
  setup(0, QSIZE, 1);
  int s = blk_request(0, 0, data, 512);
  puts("recovered s0=");
  if (s == 0) put_bytes(data, 8); else puts("error");
  putc('\n');
}

void mb_main(unsigned int magic, unsigned int info);

void mb_main(unsigned int magic, unsigned int info) {
  const char *cmdline = "";
  if (magic == 0x2BADB002 && (*(unsigned int *)info & 4)) cmdline = (const char *)*(unsigned int *)(info + 16);
  /* QEMU passes the kernel's path first: skip words until a known mode. */
  static const char *modes[] = {"blk", "blk-ev", "rng", "vsock", "bench", "loop", "oob", "qsize", "early", 0};
  for (;;) {
    int known = 0;
    for (int i = 0; modes[i]; i++) known |= word_is(cmdline, modes[i]);
    if (known || *cmdline == 0) break;
    cmdline = next_word(cmdline);
  }
  unsigned int want = word_is(cmdline, "rng") ? 4 : word_is(cmdline, "vsock") ? 19 : 2;
  if (!find_device(want)) {
    puts("no virtio device ");
    put_dec(want);
    putc('\n');
    guest_exit(1);
  }
  if (word_is(cmdline, "blk")) blk_test(0);
  else if (word_is(cmdline, "blk-ev")) blk_test(1);
  else if (word_is(cmdline, "rng")) rng_test();
  else if (word_is(cmdline, "vsock")) vsock_test();
  else if (word_is(cmdline, "bench")) {
    const char *size = next_word(cmdline);
    bench(parse_dec(size), parse_dec(next_word(size)));
  } else hostile(cmdline);
  guest_exit(0);
}
