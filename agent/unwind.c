/* The agent's cached DWARF unwinder for x86-64 (see unwind.h).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <errno.h>
#include <link.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "allocprof/atomics.h"
#include "allocprof/clock.h"
#include "unwind.h"

/* ---- checked reads (unwind.h) ---------------------------------------------------------- */

#define PAGE_4K 4096ull

/* [addr, addr + 8) inside [lo, hi); unsigned differences, so no bound can wrap. */
static inline bool in_range(uint64_t addr, uint64_t lo, uint64_t hi)
{
        return hi > lo && hi - lo >= 8 && addr - lo <= hi - lo - 8;
}

/* The word at addr, if it can be read.  Outside the known ranges: process_vm_readv(2) on
 * ourselves reads it or says EFAULT (unmapped, or mapped without read permission, like a
 * guard page); where seccomp forbids that call (containers without CAP_SYS_PTRACE),
 * mincore(2) tells at least that the page is mapped. */
bool ap_unwind_read_word(struct ap_unwind_reader *r, uint64_t addr, uint64_t *val)
{
        if (addr & 7)
                return false;
        if (in_range(addr, r->lo, r->hi) || in_range(addr, r->ok_lo, r->ok_hi)) {
                *val = *(const uint64_t *)(uintptr_t)addr;
                return true;
        }
        uint64_t page = addr & ~(PAGE_4K - 1); /* 8-byte aligned: within one page */
        if (page == 0)
                return false;
        uint64_t v;
        struct iovec local = {&v, sizeof(v)}, remote = {(void *)(uintptr_t)addr, sizeof(v)};
        ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (n != (ssize_t)sizeof(v)) {
                unsigned char vec;
                if (n >= 0 || errno == EFAULT ||
                    mincore((void *)(uintptr_t)page, PAGE_4K, &vec) != 0)
                        return false;
                v = *(const uint64_t *)(uintptr_t)addr;
        }
        if (r->ok_hi > r->ok_lo && page == r->ok_hi)
                r->ok_hi = page + PAGE_4K;
        else if (r->ok_hi > r->ok_lo && page + PAGE_4K == r->ok_lo)
                r->ok_lo = page;
        else
                r->ok_lo = page, r->ok_hi = page + PAGE_4K;
        *val = v;
        return true;
}

#if defined(__x86_64__)

/* ---- modules --------------------------------------------------------------------------
 * A rule is worked out from the loader's current list of modules (dl_iterate_phdr, as
 * libunwind does on its cache misses): a library unloaded and another loaded at the same
 * place is never read through a stale entry.  Only on a cache miss. */
struct find_module {
        uint64_t pc;
        uint64_t eh_hdr;
        uint64_t seg_end; /* end of the loaded segment that holds pc */
        bool found;
};

static int find_module_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        struct find_module *f = arg;
        bool inside = false;
        uint64_t eh = 0;
        (void)size;
        for (int i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
                uint64_t a = info->dlpi_addr + ph->p_vaddr;
                if (ph->p_type == PT_LOAD && f->pc >= a && f->pc < a + ph->p_memsz) {
                        inside = true;
                        f->seg_end = a + ph->p_memsz;
                } else if (ph->p_type == PT_GNU_EH_FRAME) {
                        eh = a;
                }
        }
        if (!inside)
                return 0;
        f->found = true;
        f->eh_hdr = eh;
        return 1; /* stop */
}

/* ---- the rule cache ---------------------------------------------------------------------
 * Direct-mapped, one 64-bit word per cell, read and written with relaxed atomics: a cell
 * holds a complete rule or another address's rule, never half of one, and the tag of the
 * address it belongs to is in the word itself.  Two threads that fill the same cell at
 * once simply leave one of their rules.
 *
 *   bit 0       valid
 *   bit 1       end: the return address is undefined (the outermost frame)
 *   bit 2       the CFA is rbp + offset (else rsp + offset)
 *   bit 3       rbp is saved at CFA + 8 * slot (else it keeps its value)
 *   bits 4-23   CFA offset in bytes (0 with `end` clear: no rule the cache can hold)
 *   bits 24-33  rbp slot, signed
 *   bits 34-63  tag: 30 bits of the address's hash (bits 4-33; the indexes use the top
 *               bits), so two addresses share a rule only if 30 more hash bits agree
 *
 * `end` with `CFA is rbp` (which no ordinary rule has) marks the kernel's signal
 * trampoline: the caller's registers are in the signal frame (R_SIGNAL). */
#define RULE_BITS 16
#define RULE_CELLS (1u << RULE_BITS)
#define R_VALID 1ull
#define R_END 2ull
#define R_CFA_RBP 4ull
#define R_RBP_SAVED 8ull
#define R_OFF_SHIFT 4
#define R_OFF_MAX ((1u << 20) - 1)
#define R_SLOT_SHIFT 24
#define R_SLOT_MIN (-512)
#define R_SLOT_MAX 511
#define R_TAG_SHIFT 34
#define R_BAD R_VALID /* valid, not end, offset 0 */
#define R_SIGNAL (R_VALID | R_END | R_CFA_RBP)

static _Atomic uint64_t *g_rules;
/* Bumped when the rules are dropped; a memo made before is not used (see unwind.h). */
static _Atomic uint64_t g_rules_gen = 1;
/* A small first level in front of the table, that stays in the L1 cache: the addresses
 * of the hot stacks.  Same cell format; the tag covers the bits the index does not. */
#define NEAR_BITS 11
static _Atomic uint64_t g_near[1u << NEAR_BITS];

