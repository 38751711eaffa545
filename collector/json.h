/* A strict JSON (RFC 8259) reader for documents we must not trust: one call parses a whole
 * document in place into a read-only tree of 16-byte values, held in one arena.  Built for
 * profile files, whose hundreds of thousands of small integers jansson's tree made slow to
 * read and costly to hold.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Nesting deeper than this is refused (the parser does not recurse; the limit keeps a
 * hostile file from making the tree's readers recurse). */
#define AP_JSON_MAX_DEPTH 512

/* A document of more values than this is refused: each costs 16 bytes in the tree and up
 * to twice that more while its container is open, so a hostile text of one-digit numbers
 * ("[0,0,0,...", 2 bytes a value, a few MB gzip'ed) would otherwise cost 24 times its size
 * (gigabytes).  This bounds the parser's memory to about 3 GiB besides the text.  A
 * compiler's profile has about 100,000 values, one of a million call sites 19 million:
 * the bound leaves room for profiles three times that, which the collector can write
 * (with a few GiB of memory), so that report reads what it writes.  (Tests build json.c
 * with a smaller one.) */
#ifndef AP_JSON_MAX_VALUES
#define AP_JSON_MAX_VALUES (1u << 26)
#endif

enum ap_json_type {
        AP_JSON_NULL,
        AP_JSON_FALSE,
        AP_JSON_TRUE,
        AP_JSON_INTEGER,
        AP_JSON_REAL,
        AP_JSON_STRING,
        AP_JSON_ARRAY,
        AP_JSON_OBJECT,
};

struct ap_json_member;

/* A value.  Strings are valid UTF-8 without NUL bytes, NUL-terminated; a container's
 * children are contiguous, in document order. */
struct ap_json {
        uint32_t type; /* enum ap_json_type */
        uint32_t n;    /* string: its bytes; array: its elements; object: its members */
        union {
                int64_t i;                            /* AP_JSON_INTEGER */
                double d;                             /* AP_JSON_REAL (finite) */
                const char *s;                        /* AP_JSON_STRING */
                const struct ap_json *items;          /* AP_JSON_ARRAY */
                const struct ap_json_member *members; /* AP_JSON_OBJECT: keys are unique */
        };
};

struct ap_json_member {
        const char *key; /* like a string value */
        uint32_t keylen;
        struct ap_json value;
};

struct ap_json_doc;

/* Where and why a document was refused: line and column (in bytes) count from 1. */
struct ap_json_error {
        int line, column;
        char text[96];
};

/* Parses text[0..len) (text[len] must be a NUL byte the parser may read), whose top level
 * must be an object or an array, with nothing but whitespace after it.  Strings are
 * decoded in place, so text is changed and must outlive the tree.  Rejected: anything
 * outside RFC 8259, invalid UTF-8, "\u0000", lone surrogates, integers outside int64,
 * reals that overflow a double, duplicate keys in one object, nesting deeper than
 * AP_JSON_MAX_DEPTH, more than AP_JSON_MAX_VALUES values.
 * Returns 0 with *ret (free it with ap_json_free), -EINVAL with *err filled in, or
 * -ENOMEM.  Thread-safe: it touches no global state. */
int ap_json_parse(char *text, size_t len, struct ap_json_doc **ret, struct ap_json_error *err);

/* The document's top-level value; valid until ap_json_free(doc). */
const struct ap_json *ap_json_root(const struct ap_json_doc *doc);

/* Frees the tree (not the text).  Accepts NULL. */
void ap_json_free(struct ap_json_doc *doc);

/* Member `key` of object o, or NULL if o is NULL, not an object, or has no such key. */
const struct ap_json *ap_json_get(const struct ap_json *o, const char *key);

static inline bool ap_json_is(const struct ap_json *v, enum ap_json_type t)
{
        return v != NULL && v->type == (uint32_t)t;
}

/* Element i of array a, or NULL if a is NULL, not an array, or has no element i. */
static inline const struct ap_json *ap_json_at(const struct ap_json *a, size_t i)
{
        return ap_json_is(a, AP_JSON_ARRAY) && i < a->n ? &a->items[i] : NULL;
}
