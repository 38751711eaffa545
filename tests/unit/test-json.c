/* The strict JSON reader (collector/json.c): chosen documents it must accept with their
 * exact values, chosen ones it must refuse at the right place, and a differential run
 * against jansson on generated and corrupted documents: both must accept the same ones
 * and read the same values from them.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "helpers.h"
#include "json.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A private copy with the NUL that ap_json_parse wants after it. */
static char *copy_text(const char *text, size_t len)
{
        char *t = malloc(len + 1);
        ASSERT_NOT_NULL(t);
        memcpy(t, text, len);
        t[len] = '\0';
        return t;
}

static struct ap_json_doc *accept_doc(const char *text, char **buf)
{
        struct ap_json_doc *doc = NULL;
        struct ap_json_error err = {0};
        *buf = copy_text(text, strlen(text));
        int r = ap_json_parse(*buf, strlen(text), &doc, &err);
        if (r != 0)
                fprintf(stderr, "refused %s: line %d column %d: %s\n", text, err.line, err.column,
                        err.text);
        ASSERT_EQ(r, 0);
        return doc;
}

static void expect_refused(const char *text, size_t len, int line, int column, const char *needle)
{
        struct ap_json_doc *doc = NULL;
        struct ap_json_error err = {0};
        char *buf = copy_text(text, len);
        ASSERT_EQ(ap_json_parse(buf, len, &doc, &err), -EINVAL);
        ASSERT_NULL(doc);
        ASSERT_CONTAINS(err.text, needle);
        ASSERT_EQ(err.line, line);
        ASSERT_EQ(err.column, column);
        free(buf);
}

#define REFUSED(text, line, column, needle) \
        expect_refused(text, sizeof(text) - 1, line, column, needle)