int ap_unwind_init(void)
{
        if (g_rules != NULL)
                return 0;
        void *m = mmap(NULL, sizeof(uint64_t) * RULE_CELLS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
                return -errno;
        g_rules = m;
        return 0;
}

void ap_unwind_forget_rules(void)
{
        if (g_rules == NULL)
                return;
        /* Relaxed: a reader racing with this sees the old rule or none; the old rule is
         * still right for an address on its own stack (its module cannot be gone). */
        for (uint32_t i = 0; i < RULE_CELLS; i++)
                ap_store_relaxed(&g_rules[i], 0);
        for (uint32_t i = 0; i < (1u << NEAR_BITS); i++)
                ap_store_relaxed(&g_near[i], 0);
        /* Relaxed as well: a memo is checked against the stack it describes anyway; the
         * generation only keeps pcs of a module loaded since from old rules. */
        ap_fetch_add_relaxed(&g_rules_gen, 1);
}

static inline uint64_t pc_hash(uint64_t pc)
{
        return pc * 0x9e3779b97f4a7c15ull;
}

static inline uint32_t rule_index(uint64_t h)
{
        return (uint32_t)(h >> (64 - RULE_BITS));
}

static inline uint64_t rule_tag(uint64_t h)
{
        return (h >> 4) << R_TAG_SHIFT; /* hash bits 4-33, shifted into place */
}

/* ---- reading .eh_frame -------------------------------------------------------------------
 * The tables are the program's own loaded, read-only data, found through the loader's
 * program headers.  Lengths are still bounded so that a damaged table cannot send a loop
 * far away. */
#define DW_EH_PE_omit 0xff
#define DW_EH_PE_absptr 0x00
#define DW_EH_PE_uleb128 0x01
#define DW_EH_PE_udata2 0x02
#define DW_EH_PE_udata4 0x03
#define DW_EH_PE_udata8 0x04
#define DW_EH_PE_sleb128 0x09
#define DW_EH_PE_sdata2 0x0a
#define DW_EH_PE_sdata4 0x0b
#define DW_EH_PE_sdata8 0x0c
#define DW_EH_PE_pcrel 0x10
#define DW_EH_PE_datarel 0x30

#define REG_RBP 6
#define REG_RSP 7
#define REG_RA 16
#define MAX_ENTRY_BYTES (1u << 16)
#define MAX_STATES 8

struct cursor {
        const uint8_t *p, *end;
        bool bad;
};

static uint8_t rd_u8(struct cursor *c)
{
        if (c->p + 1 > c->end) {
                c->bad = true;
                return 0;
        }
        return *c->p++;
}

static uint64_t rd_fixed(struct cursor *c, unsigned n)
{
        if (c->p + n > c->end) {
                c->bad = true;
                return 0;
        }
        uint64_t v = 0;
        memcpy(&v, c->p, n); /* little-endian */
        c->p += n;
        return v;
}

static uint64_t rd_uleb(struct cursor *c)
{
        uint64_t v = 0;
        for (unsigned shift = 0; shift < 64; shift += 7) {
                uint8_t b = rd_u8(c);
                v |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80))
                        return v;
        }
        c->bad = true;
        return 0;
}

static int64_t rd_sleb(struct cursor *c)
{
        uint64_t v = 0;
        unsigned shift = 0;
        uint8_t b;
        do {
                if (shift >= 64) {
                        c->bad = true;
                        return 0;
                }
                b = rd_u8(c);
                v |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
        } while (b & 0x80);
        if (shift < 64 && (b & 0x40))
                v |= ~0ull << shift;
        return (int64_t)v;
}

/* A pointer in encoding enc; pcrel is relative to where it is stored, datarel to `data`.
 * Indirect and other bases are not supported. */
static uint64_t rd_encoded(struct cursor *c, uint8_t enc, uint64_t data)
{
        uint64_t at = (uint64_t)(uintptr_t)c->p, v;
        switch (enc & 0x0f) {
        case DW_EH_PE_absptr: v = rd_fixed(c, 8); break;
        case DW_EH_PE_uleb128: v = rd_uleb(c); break;
        case DW_EH_PE_udata2: v = rd_fixed(c, 2); break;
        case DW_EH_PE_udata4: v = rd_fixed(c, 4); break;
        case DW_EH_PE_udata8: v = rd_fixed(c, 8); break;
        case DW_EH_PE_sleb128: v = (uint64_t)rd_sleb(c); break;
        case DW_EH_PE_sdata2: v = (uint64_t)(int64_t)(int16_t)rd_fixed(c, 2); break;
        case DW_EH_PE_sdata4: v = (uint64_t)(int64_t)(int32_t)rd_fixed(c, 4); break;
        case DW_EH_PE_sdata8: v = rd_fixed(c, 8); break;
        default: c->bad = true; return 0;
        }
        switch (enc & 0x70) {
        case 0: break;
        case DW_EH_PE_pcrel: v += at; break;
        case DW_EH_PE_datarel: v += data; break;
        default: c->bad = true; return 0;
        }
        if (enc & 0x80)
                c->bad = true; /* indirect */
        return v;
}

/* A register's rule, for the two registers we follow. */
enum { RULE_SAME, RULE_OFFSET, RULE_UNDEFINED, RULE_OTHER };

struct cfa_state {
        uint64_t cfa_reg;
        int64_t cfa_off;
        bool cfa_expr;
        uint8_t rbp_rule, ra_rule;
        int64_t rbp_off, ra_off;
};

struct cie_info {
        uint64_t code_align;
        int64_t data_align;
        uint8_t fde_enc;
        bool has_aug_data;
        bool signal; /* 'S': the FDE describes a signal frame */
        const uint8_t *insns, *end;
};

static void set_reg_rule(struct cfa_state *s, uint64_t reg, uint8_t rule, int64_t off)
{
        if (reg == REG_RBP) {
                s->rbp_rule = rule;
                s->rbp_off = off;
        } else if (reg == REG_RA) {
                s->ra_rule = rule;
                s->ra_off = off;
        }
}

