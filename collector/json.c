/* The strict JSON reader (see json.h).  One loop without recursion: open containers are a
 * stack of levels, and the values parsed inside them wait on a scratch stack until their
 * container closes, when they are copied, contiguous, into the arena.  Scalars are
 * written straight into their slot on the scratch stack.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "json.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Arena chunks: big enough that a profile needs a handful, freed all at once. */
#define CHUNK_BYTES (256u << 10)

struct chunk {
        struct chunk *next;
        size_t used, cap;
        _Alignas(16) unsigned char data[];
};

struct ap_json_doc {
        struct chunk *chunks;
        struct ap_json root;
};

struct level {
        size_t base;   /* first child's position on the scratch stack */
        uint32_t type; /* AP_JSON_ARRAY or AP_JSON_OBJECT */
};

struct parser {
        char *p, *end;          /* the next byte; text + len (a NUL is there) */
        const char *line_start; /* for error positions */
        int line;
        struct ap_json_doc *doc;
        struct ap_json_member *scratch; /* slots of the open containers' children */
        size_t nscratch, capscratch;
        size_t nvalues; /* slots pushed so far: the document's values but its root */
        struct level levels[AP_JSON_MAX_DEPTH];
        size_t nlevels;
        struct ap_json_error *err;
};

static int fail(struct parser *ps, const char *at, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int fail(struct parser *ps, const char *at, const char *fmt, ...)
{
        va_list ap;

        /* Raw newlines appear only in whitespace, which skip_ws counts as it goes. */
        ps->err->line = ps->line;
        ps->err->column = (int)(at - ps->line_start) + 1;
        va_start(ap, fmt);
        vsnprintf(ps->err->text, sizeof(ps->err->text), fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static void *arena_alloc(struct ap_json_doc *doc, size_t size)
{
        size = (size + 15) & ~(size_t)15;
        struct chunk *c = doc->chunks;
        if (c == NULL || c->cap - c->used < size) {
                size_t cap = size > CHUNK_BYTES ? size : CHUNK_BYTES;
                c = malloc(sizeof(*c) + cap);
                if (c == NULL)
                        return NULL;
                c->used = 0;
                c->cap = cap;
                c->next = doc->chunks;
                doc->chunks = c;
        }
        void *r = c->data + c->used;
        c->used += size;
        return r;
}

static inline void skip_ws(struct parser *ps)
{
        for (;;) {
                char c = *ps->p;
                if (c == ' ' || c == '\t' || c == '\r') {
                        ps->p++;
                } else if (c == '\n') {
                        ps->p++;
                        ps->line++;
                        ps->line_start = ps->p;
                } else {
                        return;
                }
        }
}

/* A new slot for a child of the innermost open container, in *ret.  Returns 0, -EINVAL
 * (with the error set) for one value more than AP_JSON_MAX_VALUES, or -ENOMEM. */
static int push_slot(struct parser *ps, struct ap_json_member **ret)
{
        if (++ps->nvalues >= AP_JSON_MAX_VALUES)
                return fail(ps, ps->p, "more than %u values in the document", AP_JSON_MAX_VALUES);
        if (ps->nscratch == ps->capscratch) {
                size_t cap = ps->capscratch ? ps->capscratch * 2 : 1024;
                struct ap_json_member *n = realloc(ps->scratch, cap * sizeof(*n));
                if (n == NULL)
                        return -ENOMEM;
                ps->scratch = n;
                ps->capscratch = cap;
        }
        struct ap_json_member *m = &ps->scratch[ps->nscratch++];
        m->key = NULL;
        m->keylen = 0;
        *ret = m;
        return 0;
}

static int hex4(const char *s, unsigned *ret)
{
        unsigned v = 0;
        for (int k = 0; k < 4; k++) {
                char c = s[k];
                unsigned d;
                if (c >= '0' && c <= '9')
                        d = (unsigned)(c - '0');
                else if (c >= 'a' && c <= 'f')
                        d = (unsigned)(c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                        d = (unsigned)(c - 'A' + 10);
                else
                        return -1; /* the NUL at the end stops here too */
                v = v << 4 | d;
        }
        *ret = v;
        return 0;
}

/* The length of the valid UTF-8 sequence of 2 to 4 bytes at s, or 0 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s)
{
        unsigned c = s[0];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf; /* the range of the second byte */

        if (c < 0xc2)
                return 0;
        if (c < 0xe0) {
                n = 2;
        } else if (c < 0xf0) {
                n = 3;
                if (c == 0xe0)
                        lo = 0xa0;
                else if (c == 0xed)
                        hi = 0x9f;
        } else if (c < 0xf5) {
                n = 4;
                if (c == 0xf0)
                        lo = 0x90;
                else if (c == 0xf4)
                        hi = 0x8f;
        } else {
                return 0;
        }
        if (s[1] < lo || s[1] > hi)
                return 0; /* a NUL stops here: the sequence never reads past it */
        for (size_t k = 2; k < n; k++)
                if ((s[k] & 0xc0) != 0x80)
                        return 0;
        return n;
}

static char *put_utf8(char *w, unsigned cp)
{
        if (cp < 0x80) {
                *w++ = (char)cp;
        } else if (cp < 0x800) {
                *w++ = (char)(0xc0 | cp >> 6);
                *w++ = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
                *w++ = (char)(0xe0 | cp >> 12);
                *w++ = (char)(0x80 | (cp >> 6 & 0x3f));
                *w++ = (char)(0x80 | (cp & 0x3f));
        } else {
                *w++ = (char)(0xf0 | cp >> 18);
                *w++ = (char)(0x80 | (cp >> 12 & 0x3f));
                *w++ = (char)(0x80 | (cp >> 6 & 0x3f));
                *w++ = (char)(0x80 | (cp & 0x3f));
        }
        return w;
}

/* The string whose opening quote is at ps->p, decoded in place (the decoded form is never
 * longer) and NUL-terminated where it ends, which is at most where its closing quote was. */
static int parse_string(struct parser *ps, const char **ret, uint32_t *ret_len)
{
        const char *open = ps->p;
        char *r = ps->p + 1, *w = r, *start = r;

        for (;;) {
                unsigned char c = (unsigned char)*r;
                if (c == '"') {
                        break;
                } else if (c == '\\') {
                        const char *esc = r;
                        char e = r[1];
                        r += 2;
                        switch (e) {
                        case '"':
                        case '\\':
                        case '/':
                                *w++ = e;
                                break;
                        case 'b':
                                *w++ = '\b';
                                break;
                        case 'f':
                                *w++ = '\f';
                                break;
                        case 'n':
                                *w++ = '\n';
                                break;
                        case 'r':
                                *w++ = '\r';
                                break;
                        case 't':
                                *w++ = '\t';
                                break;
                        case 'u': {
                                unsigned cp, lo;
                                if (hex4(r, &cp) < 0)
                                        return fail(ps, esc, "invalid \\u escape in a string");
                                r += 4;
                                if (cp == 0)
                                        return fail(ps, esc, "\\u0000 in a string");
                                if (cp >= 0xdc00 && cp <= 0xdfff)
                                        return fail(ps, esc, "lone low surrogate in a string");
                                if (cp >= 0xd800 && cp <= 0xdbff) {
                                        if (r[0] != '\\' || r[1] != 'u' || hex4(r + 2, &lo) < 0 ||
                                            lo < 0xdc00 || lo > 0xdfff)
                                                return fail(ps, esc,
                                                            "lone high surrogate in a string");
                                        r += 6;
                                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                                }
                                w = put_utf8(w, cp);
                                break;
                        }
                        default:
                                return fail(ps, esc, "invalid escape in a string");
                        }
                } else if (c >= 0x80) {
                        size_t n = utf8_seq((const unsigned char *)r);
                        if (n == 0)
                                return fail(ps, r, "invalid UTF-8 in a string");
                        if (w != r)
                                memmove(w, r, n);
                        w += n;
                        r += n;
                } else if (c < 0x20) {
                        if (r == ps->end)
                                return fail(ps, open, "unterminated string");
                        return fail(ps, r, "control character in a string");
                } else {
                        *w++ = (char)c;
                        r++;
                }
        }
        if ((size_t)(w - start) > UINT32_MAX)
                return fail(ps, open, "string too long");
        *w = '\0';
        ps->p = r + 1;
        *ret = start;
        *ret_len = (uint32_t)(w - start);
        return 0;
}

/* JSON's decimal point is '.' whatever the program's locale says. */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void make_c_locale(void)
{
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* Past the run of decimal digits at q (none: q itself). */
static const char *skip_digits(const char *q)
{
        while (*q >= '0' && *q <= '9')
                q++;
        return q;
}

static int parse_number(struct parser *ps, struct ap_json *v)
{
        const char *s = ps->p, *q = s;
        bool neg = *q == '-', real = false;
        uint64_t mag = 0;
        bool overflow = false;

        if (neg)
                q++;
        if (*q == '0') {
                q++;
        } else if (*q >= '1' && *q <= '9') {
                for (; *q >= '0' && *q <= '9'; q++) {
                        unsigned d = (unsigned)(*q - '0');
                        if (mag > (UINT64_MAX - d) / 10)
                                overflow = true;
                        else
                                mag = mag * 10 + d;
                }
        } else {
                return fail(ps, s, "invalid number");
        }
        /* A fraction and an exponent each need at least one digit. */
        if (*q == '.') {
                real = true;
                const char *digits = q + 1;
                if ((q = skip_digits(digits)) == digits)
                        return fail(ps, s, "invalid number");
        }
        if (*q == 'e' || *q == 'E') {
                real = true;
                const char *digits = q[1] == '+' || q[1] == '-' ? q + 2 : q + 1;
                if ((q = skip_digits(digits)) == digits)
                        return fail(ps, s, "invalid number");
        }
        if (real) {
                /* strtod stops at the first byte that is not part of the number, as the
                 * grammar above did: the text after it is never part of it. */
                char *stop;
                pthread_once(&c_locale_once, make_c_locale);
                double d = c_locale ? strtod_l(s, &stop, c_locale) : strtod(s, &stop);
                if (stop != q)
                        return fail(ps, s, "invalid number");
                if (!isfinite(d))
                        return fail(ps, s, "real number out of range");
                v->type = AP_JSON_REAL;
                v->d = d;
        } else {
                if (overflow || mag > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
                        return fail(ps, s, "integer out of range");
                v->type = AP_JSON_INTEGER;
                v->i = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        }
        v->n = 0;
        ps->p = (char *)q;
        return 0;
}

static int literal(struct parser *ps, const char *word, size_t len)
{
        /* Compared byte by byte: the NUL at the end stops a mismatch before it is passed. */
        for (size_t k = 0; k < len; k++)
                if (ps->p[k] != word[k])
                        return fail(ps, ps->p, "invalid literal");
        ps->p += len;
        return 0;
}

static bool key_is(const struct ap_json_member *m, const char *key, size_t len)
{
        return m->keylen == len && memcmp(m->key, key, len) == 0;
}

static int cmp_keys(const void *a, const void *b)
{
        const struct ap_json_member *x = *(const struct ap_json_member *const *)a;
        const struct ap_json_member *y = *(const struct ap_json_member *const *)b;
        if (x->keylen != y->keylen)
                return x->keylen < y->keylen ? -1 : 1;
        return memcmp(x->key, y->key, x->keylen);
}

/* The key that appears twice among m[0..n), or NULL.  Small objects by pairs, big ones
 * by sorting pointers (so that a hostile object of a million keys stays O(n log n)). */
static int find_duplicate(const struct ap_json_member *m, size_t n,
                          const struct ap_json_member **ret)
{
        *ret = NULL;
        if (n <= 16) {
                for (size_t a = 0; a < n; a++)
                        for (size_t b = a + 1; b < n; b++)
                                if (key_is(&m[a], m[b].key, m[b].keylen)) {
                                        *ret = &m[a];
                                        return 0;
                                }
                return 0;
        }
        const struct ap_json_member **sorted = malloc(n * sizeof(*sorted));
        if (sorted == NULL)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++)
                sorted[k] = &m[k];
        qsort(sorted, n, sizeof(*sorted), cmp_keys);
        for (size_t k = 1; k < n && *ret == NULL; k++)
                if (cmp_keys(&sorted[k - 1], &sorted[k]) == 0)
                        *ret = sorted[k];
        free(sorted);
        return 0;
}

/* Closes the innermost container: its children move from the scratch stack to the arena,
 * and the container is stored in its own slot (or is the root). */
static int close_level(struct parser *ps, const char *at)
{
        const struct level *l = &ps->levels[--ps->nlevels];
        size_t n = ps->nscratch - l->base;
        /* NULL while nothing was ever pushed (scratch is allocated on the first push). */
        const struct ap_json_member *kids = n ? ps->scratch + l->base : NULL;
        struct ap_json v = {.type = l->type};

        if (n > UINT32_MAX)
                return fail(ps, at, "container too large");
        v.n = (uint32_t)n;
        if (l->type == AP_JSON_OBJECT) {
                const struct ap_json_member *dup;
                if (find_duplicate(kids, n, &dup) < 0)
                        return -ENOMEM;
                if (dup != NULL)
                        return fail(ps, at, "duplicate key \"%.40s\" in an object", dup->key);
                struct ap_json_member *m = arena_alloc(ps->doc, n * sizeof(*m) + 1);
                if (m == NULL)
                        return -ENOMEM;
                if (n > 0)
                        memcpy(m, kids, n * sizeof(*m));
                v.members = m;
        } else {
                struct ap_json *items = arena_alloc(ps->doc, n * sizeof(*items) + 1);
                if (items == NULL)
                        return -ENOMEM;
                for (size_t k = 0; k < n; k++)
                        items[k] = kids[k].value;
                v.items = items;
        }
        ps->nscratch = l->base;
        if (ps->nlevels > 0)
                ps->scratch[ps->nscratch - 1].value = v;
        else
                ps->doc->root = v;
        return 0;
}

/* Opens a container at ps->p ('[' or '{'). */
static int open_level(struct parser *ps, uint32_t type)
{
        if (ps->nlevels == AP_JSON_MAX_DEPTH)
                return fail(ps, ps->p, "nested deeper than %d", AP_JSON_MAX_DEPTH);
        ps->levels[ps->nlevels++] = (struct level){.base = ps->nscratch, .type = type};
        ps->p++;
        return 0;
}

/* A key and its colon, then a slot for the member's value. */
static int member_key(struct parser *ps)
{
        const char *key;
        uint32_t keylen;
        int r;

        skip_ws(ps);
        if (*ps->p != '"')
                return fail(ps, ps->p,
                            ps->p == ps->end ? "the document ends inside an object"
                                             : "expected a string (an object's key)");
        if ((r = parse_string(ps, &key, &keylen)) < 0)
                return r;
        skip_ws(ps);
        if (*ps->p != ':')
                return fail(ps, ps->p, "expected ':' after an object's key");
        ps->p++;
        struct ap_json_member *m;
        if ((r = push_slot(ps, &m)) < 0)
                return r;
        m->key = key;
        m->keylen = keylen;
        return 0;
}

static int parse(struct parser *ps)
{
        int r;

        skip_ws(ps);
        if (*ps->p != '{' && *ps->p != '[')
                return fail(ps, ps->p, "expected '{' or '[' at the top of the document");
        for (;;) {
                /* A value is due: the root's, a member's or an element's (its slot is the
                 * top of the scratch stack). */
                skip_ws(ps);
                struct ap_json *v = ps->nlevels ? &ps->scratch[ps->nscratch - 1].value : NULL;
                char c = *ps->p;
                if (c == '{' || c == '[') {
                        uint32_t type = c == '{' ? AP_JSON_OBJECT : AP_JSON_ARRAY;
                        if ((r = open_level(ps, type)) < 0)
                                return r;
                        skip_ws(ps);
                        if (*ps->p == (c == '{' ? '}' : ']')) {
                                if ((r = close_level(ps, ps->p)) < 0)
                                        return r;
                                ps->p++;
                        } else if (type == AP_JSON_OBJECT) {
                                if ((r = member_key(ps)) < 0)
                                        return r;
                                continue;
                        } else {
                                struct ap_json_member *m;
                                if ((r = push_slot(ps, &m)) < 0)
                                        return r;
                                continue;
                        }
                } else if (c == '"') {
                        const char *s;
                        uint32_t len;
                        if ((r = parse_string(ps, &s, &len)) < 0)
                                return r;
                        *v = (struct ap_json){.type = AP_JSON_STRING, .n = len, .s = s};
                } else if (c == '-' || (c >= '0' && c <= '9')) {
                        if ((r = parse_number(ps, v)) < 0)
                                return r;
                } else if (c == 't') {
                        if ((r = literal(ps, "true", 4)) < 0)
                                return r;
                        *v = (struct ap_json){.type = AP_JSON_TRUE};
                } else if (c == 'f') {
                        if ((r = literal(ps, "false", 5)) < 0)
                                return r;
                        *v = (struct ap_json){.type = AP_JSON_FALSE};
                } else if (c == 'n') {
                        if ((r = literal(ps, "null", 4)) < 0)
                                return r;
                        *v = (struct ap_json){.type = AP_JSON_NULL};
                } else if (ps->p == ps->end) {
                        return fail(ps, ps->p, "the document ends where a value is due");
                } else {
                        return fail(ps, ps->p, "expected a value");
                }

                /* The value is complete: close what ends here, then move to the next
                 * element or member, or to the end of the document. */
                for (;;) {
                        if (ps->nlevels == 0) {
                                skip_ws(ps);
                                if (ps->p != ps->end)
                                        return fail(ps, ps->p,
                                                    *ps->p ? "data after the document"
                                                           : "a NUL byte in the document");
                                return 0;
                        }
                        const struct level *l = &ps->levels[ps->nlevels - 1];
                        char close = l->type == AP_JSON_OBJECT ? '}' : ']';
                        skip_ws(ps);
                        if (*ps->p == ',') {
                                ps->p++;
                                struct ap_json_member *m;
                                if (l->type == AP_JSON_OBJECT)
                                        r = member_key(ps);
                                else
                                        r = push_slot(ps, &m);
                                if (r < 0)
                                        return r;
                                break;
                        }
                        if (*ps->p != close)
                                return fail(ps, ps->p,
                                            ps->p == ps->end ? "the document ends inside %s"
                                                             : "expected ',' or the end of %s",
                                            l->type == AP_JSON_OBJECT ? "an object" : "an array");
                        if ((r = close_level(ps, ps->p)) < 0)
                                return r;
                        ps->p++;
                }
        }
}

int ap_json_parse(char *text, size_t len, struct ap_json_doc **ret, struct ap_json_error *err)
{
        struct parser *ps = calloc(1, sizeof(*ps));
        struct ap_json_doc *doc = calloc(1, sizeof(*doc));
        int r;

        if (ps == NULL || doc == NULL) {
                free(ps);
                free(doc);
                return -ENOMEM;
        }
        *ps = (struct parser){.p = text,
                              .end = text + len,
                              .line_start = text,
                              .line = 1,
                              .doc = doc,
                              .err = err};
        r = parse(ps);
        free(ps->scratch);
        free(ps);
        if (r < 0) {
                ap_json_free(doc);
                return r;
        }
        *ret = doc;
        return 0;
}

const struct ap_json *ap_json_root(const struct ap_json_doc *doc)
{
        return &doc->root;
}

void ap_json_free(struct ap_json_doc *doc)
{
        if (doc == NULL)
                return;
        for (struct chunk *c = doc->chunks, *next; c != NULL; c = next) {
                next = c->next;
                free(c);
        }
        free(doc);
}

const struct ap_json *ap_json_get(const struct ap_json *o, const char *key)
{
        if (!ap_json_is(o, AP_JSON_OBJECT))
                return NULL;
        size_t len = strlen(key);
        for (uint32_t k = 0; k < o->n; k++)
                if (key_is(&o->members[k], key, len))
                        return &o->members[k].value;
        return NULL;
}