static void test_values(void)
{
        char *buf;
        struct ap_json_doc *doc = accept_doc(
                " {\"i\":[0,-0,9223372036854775807,-9223372036854775808,12],\n"
                "  \"r\":[1.5,-2e3,1E-2,0.25e+1],\"s\":[\"\",\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\","
                "\"\\u00e9\\u20AC\\ud83d\\ude00\",\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"],"
                "\"l\":[true,false,null],\"e\":[{},[]],\"\":{\"deep\":[[[1]]]}}\t\r\n",
                &buf);
        const struct ap_json *root = ap_json_root(doc);
        ASSERT_TRUE(ap_json_is(root, AP_JSON_OBJECT));
        ASSERT_EQ(root->n, 6);

        const struct ap_json *i = ap_json_get(root, "i");
        ASSERT_EQ(i->n, 5);
        const int64_t want[] = {0, 0, INT64_MAX, INT64_MIN, 12};
        for (size_t k = 0; k < 5; k++) {
                ASSERT_TRUE(ap_json_is(ap_json_at(i, k), AP_JSON_INTEGER));
                ASSERT_EQ(ap_json_at(i, k)->i, want[k]);
        }
        ASSERT_NULL(ap_json_at(i, 5));
        ASSERT_NULL(ap_json_at(root, 0)); /* not an array */

        const struct ap_json *r = ap_json_get(root, "r");
        const double wantd[] = {1.5, -2000, 0.01, 2.5};
        for (size_t k = 0; k < 4; k++) {
                ASSERT_TRUE(ap_json_is(ap_json_at(r, k), AP_JSON_REAL));
                ASSERT_TRUE(ap_json_at(r, k)->d == wantd[k]);
        }

        const struct ap_json *s = ap_json_get(root, "s");
        ASSERT_STREQ(ap_json_at(s, 0)->s, "");
        ASSERT_EQ(ap_json_at(s, 0)->n, 0);
        ASSERT_STREQ(ap_json_at(s, 1)->s, "a\"\\/\b\f\n\r\t");
        ASSERT_EQ(ap_json_at(s, 1)->n, 9);
        /* Escaped and raw, the same three characters and an emoji (a surrogate pair). */
        ASSERT_STREQ(ap_json_at(s, 2)->s, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
        ASSERT_STREQ(ap_json_at(s, 3)->s, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
        ASSERT_EQ(ap_json_at(s, 2)->n, 9);

        const struct ap_json *l = ap_json_get(root, "l");
        ASSERT_TRUE(ap_json_is(ap_json_at(l, 0), AP_JSON_TRUE));
        ASSERT_TRUE(ap_json_is(ap_json_at(l, 1), AP_JSON_FALSE));
        ASSERT_TRUE(ap_json_is(ap_json_at(l, 2), AP_JSON_NULL));

        const struct ap_json *e = ap_json_get(root, "e");
        ASSERT_TRUE(ap_json_is(ap_json_at(e, 0), AP_JSON_OBJECT));
        ASSERT_EQ(ap_json_at(e, 0)->n, 0);
        ASSERT_TRUE(ap_json_is(ap_json_at(e, 1), AP_JSON_ARRAY));
        ASSERT_EQ(ap_json_at(e, 1)->n, 0);

        const struct ap_json *deep = ap_json_get(ap_json_get(root, ""), "deep");
        ASSERT_EQ(ap_json_at(ap_json_at(ap_json_at(deep, 0), 0), 0)->i, 1);
        ASSERT_NULL(ap_json_get(root, "missing"));
        ASSERT_NULL(ap_json_get(i, "i")); /* not an object */
        ap_json_free(doc);
        free(buf);

        /* The top level may be an array, and empty. */
        doc = accept_doc("[]", &buf);
        ASSERT_TRUE(ap_json_is(ap_json_root(doc), AP_JSON_ARRAY));
        ASSERT_EQ(ap_json_root(doc)->n, 0);
        ap_json_free(doc);
        free(buf);
        ap_json_free(NULL);
}

static void test_refused(void)
{
        REFUSED("", 1, 1, "expected '{' or '['");
        REFUSED("null", 1, 1, "expected '{' or '['");
        REFUSED("  7", 1, 3, "expected '{' or '['");
        REFUSED("{", 1, 2, "the document ends inside an object");
        REFUSED("[1,", 1, 4, "the document ends where a value is due");
        REFUSED("[1 2]", 1, 4, "expected ',' or the end of an array");
        REFUSED("[1,]", 1, 4, "expected a value");
        REFUSED("{\"a\":1,}", 1, 8, "expected a string");
        REFUSED("{\"a\" 1}", 1, 6, "expected ':'");
        REFUSED("{a:1}", 1, 2, "expected a string");
        REFUSED("{\"a\":1]", 1, 7, "expected ',' or the end of an object");
        REFUSED("[]]", 1, 3, "data after the document");
        REFUSED("[] x", 1, 4, "data after the document");
        REFUSED("[1]\0 ", 1, 4, "a NUL byte");
        REFUSED("[1,\0]", 1, 4, "expected a value");
        REFUSED("[\"a\0b\"]", 1, 4, "control character in a string");
        REFUSED("[\"a\tb\"]", 1, 4, "control character in a string");
        REFUSED("[\n\"abc", 2, 1, "unterminated string");
        REFUSED("[\"\\x\"]", 1, 3, "invalid escape");
        REFUSED("[\"\\", 1, 3, "invalid escape");
        REFUSED("[\"\\u12G4\"]", 1, 3, "invalid \\u escape");
        REFUSED("[\"\\u00", 1, 3, "invalid \\u escape");
        REFUSED("[\"\\u0000\"]", 1, 3, "\\u0000");
        REFUSED("[\"\\ud800\"]", 1, 3, "lone high surrogate");
        REFUSED("[\"\\ud800\\u0041\"]", 1, 3, "lone high surrogate");
        REFUSED("[\"\\udc00\"]", 1, 3, "lone low surrogate");
        REFUSED("[\"\xc0\x80\"]", 1, 3, "invalid UTF-8");         /* overlong NUL */
        REFUSED("[\"\xe0\x9f\xbf\"]", 1, 3, "invalid UTF-8");     /* overlong */
        REFUSED("[\"\xed\xa0\x80\"]", 1, 3, "invalid UTF-8");     /* a surrogate */
        REFUSED("[\"\xf4\x90\x80\x80\"]", 1, 3, "invalid UTF-8"); /* above U+10FFFF */
        REFUSED("[\"\xf5\x80\x80\x80\"]", 1, 3, "invalid UTF-8");
        REFUSED("[\"\x80\"]", 1, 3, "invalid UTF-8");
        REFUSED("[\"\xe2\x82\"]", 1, 3, "invalid UTF-8"); /* cut short */
        REFUSED("[\"\xe2\x82", 1, 3, "invalid UTF-8");    /* cut short at the end */
        REFUSED("[01]", 1, 3, "expected ',' or the end of an array");
        REFUSED("[-]", 1, 2, "invalid number");
        REFUSED("[-a]", 1, 2, "invalid number");
        REFUSED("[.5]", 1, 2, "expected a value");
        REFUSED("[1.]", 1, 2, "invalid number");
        REFUSED("[1e]", 1, 2, "invalid number");
        REFUSED("[1e+]", 1, 2, "invalid number");
        REFUSED("[+1]", 1, 2, "expected a value");
        REFUSED("[9223372036854775808]", 1, 2, "integer out of range");
        REFUSED("[-9223372036854775809]", 1, 2, "integer out of range");
        REFUSED("[123456789012345678901234567890]", 1, 2, "integer out of range");
        REFUSED("[1e999]", 1, 2, "real number out of range");
        REFUSED("[-1.5e400]", 1, 2, "real number out of range");
        REFUSED("[tru]", 1, 2, "invalid literal");
        REFUSED("[nul", 1, 2, "invalid literal");
        REFUSED("[falsey]", 1, 7, "expected ',' or the end of an array");
        REFUSED("{\"a\":1,\n \"a\":2}", 2, 7, "duplicate key \"a\"");
        REFUSED("{\"a\":{\"b\":1,\"b\":1},\"c\":0}", 1, 18, "duplicate key \"b\"");
        /* Keys that differ only after a NUL-free prefix, and equal ones in a big object
         * (the sorted check). */
        char big[2048];
        size_t n = 0;
        n += (size_t)snprintf(big + n, sizeof(big) - n, "{");
        for (int k = 0; k < 40; k++)
                n += (size_t)snprintf(big + n, sizeof(big) - n, "%s\"key%d\":%d", k ? "," : "",
                                      k % 39 == 0 && k ? 0 : k, k);
        n += (size_t)snprintf(big + n, sizeof(big) - n, "}");
        expect_refused(big, n, 1, (int)n, "duplicate key \"key0\"");
        big[n - 2] = '9'; /* key0 twice still: the value changed, not the key */
        expect_refused(big, n, 1, (int)n, "duplicate key");
}

static void test_depth(void)
{
        size_t depth = AP_JSON_MAX_DEPTH;
        char *text = malloc(2 * depth + 2);
        ASSERT_NOT_NULL(text);
        memset(text, '[', depth);
        memset(text + depth, ']', depth);
        text[2 * depth] = '\0';
        char *buf;
        struct ap_json_doc *doc = accept_doc(text, &buf);
        const struct ap_json *v = ap_json_root(doc);
        for (size_t k = 1; k < depth; k++)
                v = ap_json_at(v, 0);
        ASSERT_TRUE(ap_json_is(v, AP_JSON_ARRAY));
        ASSERT_EQ(v->n, 0);
        ap_json_free(doc);
        free(buf);

        memset(text, '[', depth + 1);
        memset(text + depth + 1, ']', depth + 1);
        expect_refused(text, 2 * depth + 2, 1, (int)depth + 1, "nested deeper than");
        free(text);
}

/* A document of "[0,0,...]" costs 48 bytes a value while it is parsed, for 2 bytes of
 * text: a few MB of gzip'ed profile made gigabytes.  The number of values is bounded
 * (this test is built with a bound of 100,000 instead of 2^25), the root counting as
 * one; the error is where the value one too many starts. */
static void test_max_values(void)
{
        const size_t max = AP_JSON_MAX_VALUES;
        char *text = malloc(16 * max);
        ASSERT_NOT_NULL(text);
        ASSERT_EQ(max, 100000u);
        for (int kind = 0; kind < 3; kind++) {
                /* max - 1 elements of an array, or of arrays in an array: max values. */
                size_t len = 0;
                text[len++] = '[';
                for (size_t k = 0; k + 1 < max; k++) {
                        if (k > 0)
                                text[len++] = ',';
                        if (kind == 0)
                                text[len++] = '0';
                        else if (kind == 1)
                                text[len++] = '"', text[len++] = '"';
                        else
                                text[len++] = '[', text[len++] = ']';
                }
                text[len++] = ']';
                text[len] = '\0';
                char *buf;
                struct ap_json_doc *doc = accept_doc(text, &buf);
                ASSERT_EQ(ap_json_root(doc)->n, max - 1);
                ap_json_free(doc);
                free(buf);
                /* One more. */
                size_t at = len - 1;
                const char *more = kind == 0 ? ",0]" : kind == 1 ? ",\"\"]" : ",[]]";
                memcpy(text + at, more, strlen(more) + 1);
                expect_refused(text, strlen(text), 1, (int)at + 2, "more than 100000 values");
        }
        /* Members of an object count as well. */
        size_t len = 0;
        len += (size_t)sprintf(text + len, "{");
        for (size_t k = 0; k < max; k++)
                len += (size_t)sprintf(text + len, "%s\"%zx\":0", k ? "," : "", k);
        len += (size_t)sprintf(text + len, "}");
        struct ap_json_doc *doc = NULL;
        struct ap_json_error err = {0};
        char *buf = copy_text(text, len);
        ASSERT_EQ(ap_json_parse(buf, len, &doc, &err), -EINVAL);
        ASSERT_CONTAINS(err.text, "more than 100000 values");
        free(buf);
        free(text);
}

/* ---- against jansson ---------------------------------------------------------------- */

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
        /* xorshift64*: fixed seed, so a failure repeats. */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dull;
}