/* DW_CFA_restore: reg's rule as the CIE left it.  False while running the CIE itself
 * (init NULL), where the operation makes no sense. */
static bool restore_reg_rule(struct cfa_state *s, uint64_t reg, const struct cfa_state *init)
{
        if (init == NULL)
                return false;
        if (reg == REG_RBP)
                set_reg_rule(s, reg, init->rbp_rule, init->rbp_off);
        else if (reg == REG_RA)
                set_reg_rule(s, reg, init->ra_rule, init->ra_off);
        return true;
}

/* Runs CFA instructions from c until the row for `target` is complete (loc > target),
 * starting at loc.  init: the state after the CIE's instructions (DW_CFA_restore). */
static bool run_cfa(struct cursor *c, const struct cie_info *ci, uint64_t loc, uint64_t target,
                    struct cfa_state *s, const struct cfa_state *init, uint64_t data)
{
        struct cfa_state stack[MAX_STATES];
        unsigned depth = 0;
        while (c->p < c->end && !c->bad) {
                uint8_t op = rd_u8(c);
                uint8_t hi = op & 0xc0, lo = op & 0x3f;
                uint64_t reg, delta = 0;
                int64_t off;
                if (hi == 0x40) {
                        delta = lo * ci->code_align;
                } else if (hi == 0x80) {
                        off = (int64_t)rd_uleb(c) * ci->data_align;
                        set_reg_rule(s, lo, RULE_OFFSET, off);
                        continue;
                } else if (hi == 0xc0) {
                        if (!restore_reg_rule(s, lo, init))
                                return false;
                        continue;
                } else {
                        switch (op) {
                        case 0x00: /* nop */
                                continue;
                        case 0x01: /* set_loc */
                                loc = rd_encoded(c, ci->fde_enc, data);
                                if (loc > target)
                                        return !c->bad;
                                continue;
                        case 0x02: delta = rd_fixed(c, 1) * ci->code_align; break;
                        case 0x03: delta = rd_fixed(c, 2) * ci->code_align; break;
                        case 0x04: delta = rd_fixed(c, 4) * ci->code_align; break;
                        case 0x05: /* offset_extended */
                                reg = rd_uleb(c);
                                set_reg_rule(s, reg, RULE_OFFSET, (int64_t)rd_uleb(c) * ci->data_align);
                                continue;
                        case 0x06: /* restore_extended */
                                if (!restore_reg_rule(s, rd_uleb(c), init))
                                        return false;
                                continue;
                        case 0x07: /* undefined */
                                set_reg_rule(s, rd_uleb(c), RULE_UNDEFINED, 0);
                                continue;
                        case 0x08: /* same_value */
                                set_reg_rule(s, rd_uleb(c), RULE_SAME, 0);
                                continue;
                        case 0x09: /* register */
                                reg = rd_uleb(c);
                                (void)rd_uleb(c);
                                set_reg_rule(s, reg, RULE_OTHER, 0);
                                continue;
                        case 0x0a: /* remember_state */
                                if (depth == MAX_STATES)
                                        return false;
                                stack[depth++] = *s;
                                continue;
                        case 0x0b: /* restore_state */
                                if (depth == 0)
                                        return false;
                                *s = stack[--depth];
                                continue;
                        case 0x0c: /* def_cfa */
                                s->cfa_reg = rd_uleb(c);
                                s->cfa_off = (int64_t)rd_uleb(c);
                                s->cfa_expr = false;
                                continue;
                        case 0x0d: /* def_cfa_register */
                                s->cfa_reg = rd_uleb(c);
                                s->cfa_expr = false;
                                continue;
                        case 0x0e: /* def_cfa_offset */
                                s->cfa_off = (int64_t)rd_uleb(c);
                                continue;
                        case 0x0f: { /* def_cfa_expression */
                                uint64_t len = rd_uleb(c);
                                if (len > (uint64_t)(c->end - c->p))
                                        return false;
                                c->p += len;
                                s->cfa_expr = true;
                                continue;
                        }
                        case 0x10:   /* expression */
                        case 0x16: { /* val_expression */
                                reg = rd_uleb(c);
                                uint64_t len = rd_uleb(c);
                                if (len > (uint64_t)(c->end - c->p))
                                        return false;
                                c->p += len;
                                set_reg_rule(s, reg, RULE_OTHER, 0);
                                continue;
                        }
                        case 0x11: /* offset_extended_sf */
                                reg = rd_uleb(c);
                                set_reg_rule(s, reg, RULE_OFFSET, rd_sleb(c) * ci->data_align);
                                continue;
                        case 0x12: /* def_cfa_sf */
                                s->cfa_reg = rd_uleb(c);
                                s->cfa_off = rd_sleb(c) * ci->data_align;
                                s->cfa_expr = false;
                                continue;
                        case 0x13: /* def_cfa_offset_sf */
                                s->cfa_off = rd_sleb(c) * ci->data_align;
                                continue;
                        case 0x14: /* val_offset */
                        case 0x15: /* val_offset_sf */
                                reg = rd_uleb(c);
                                if (op == 0x14)
                                        (void)rd_uleb(c);
                                else
                                        (void)rd_sleb(c);
                                set_reg_rule(s, reg, RULE_OTHER, 0);
                                continue;
                        case 0x2e: /* GNU_args_size */
                                (void)rd_uleb(c);
                                continue;
                        case 0x2f: /* GNU_negative_offset_extended */
                                reg = rd_uleb(c);
                                set_reg_rule(s, reg, RULE_OFFSET, -(int64_t)rd_uleb(c) * ci->data_align);
                                continue;
                        default:
                                return false;
                        }
                }
                /* An advance: the row for target is complete once loc passes it. */
                if (loc + delta > target)
                        return !c->bad;
                loc += delta;
        }
        return !c->bad;
}

