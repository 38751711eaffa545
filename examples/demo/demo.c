/* demo: the program to profile first.  It reads a list of shape records and exercises
 * every part of an allocprof report:
 *
 *   parse_record -> make_token -> copy_text   a hot site three calls deep
 *   remember_name                             a deliberate leak
 *   make_label                                churn: small blocks freed right away
 *   log_append                                a buffer grown by realloc
 *   shape_new, shape_describe                 allocations in libdemoshapes.so
 *   worker_main                               a second thread allocating
 *
 *     allocprof run -o demo.approf -- ./demo
 *     allocprof report demo.approf
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libdemoshapes.h"

enum {
        RECORDS = 2000,       /* records parsed by the main thread */
        MAX_TOKENS = 4,       /* "triangle 3 4 5" */
        REMEMBER_EVERY = 100, /* every 100th shape name is kept, and never freed */
        WORKER_SHAPES = 500,  /* squares made and dropped by the second thread */
};

static void die(const char *what)
{
        fprintf(stderr, "demo: %s: out of memory\n", what);
        exit(1);
}

/* ---- the hot path: parse_record -> make_token -> copy_text -> malloc ---- */

static char *copy_text(const char *text, size_t len)
{
        char *copy = malloc(len + 1);
        if (!copy)
                die("copy_text");
        memcpy(copy, text, len);
        copy[len] = '\0';
        return copy;
}

/* Returns the next space-separated token of *cursor as a new string, or NULL at the end. */
static char *make_token(const char **cursor)
{
        const char *start = *cursor + strspn(*cursor, " ");
        size_t len = strcspn(start, " ");

        if (len == 0)
                return NULL;
        *cursor = start + len;
        return copy_text(start, len);
}

/* "circle 3", "square 4" or "triangle 3 4 5" -> a shape named `name`. */
static struct shape *parse_record(const char *record, const char *name)
{
        char *tokens[MAX_TOKENS] = { NULL };
        const char *cursor = record;
        int n = 0;

        while (n < MAX_TOKENS && (tokens[n] = make_token(&cursor)))
                n++;

        double size[3] = { 0, 0, 0 };
        for (int i = 1; i < n; i++)
                size[i - 1] = strtod(tokens[i], NULL);

        enum shape_kind kind = SHAPE_CIRCLE;
        if (n > 0 && strcmp(tokens[0], "square") == 0)
                kind = SHAPE_SQUARE;
        else if (n > 0 && strcmp(tokens[0], "triangle") == 0)
                kind = SHAPE_TRIANGLE;

        for (int i = 0; i < n; i++)
                free(tokens[i]);

        struct shape *s = shape_new(kind, size, name);
        if (!s)
                die("shape_new");
        return s;
}

/* ---- a leak: names remembered in a list that nobody frees ---- */

struct remembered {
        struct remembered *next;
        char name[];
};

static struct remembered *remembered_names;

static void remember_name(const char *name)
{
        size_t len = strlen(name) + 1;
        struct remembered *r = malloc(sizeof(*r) + len);
        if (!r)
                die("remember_name");
        memcpy(r->name, name, len);
        r->next = remembered_names;
        remembered_names = r;
}

/* ---- churn: a temporary label per record, freed as soon as it is used ---- */

static char *make_label(int index)
{
        char *label = malloc(16);
        if (!label)
                die("make_label");
        snprintf(label, 16, "s%d", index);
        return label;
}

/* ---- a log that grows by realloc ---- */

struct log {
        char *text;
        size_t len, cap;
};

static void log_append(struct log *log, const char *line)
{
        size_t need = log->len + strlen(line) + 2; /* line, '\n', '\0' */

        if (need > log->cap) {
                size_t cap = log->cap ? log->cap : 64;
                while (cap < need)
                        cap *= 2;
                char *text = realloc(log->text, cap);
                if (!text)
                        die("log_append");
                log->text = text;
                log->cap = cap;
        }
        log->len += (size_t)sprintf(log->text + log->len, "%s\n", line);
}

/* ---- the second thread: squares made and dropped in the library ---- */

static void *worker_main(void *arg)
{
        double *area = arg;

        for (int i = 0; i < WORKER_SHAPES; i++) {
                double size[3] = { 1 + i % 10, 0, 0 };
                struct shape *s = shape_new(SHAPE_SQUARE, size, "worker square");
                if (!s)
                        die("worker");
                *area += shape_area(s);
                shape_free(s);
        }
        return NULL;
}

int main(void)
{
        static const char *const records[] = { "circle 3", "square 4", "triangle 3 4 5",
                                               "circle 1.5", "square 2", "triangle 5 5 6" };
        struct log log = { NULL, 0, 0 };
        double area = 0, worker_area = 0;
        pthread_t worker;

        if (pthread_create(&worker, NULL, worker_main, &worker_area) != 0) {
                fprintf(stderr, "demo: cannot start the worker thread\n");
                return 1;
        }

        for (int i = 0; i < RECORDS; i++) {
                char *label = make_label(i);
                struct shape *s = parse_record(records[i % 6], label);
                free(label);

                area += shape_area(s);
                char *description = shape_describe(s);
                if (!description)
                        die("shape_describe");
                log_append(&log, description);
                free(description);

                if (i % REMEMBER_EVERY == 0)
                        remember_name(s->name);
                shape_free(s);
        }

        pthread_join(worker, NULL);

        printf("demo: %d records, total area %.2f\n", RECORDS, area);
        printf("demo: log of %zu bytes in a %zu-byte buffer\n", log.len, log.cap);
        printf("demo: worker made %d squares, total area %.2f\n", WORKER_SHAPES, worker_area);
        free(log.text);
        return 0;
}