static unsigned pick(unsigned n)
{
        return (unsigned)(rnd() % n);
}

struct text {
        char *s;
        size_t len, cap;
};

static void put(struct text *t, const char *s, size_t n)
{
        if (t->len + n + 1 > t->cap) {
                t->cap = (t->len + n + 1) * 2;
                t->s = realloc(t->s, t->cap);
                ASSERT_NOT_NULL(t->s);
        }
        memcpy(t->s + t->len, s, n);
        t->len += n;
        t->s[t->len] = '\0';
}

static void puts_(struct text *t, const char *s)
{
        put(t, s, strlen(s));
}

static void gen_ws(struct text *t)
{
        static const char *ws[] = {"", "", "", " ", "\n", "\t", "\r\n "};
        puts_(t, ws[pick(7)]);
}

static void gen_string(struct text *t)
{
        static const char *parts[] = {
                "a",
                "key",
                "x y",
                "\\\"",
                "\\\\",
                "\\/",
                "\\n",
                "\\t",
                "\\b",
                "\\u0041",
                "\\u00e9",
                "\\u20ac",
                "\\ud83d\\ude00",
                "\xc3\xa9",
                "\xe2\x82\xac",
                "\xf0\x9f\x98\x80",
                "\x7f",
                "\\ud800",
                "\\udc00",
                "\\u0000",
                "\xc0\x80",
                "\xed\xa0\x80",
                "\xff",
                "\\q",
        };
        /* Mostly valid parts; the last seven are errors. */
        puts_(t, "\"");
        for (unsigned k = pick(4); k > 0; k--)
                puts_(t, parts[pick(8) ? pick(17) : pick(ARRAY_SIZE(parts))]);
        puts_(t, "\"");
}