/* Reads the CIE at cie into *ci.  False for what we do not handle (a return-address
 * column other than 16, unknown augmentations). */
static bool read_cie(const uint8_t *cie, struct cie_info *ci)
{
        struct cursor c = {.p = cie, .end = cie + 8};
        uint64_t len = rd_fixed(&c, 4);
        if (len == 0 || len >= MAX_ENTRY_BYTES)
                return false;
        c.end = cie + 4 + len;
        if (rd_fixed(&c, 4) != 0) /* CIE id */
                return false;
        uint8_t version = rd_u8(&c);
        if (version != 1 && version != 3)
                return false;
        const char *aug = (const char *)c.p;
        size_t auglen = strnlen(aug, (size_t)(c.end - c.p));
        if (auglen > 8 || c.p + auglen >= c.end)
                return false;
        c.p += auglen + 1;
        ci->code_align = rd_uleb(&c);
        ci->data_align = rd_sleb(&c);
        uint64_t ra = version == 1 ? rd_u8(&c) : rd_uleb(&c);
        if (ra != REG_RA)
                return false;
        ci->fde_enc = DW_EH_PE_absptr;
        ci->signal = false;
        ci->has_aug_data = auglen > 0 && aug[0] == 'z';
        if (auglen > 0 && !ci->has_aug_data)
                return false;
        if (ci->has_aug_data) {
                uint64_t alen = rd_uleb(&c);
                if (c.bad || alen > (uint64_t)(c.end - c.p))
                        return false;
                const uint8_t *aend = c.p + alen;
                for (size_t i = 1; i < auglen; i++) {
                        switch (aug[i]) {
                        case 'R':
                                ci->fde_enc = rd_u8(&c);
                                break;
                        case 'L':
                                (void)rd_u8(&c);
                                break;
                        case 'P': {
                                uint8_t penc = rd_u8(&c);
                                (void)rd_encoded(&c, penc & 0x7f, 0); /* skipped; indirect ok */
                                break;
                        }
                        case 'S':
                                ci->signal = true;
                                break;
                        default:
                                return false;
                        }
                }
                c.p = aend;
        }
        if (c.bad)
                return false;
        ci->insns = c.p;
        ci->end = c.end;
        return true;
}

/* Works out the rule for pc (the address to look up: a return address minus one). */
static __attribute__((noinline, cold)) uint64_t compute_rule(uint64_t pc)
{
        struct find_module fm = {.pc = pc};
        dl_iterate_phdr(find_module_cb, &fm);
        if (!fm.found)
                return 0; /* no module there (JIT code?): do not remember */
        if (fm.eh_hdr == 0)
                return R_BAD;
        const uint8_t *hdr = (const uint8_t *)(uintptr_t)fm.eh_hdr;
        if (hdr[0] != 1 || hdr[2] != DW_EH_PE_udata4 ||
            hdr[3] != (DW_EH_PE_datarel | DW_EH_PE_sdata4))
                return R_BAD;
        struct cursor c = {.p = hdr + 4, .end = hdr + 16};
        (void)rd_encoded(&c, hdr[1], 0); /* eh_frame_ptr: not needed */
        uint64_t count = rd_fixed(&c, 4);
        if (c.bad || count == 0 || count > (1u << 24))
                return R_BAD;
        const int32_t *table = (const int32_t *)(const void *)c.p;
        uint64_t base = (uint64_t)(uintptr_t)hdr;
        /* The last entry whose start is <= pc. */
        uint64_t lo = 0, hi = count;
        while (lo < hi) {
                uint64_t mid = lo + (hi - lo) / 2;
                if (base + (uint64_t)(int64_t)table[2 * mid] <= pc)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == 0)
                return R_BAD;
        const uint8_t *fde = (const uint8_t *)(uintptr_t)(base + (uint64_t)(int64_t)table[2 * (lo - 1) + 1]);

        struct cursor f = {.p = fde, .end = fde + 8};
        uint64_t len = rd_fixed(&f, 4);
        if (len == 0 || len >= MAX_ENTRY_BYTES)
                return R_BAD;
        f.end = fde + 4 + len;
        const uint8_t *cie_field = f.p;
        uint64_t cie_off = rd_fixed(&f, 4);
        if (cie_off == 0)
                return R_BAD; /* a CIE, not an FDE */
        struct cie_info ci;
        if (!read_cie(cie_field - cie_off, &ci))
                return R_BAD;
        uint64_t start = rd_encoded(&f, ci.fde_enc, base);
        uint64_t range = rd_encoded(&f, ci.fde_enc & 0x0f, 0);
        if (f.bad || pc < start || pc - start >= range)
                return R_BAD;
        if (ci.signal) {
                /* Only the trampoline the kernel returns through, whose frame layout we
                 * know: the return address (pc + 1) is its `mov $15, %rax; syscall`
                 * (rt_sigreturn), as libunwind checks too. */
                static const uint8_t sigreturn[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00,
                                                    0x00, 0x00, 0x0f, 0x05};
                if (fm.seg_end - (pc + 1) < sizeof(sigreturn) ||
                    memcmp((const void *)(uintptr_t)(pc + 1), sigreturn, sizeof(sigreturn)) != 0)
                        return R_BAD;
                return R_SIGNAL;
        }
        if (ci.has_aug_data) {
                uint64_t alen = rd_uleb(&f);
                if (f.bad || alen > (uint64_t)(f.end - f.p))
                        return R_BAD;
                f.p += alen;
        }

        struct cfa_state init = {.rbp_rule = RULE_SAME, .ra_rule = RULE_OTHER};
        struct cursor ic = {.p = ci.insns, .end = ci.end};
        if (!run_cfa(&ic, &ci, 0, UINT64_MAX, &init, NULL, base))
                return R_BAD;
        struct cfa_state s = init;
        if (!run_cfa(&f, &ci, start, pc, &s, &init, base))
                return R_BAD;

        if (s.ra_rule == RULE_UNDEFINED)
                return R_VALID | R_END;
        if (s.cfa_expr || (s.cfa_reg != REG_RSP && s.cfa_reg != REG_RBP) || s.cfa_off < 8 ||
            s.cfa_off > R_OFF_MAX || s.ra_rule != RULE_OFFSET || s.ra_off != -8)
                return R_BAD;
        uint64_t r = R_VALID | ((uint64_t)s.cfa_off << R_OFF_SHIFT);
        if (s.cfa_reg == REG_RBP)
                r |= R_CFA_RBP;
        if (s.rbp_rule == RULE_OFFSET) {
                if (s.rbp_off % 8 != 0 || s.rbp_off / 8 < R_SLOT_MIN || s.rbp_off / 8 > R_SLOT_MAX)
                        return R_BAD;
                r |= R_RBP_SAVED | ((uint64_t)(s.rbp_off / 8) & 0x3ff) << R_SLOT_SHIFT;
        } else if (s.rbp_rule != RULE_SAME) {
                return R_BAD;
        }
        return r;
}

/* A rule's CFA offset (0: no rule the cache can hold) and its rbp slot (bits 24-33,
 * sign-extended); whether it is the signal trampoline's, whatever its tag. */
static inline uint64_t rule_cfa_off(uint64_t r)
{
        return (r >> R_OFF_SHIFT) & R_OFF_MAX;
}

static inline int64_t rule_rbp_slot(uint64_t r)
{
        return (int64_t)(r << (64 - R_SLOT_SHIFT - 10)) >> (64 - 10);
}

static inline bool rule_is_signal(uint64_t r)
{
        return (r & ((1ull << R_TAG_SHIFT) - 1)) == R_SIGNAL;
}

static inline bool rule_matches(uint64_t v, uint64_t tag)
{
        return (v & ~((1ull << R_TAG_SHIFT) - 1)) == tag && (v & R_VALID);
}

static __attribute__((noinline)) uint64_t rule_for(uint64_t pc)
{
        uint64_t h = pc_hash(pc);
        uint64_t tag = rule_tag(h);
        _Atomic uint64_t *near = &g_near[h >> (64 - NEAR_BITS)];
        uint64_t v = ap_load_relaxed(near);
        if (__builtin_expect(rule_matches(v, tag), 1))
                return v;
        _Atomic uint64_t *cell = &g_rules[rule_index(h)];
        v = ap_load_relaxed(cell);
        if (!rule_matches(v, tag)) {
                v = compute_rule(pc);
                if (v == 0)
                        return R_BAD;
                v |= tag;
                ap_store_relaxed(cell, v);
        }
        ap_store_relaxed(near, v);
        return v;
}

/* rip (the return address into the caller), rsp and rbp of the caller, as they are right
 * after this returns.  Touches nothing else. */
__asm__(".text\n"
        ".p2align 4\n"
        ".type ap_unwind_regs, @function\n"
        "ap_unwind_regs:\n"
        "  .cfi_startproc\n"
        "  movq (%rsp), %rax\n"
        "  movq %rax, 0(%rdi)\n"
        "  leaq 8(%rsp), %rax\n"
        "  movq %rax, 8(%rdi)\n"
        "  movq %rbp, 16(%rdi)\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size ap_unwind_regs, .-ap_unwind_regs\n");
void ap_unwind_regs(uint64_t regs[3]);

/* One frame: the rule of pc, then the caller's state.  Every read stays on this thread's
 * stack, above where the unwind started (lo): sp + 8 <= cfa <= stack_hi, and the rbp
 * slot within [lo, stack_hi - 8]; unsigned differences fold each pair of bounds into one
 * compare.  *slot is where rbp was read (0: it was not), *flags the LV_ bits of the rule. */
enum { STEP_NEXT, STEP_END_RULE, STEP_END_ZERO, STEP_FAIL };

#define LV_RBP_CFA 1u   /* the frame's CFA is rbp + offset */
#define LV_RBP_SAVED 2u /* its rule reloads rbp from the slot */
#define LV_NEED_FP 4u   /* (memo) the fp of this state can change the rest of the unwind */

static inline int step(uint64_t *pc, uint64_t *sp, uint64_t *fp, uint64_t lo, uint64_t stack_hi,
                       uint64_t *slot, uint64_t *flags)
{
        /* The hot path: a hash, one load from the near table, a few shifts and two loads
         * from the stack. */
        uint64_t h = pc_hash(*pc - 1);
        uint64_t r = ap_load_relaxed(&g_near[h >> (64 - NEAR_BITS)]);
        if (__builtin_expect(!rule_matches(r, rule_tag(h)), 0))
                r = rule_for(*pc - 1);
        *slot = 0;
        *flags = 0;
        if (r & R_END)
                return (r & R_CFA_RBP) ? STEP_FAIL : STEP_END_RULE; /* R_SIGNAL: general */
        uint64_t off = rule_cfa_off(r);
        if (off == 0)
                return STEP_FAIL; /* a frame for the general unwinder */
        uint64_t cfa = ((r & R_CFA_RBP) ? *fp : *sp) + off;
        if (cfa - (*sp + 8) > stack_hi - (*sp + 8))
                return STEP_FAIL;
        uint64_t next_pc = *(const uint64_t *)(uintptr_t)(cfa - 8);
        if (r & R_RBP_SAVED) {
                uint64_t at = cfa + (uint64_t)(rule_rbp_slot(r) * 8);
                if (at - lo > stack_hi - 8 - lo)
                        return STEP_FAIL;
                *fp = *(const uint64_t *)(uintptr_t)at;
                *slot = at;
                *flags = LV_RBP_SAVED;
        }
        if (r & R_CFA_RBP)
                *flags |= LV_RBP_CFA;
        *sp = cfa;
        *pc = next_pc;
        return next_pc == 0 ? STEP_END_ZERO : STEP_NEXT;
}