static void gen_number(struct text *t)
{
        static const char *nums[] = {
                "0",
                "-0",
                "7",
                "-12",
                "1.5",
                "-0.25",
                "1e3",
                "2E-2",
                "1e+2",
                "3.75e1",
                "1e400",
                "1e-400",
                "01",
                "1.",
                "9223372036854775807",
                "-9223372036854775808",
                "9223372036854775808",
                "-9223372036854775809",
                "18446744073709551616",
                "123456789",
        };
        puts_(t, nums[pick(ARRAY_SIZE(nums))]);
}

static void gen_value(struct text *t, int depth)
{
        unsigned kind = depth > 5 ? 3 + pick(5) : pick(8);
        gen_ws(t);
        switch (kind) {
        case 0:
        case 1: {
                bool obj = kind == 0;
                puts_(t, obj ? "{" : "[");
                unsigned n = pick(5);
                for (unsigned k = 0; k < n; k++) {
                        if (k)
                                puts_(t, ",");
                        if (obj) {
                                gen_ws(t);
                                /* Few distinct keys, so duplicates happen. */
                                static const char *keys[] = {"\"a\"", "\"b\"",      "\"c\"",
                                                             "\"d\"", "\"e\"",      "\"f\"",
                                                             "\"g\"", "\"\\u0061\""};
                                puts_(t, pick(3) ? keys[k] : keys[pick(8)]);
                                gen_ws(t);
                                puts_(t, ":");
                        }
                        gen_value(t, depth + 1);
                }
                gen_ws(t);
                puts_(t, obj ? "}" : "]");
                break;
        }
        case 2:
        case 3:
                gen_string(t);
                break;
        case 4:
        case 5:
                gen_number(t);
                break;
        case 6:
                puts_(t, pick(2) ? "true" : "false");
                break;
        default:
                puts_(t, "null");
                break;
        }
        gen_ws(t);
}

static void mutate(struct text *t)
{
        static const char interesting[] = "\"\\,:[]{}0-e. \nu\x80\xc0\xed\xff";
        if (t->len == 0)
                return;
        size_t at = pick((unsigned)t->len);
        switch (pick(4)) {
        case 0: /* replace a byte (sizeof counts the string's NUL: a NUL byte too) */
                t->s[at] = interesting[pick(sizeof(interesting))];
                break;
        case 1: /* delete one */
                memmove(t->s + at, t->s + at + 1, t->len - at);
                t->len--;
                break;
        case 2: { /* insert one */
                char c = interesting[pick(sizeof(interesting))];
                put(t, " ", 1);
                memmove(t->s + at + 1, t->s + at, t->len - at - 1);
                t->s[at] = c;
                break;
        }
        default: /* cut the end off */
                t->len = at;
                t->s[at] = '\0';
                break;
        }
}