int ap_unwind_capture_from(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp)
{
        if (g_rules == NULL || stack_hi == 0 || sp >= stack_hi)
                return -1;
        const uint64_t lo = sp;
        int n = 0;
        while (n < max) {
                out[n++] = pc;
                uint64_t slot, flags;
                int s = step(&pc, &sp, &fp, lo, stack_hi, &slot, &flags);
                if (s == STEP_FAIL)
                        return -1;
                if (s != STEP_NEXT)
                        return n;
        }
        return n;
}

/* ---- the memo (see unwind.h) ----------------------------------------------------------- */

#define MEMO_END_RULE 1 /* the outermost frame's rule ends the stack: nothing was read */
#define MEMO_END_ZERO 2 /* its return-address slot (fin_sp - 8) held 0 */
#define MEMO_END_MAX 3  /* cut at max frames: fin_* is where it would go on */

/* A frame's state while unwinding, before it is stored in the memo. */
struct frame_state {
        uint64_t sp, fp, slot, flags;
};

/* Whether the slots read by the rules of memo frames mi..0 (outwards) still hold what
 * they held, so that an unwind reaching frame mi's state goes on exactly as the memo's
 * did.  A saved rbp is compared only where it can matter (LV_NEED_FP of the state it
 * starts); its slot is bounds-checked against this unwind's start like step() does. */
static bool memo_holds(const struct ap_unwind_memo *m, int mi, uint64_t lo, uint64_t stack_hi)
{
        for (int p = mi; p >= 0; p--) {
                /* The state above level p; its fp is read only where it is compared. */
                uint64_t next_sp, next_pc;
                const uint64_t *next_fp;
                bool need;
                if (p > 0) {
                        next_sp = m->sp[p - 1];
                        next_pc = m->pc[p - 1];
                        next_fp = &m->fp[p - 1];
                        need = m->flags[p - 1] & LV_NEED_FP;
                } else if (m->end != MEMO_END_RULE) {
                        next_sp = m->fin_sp;
                        next_pc = m->fin_pc;
                        next_fp = &m->fin_fp;
                        need = m->end == MEMO_END_MAX;
                } else {
                        break; /* the outermost rule read nothing */
                }
                if (*(const uint64_t *)(uintptr_t)(next_sp - 8) != next_pc)
                        return false;
                if (m->flags[p] & LV_RBP_SAVED) {
                        uint64_t slot = m->slot[p];
                        if (slot - lo > stack_hi - 8 - lo)
                                return false;
                        if (need && *(const uint64_t *)(uintptr_t)slot != *next_fp)
                                return false;
                }
        }
        return true;
}

/* Stores frames k = from-1 .. 0 of out/st in memo positions pos, pos+1, ... (outermost
 * first), going on from the running hash h and the LV_NEED_FP of the state above them.
 * Returns the hash after the innermost frame. */
static uint64_t memo_store(struct ap_unwind_memo *m, uint32_t pos, const uint64_t *out,
                           const struct frame_state *st, int from, uint64_t h, bool need)
{
        for (int k = from - 1; k >= 0; k--, pos++) {
                uint64_t f = st[k].flags;
                /* The fp of frame k's state matters if its CFA is rbp-based, or if its
                 * rule keeps rbp and the state above needs it. */
                if ((f & LV_RBP_CFA) || (!(f & LV_RBP_SAVED) && need))
                        f |= LV_NEED_FP;
                need = f & LV_NEED_FP;
                h = ap_stack_hash_step(h, out[k]);
                m->pc[pos] = out[k];
                m->sp[pos] = st[k].sp;
                m->fp[pos] = st[k].fp;
                m->slot[pos] = st[k].slot;
                m->hash[pos] = h;
                m->flags[pos] = (uint8_t)f;
        }
        return h;
}