/* Whether our tree and jansson's hold the same values. */
static bool same(const struct ap_json *a, const json_t *b)
{
        switch ((enum ap_json_type)a->type) {
        case AP_JSON_NULL:
                return json_is_null(b);
        case AP_JSON_TRUE:
                return json_is_true(b);
        case AP_JSON_FALSE:
                return json_is_false(b);
        case AP_JSON_INTEGER:
                return json_is_integer(b) && json_integer_value(b) == a->i;
        case AP_JSON_REAL:
                return json_is_real(b) && json_real_value(b) == a->d;
        case AP_JSON_STRING:
                return json_is_string(b) && json_string_length(b) == a->n &&
                       memcmp(json_string_value(b), a->s, a->n) == 0 && a->s[a->n] == '\0';
        case AP_JSON_ARRAY:
                if (!json_is_array(b) || json_array_size(b) != a->n)
                        return false;
                for (uint32_t k = 0; k < a->n; k++)
                        if (!same(&a->items[k], json_array_get(b, k)))
                                return false;
                return true;
        case AP_JSON_OBJECT:
                if (!json_is_object(b) || json_object_size(b) != a->n)
                        return false;
                for (uint32_t k = 0; k < a->n; k++) {
                        const json_t *v = json_object_get(b, a->members[k].key);
                        if (v == NULL || strlen(a->members[k].key) != a->members[k].keylen ||
                            !same(&a->members[k].value, v))
                                return false;
                }
                return true;
        }
        return false;
}

static void test_against_jansson(void)
{
        const int rounds = 60000;
        int accepted = 0, refused = 0;
        struct text t = {0};

        for (int round = 0; round < rounds; round++) {
                t.len = 0;
                puts_(&t, "");
                gen_value(&t, pick(4) ? 0 : 5);
                if (t.s[strspn(t.s, " \t\r\n")] != '{' && t.s[strspn(t.s, " \t\r\n")] != '[' &&
                    pick(2)) {
                        /* Mostly documents with a container on top, as both want. */
                        t.len = 0;
                        puts_(&t, "[");
                        gen_value(&t, 1);
                        puts_(&t, "]");
                }
                for (unsigned m = pick(3) ? 0 : 1 + pick(3); m > 0; m--)
                        mutate(&t);

                json_error_t jerr;
                json_t *j = json_loadb(t.s, t.len, JSON_REJECT_DUPLICATES, &jerr);
                char *buf = copy_text(t.s, t.len);
                struct ap_json_doc *doc = NULL;
                struct ap_json_error err = {0};
                int r = ap_json_parse(buf, t.len, &doc, &err);
                /* jansson passes over a NUL byte between tokens; RFC 8259 has no place
                 * for one outside a string's \u escape, and we refuse it everywhere. */
                bool nul = memchr(t.s, '\0', t.len) != NULL;
                if (nul && j != NULL) {
                        json_decref(j);
                        j = NULL;
                }
                if ((r == 0) != (j != NULL) || (r != 0 && r != -EINVAL) ||
                    (r == 0 && !same(ap_json_root(doc), j))) {
                        fprintf(stderr, "round %d: ours %d (%s), jansson %s (%s) on:\n", round, r,
                                err.text, j ? "accepted" : "refused", j ? "" : jerr.text);
                        for (size_t k = 0; k < t.len; k++)
                                fprintf(stderr,
                                        (unsigned char)t.s[k] < 0x20 ||
                                                        (unsigned char)t.s[k] >= 0x7f
                                                ? "\\x%02x"
                                                : "%c",
                                        (unsigned char)t.s[k]);
                        fprintf(stderr, "\n");
                        ASSERT_TRUE(false);
                }
                if (r == 0)
                        accepted++;
                else if (!nul)
                        refused++;
                ap_json_free(doc);
                free(buf);
                json_decref(j);
        }
        free(t.s);
        printf("against jansson: %d documents accepted by both, %d refused by both (and %d "
               "with a NUL byte refused by us)\n",
               accepted, refused, rounds - accepted - refused);
        /* The generator must exercise both sides. */
        ASSERT_TRUE(accepted > rounds / 5);
        ASSERT_TRUE(refused > rounds / 5);
}

int main(void)
{
        test_values();
        test_refused();
        test_depth();
        test_max_values();
        test_against_jansson();
        printf("test-json: ok\n");
        return 0;
}