static int capture_with_memo(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                             uint64_t fp, struct ap_unwind_memo *m, uint64_t *hash, bool *same)
{
        struct frame_state st[AP_UNWIND_MEMO_MAX];
        *same = false;
        if (g_rules == NULL || stack_hi == 0 || sp >= stack_hi) {
                m->n = 0;
                return -1;
        }
        if (max > AP_UNWIND_MEMO_MAX)
                max = AP_UNWIND_MEMO_MAX;
        const uint64_t lo = sp;
        /* Relaxed: see ap_unwind_forget_rules. */
        const uint64_t gen = ap_load_relaxed(&g_rules_gen);
        /* mi walks the memo from its innermost frame outwards, to the first frame whose sp
         * is not below this unwind's (sps grow outwards in both); -1: no memo to use. */
        int mi = m->n > 0 && m->gen == gen ? (int)m->n - 1 : -1;
        int n = 0, end = MEMO_END_MAX, s, total, tries = 0;
        uint64_t h;

walk:
        while (n < max) {
                if (mi >= 0) {
                        while (mi >= 0 && m->sp[mi] < sp)
                                mi--;
                        if (mi >= 0 && m->sp[mi] == sp) {
                                /* Same sp, so far from a proof: the same function may sit
                                 * here called from elsewhere (another pc), or the frames
                                 * above may have changed (the slots tell).  Compare the
                                 * cheap things first; verify the slots twice at most. */
                                if (m->pc[mi] == pc &&
                                    (!(m->flags[mi] & LV_NEED_FP) || m->fp[mi] == fp) &&
                                    n + mi + 1 <= max) {
                                        if (memo_holds(m, mi, lo, stack_hi))
                                                goto joined;
                                        if (++tries == 2)
                                                mi = -1;
                                }
                        }
                }
                out[n] = pc;
                st[n].sp = sp;
                st[n].fp = fp;
                s = step(&pc, &sp, &fp, lo, stack_hi, &st[n].slot, &st[n].flags);
                n++;
                if (s == STEP_FAIL)
                        goto fail;
                if (s != STEP_NEXT) {
                        end = s == STEP_END_RULE ? MEMO_END_RULE : MEMO_END_ZERO;
                        break;
                }
        }
        goto store_all;

joined:;
        /* Frames mi..0 of the memo are this stack's frames n, n+1, ... */
        total = n + mi + 1;
        if (m->end == MEMO_END_MAX && total < max) {
                /* The memo was cut at max frames and this stack has room for more: take
                 * its frames over and go on unwinding from where it stopped. */
                for (int p = mi; p >= 0; p--, n++) {
                        out[n] = m->pc[p];
                        st[n] = (struct frame_state){.sp = m->sp[p],
                                                     .fp = m->fp[p],
                                                     .slot = m->slot[p],
                                                     .flags = m->flags[p] & ~(uint64_t)LV_NEED_FP};
                }
                pc = m->fin_pc;
                sp = m->fin_sp;
                fp = m->fin_fp;
                mi = -1; /* the memo is used up: the rest is a plain walk */
                goto walk;
        }
        for (int p = mi, k = n; p >= 0; p--, k++)
                out[k] = m->pc[p];
        *same = n == 0 && total == (int)m->n;
        /* The new inner frames replace the memo's below frame mi; its outer part, end and
         * final state stay. */
        h = memo_store(m, (uint32_t)mi + 1, out, st, n, m->hash[mi], m->flags[mi] & LV_NEED_FP);
        m->n = (uint32_t)total;
        *hash = ap_stack_hash_final(h, (uint32_t)total);
        return total;

store_all:
        m->n = (uint32_t)n;
        m->end = (uint32_t)end;
        m->gen = gen;
        m->fin_pc = pc;
        m->fin_sp = sp;
        m->fin_fp = fp;
        h = memo_store(m, 0, out, st, n, AP_STACK_HASH_SEED, end == MEMO_END_MAX);
        *hash = ap_stack_hash_final(h, (uint32_t)n);
        return n;

fail:
        m->n = 0;
        return -1;
}

/* Whether the memo pays depends on the program.  Where consecutive stacks share most of
 * their frames and the program's own data keeps pushing the rule cache out of the CPU's
 * caches (a compiler: 84% of the frames shared), re-reading a few stack slots beats
 * looking the rules up; where the rules stay cached and stacks share fewer frames (a C++
 * program moving between containers), the memo's bookkeeping costs more than it saves
 * (measured: +50% instructions in the unwinder).  Instruction counts cannot tell the two
 * apart, time can: every MEMO_RUN captures a thread times MEMO_TRIAL captures without
 * the memo and MEMO_TRIAL with it, and uses the cheaper way per frame until the next
 * trial.  rdtsc without a fence: a trial sums many captures. */
#define MEMO_TRIAL 64
#define MEMO_RUN 4096

int ap_unwind_capture_memo(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp, struct ap_unwind_memo *m, uint64_t *hash, bool *same)
{
        if (m->left == 0) {
                m->phase = 1;
                m->left = MEMO_TRIAL;
                m->trial_ticks[0] = m->trial_ticks[1] = 0;
                m->trial_frames[0] = m->trial_frames[1] = 0;
        }
        const uint32_t phase = m->phase;
        const bool with = phase == 2 || (phase == 0 && m->use);
        const uint64_t t0 = phase != 0 ? ap_clock_ticks_early() : 0;
        int n;
        if (with) {
                n = capture_with_memo(out, max, stack_hi, pc, sp, fp, m, hash, same);
        } else {
                m->n = 0;
                *same = false;
                n = ap_unwind_capture_from(out, max, stack_hi, pc, sp, fp);
                if (n > 0)
                        *hash = ap_stack_hash(out, (uint32_t)n);
        }
        if (phase != 0 && n > 0) {
                m->trial_ticks[phase - 1] += ap_clock_ticks_early() - t0;
                m->trial_frames[phase - 1] += (uint64_t)n;
        }
        if (--m->left == 0) {
                if (phase == 1) {
                        m->phase = 2;
                        m->left = MEMO_TRIAL;
                } else if (phase == 2) {
                        /* ticks per frame with < without, cross-multiplied */
                        m->use = m->trial_ticks[1] * m->trial_frames[0] <
                                 m->trial_ticks[0] * m->trial_frames[1];
                        m->phase = 0;
                        m->left = MEMO_RUN;
                }
        }
        return n;
}

__attribute__((noinline)) int ap_unwind_capture(uint64_t *out, int max, uint64_t stack_hi)
{
        uint64_t regs[3];
        ap_unwind_regs(regs);
        return ap_unwind_capture_from(out, max, stack_hi, regs[0], regs[1], regs[2]);
}

__attribute__((noinline)) int ap_unwind_capture_here(uint64_t *out, int max, uint64_t stack_hi,
                                                     struct ap_unwind_memo *m, uint64_t *hash,
                                                     bool *same)
{
        uint64_t regs[3];
        ap_unwind_regs(regs);
        return ap_unwind_capture_memo(out, max, stack_hi, regs[0], regs[1], regs[2], m, hash,
                                      same);
}

__attribute__((noinline)) int ap_unwind_capture_general_here(uint64_t *out, int max,
                                                             uint64_t stack_lo, uint64_t stack_hi)
{
        uint64_t regs[3];
        ap_unwind_regs(regs);
        return ap_unwind_capture_general(out, max, stack_lo, stack_hi, regs[0], regs[1], regs[2]);
}

/* ---- the general unwinder -------------------------------------------------------------
 * For the stacks the fast path leaves: on another stack than the thread's own (a
 * coroutine's, a sigaltstack handler's), through a signal frame, or reaching a frame
 * whose rule the cache cannot hold.  Rules come from the same cache.  Reads inside the
 * live part of the thread's stack (from where the unwind starts to its top) are safe
 * as they are; any other address is read through a system call first, once per new
 * page (ap_unwind_read_word).  (Not libunwind: its own memory check keeps a pipe open in
 * the program, two descriptors the program can close and reuse, and it then reads and
 * writes whatever they have become.)  A frame without a rule ends the stack, after one
 * frame-pointer step if that leads back into code with unwind tables (JIT code that
 * keeps frame pointers). */
static uint64_t general_rule(uint64_t at)
{
        if (g_rules != NULL)
                return rule_for(at);
        uint64_t r = compute_rule(at);
        return r ? r : R_BAD;
}

/* Where the signal frame keeps the interrupted registers, from the stack pointer the
 * trampoline runs with (the kernel's struct ucontext: uc_mcontext at 40, then r8..r15,
 * rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip). */
#define UC_RBP (40 + 8 * 10)
#define UC_RSP (40 + 8 * 15)
#define UC_RIP (40 + 8 * 16)

int ap_unwind_capture_general(uint64_t *out, int max, uint64_t stack_lo, uint64_t stack_hi,
                              uint64_t pc, uint64_t sp, uint64_t fp)
{
        struct ap_unwind_reader rd = {0}; /* empty ranges: lo == hi */
        if (sp >= stack_lo && sp < stack_hi)
                rd.lo = sp, rd.hi = stack_hi;
        bool exact = false; /* pc is where a signal struck, not a return address */
        int n = 0;
        while (n < max && pc != 0) {
                out[n++] = pc;
                uint64_t r = general_rule(exact ? pc : pc - 1), next;
                if (rule_is_signal(r)) {
                        uint64_t nsp, nfp;
                        if (!ap_unwind_read_word(&rd, sp + UC_RIP, &next) ||
                            !ap_unwind_read_word(&rd, sp + UC_RSP, &nsp) ||
                            !ap_unwind_read_word(&rd, sp + UC_RBP, &nfp))
                                break;
                        pc = next, sp = nsp, fp = nfp, exact = true;
                        continue;
                }
                if (r & R_END)
                        break;
                uint64_t off = rule_cfa_off(r);
                if (off == 0) {
                        /* No rule: one frame-pointer step, if it lands in code we can go on
                         * unwinding (else the stack ends here). */
                        uint64_t nfp;
                        if (fp < sp || fp - sp > (1u << 20) ||
                            !ap_unwind_read_word(&rd, fp, &nfp) ||
                            !ap_unwind_read_word(&rd, fp + 8, &next) || next == 0)
                                break;
                        uint64_t nr = general_rule(next - 1);
                        if ((nr & R_END) == 0 && rule_cfa_off(nr) == 0)
                                break;
                        sp = fp + 16, fp = nfp, pc = next, exact = false;
                        continue;
                }
                uint64_t cfa = ((r & R_CFA_RBP) ? fp : sp) + off;
                if (cfa <= sp || !ap_unwind_read_word(&rd, cfa - 8, &next))
                        break;
                if ((r & R_RBP_SAVED) &&
                    !ap_unwind_read_word(&rd, cfa + (uint64_t)(rule_rbp_slot(r) * 8), &fp))
                        break;
                sp = cfa, pc = next, exact = false;
        }
        return n;
}

#else /* not x86-64: libunwind does it all */

int ap_unwind_init(void)
{
        return 0;
}

void ap_unwind_forget_rules(void)
{
}

int ap_unwind_capture(uint64_t *out, int max, uint64_t stack_hi)
{
        (void)out, (void)max, (void)stack_hi;
        return -1;
}

int ap_unwind_capture_here(uint64_t *out, int max, uint64_t stack_hi, struct ap_unwind_memo *m,
                           uint64_t *hash, bool *same)
{
        (void)out, (void)max, (void)stack_hi, (void)hash;
        m->n = 0;
        *same = false;
        return -1;
}

int ap_unwind_capture_from(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp)
{
        (void)out, (void)max, (void)stack_hi, (void)pc, (void)sp, (void)fp;
        return -1;
}

int ap_unwind_capture_memo(uint64_t *out, int max, uint64_t stack_hi, uint64_t pc, uint64_t sp,
                           uint64_t fp, struct ap_unwind_memo *m, uint64_t *hash, bool *same)
{
        (void)out, (void)max, (void)stack_hi, (void)pc, (void)sp, (void)fp, (void)hash;
        m->n = 0;
        *same = false;
        return -1;
}

int ap_unwind_capture_general(uint64_t *out, int max, uint64_t stack_lo, uint64_t stack_hi,
                              uint64_t pc, uint64_t sp, uint64_t fp)
{
        (void)out, (void)max, (void)stack_lo, (void)stack_hi, (void)pc, (void)sp, (void)fp;
        return -1;
}

int ap_unwind_capture_general_here(uint64_t *out, int max, uint64_t stack_lo, uint64_t stack_hi)
{
        (void)out, (void)max, (void)stack_lo, (void)stack_hi;
        return -1;
}

#endif
