/* libdemoshapes: shapes that live on the heap, each with a heap-allocated name.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#include "libdemoshapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shape *shape_new(enum shape_kind kind, const double size[3], const char *name)
{
        struct shape *s = malloc(sizeof(*s));
        if (!s)
                return NULL;
        s->kind = kind;
        memcpy(s->size, size, sizeof(s->size));
        size_t len = strlen(name) + 1;
        s->name = malloc(len);
        if (!s->name) {
                free(s);
                return NULL;
        }
        memcpy(s->name, name, len);
        return s;
}

void shape_free(struct shape *s)
{
        if (!s)
                return;
        free(s->name);
        free(s);
}

double shape_area(const struct shape *s)
{
        const double *x = s->size;

        switch (s->kind) {
        case SHAPE_CIRCLE:
                return M_PI * x[0] * x[0];
        case SHAPE_SQUARE:
                return x[0] * x[0];
        case SHAPE_TRIANGLE: {
                double p = (x[0] + x[1] + x[2]) / 2; /* Heron's formula */
                double a2 = p * (p - x[0]) * (p - x[1]) * (p - x[2]);
                return a2 > 0 ? sqrt(a2) : 0;
        }
        }
        return 0;
}

char *shape_describe(const struct shape *s)
{
        static const char *const kinds[] = { "circle", "square", "triangle" };
        static const char format[] = "%s %s: %.1f %.1f %.1f";

        /* Measure, then allocate exactly: one allocation, made here. */
        int len = snprintf(NULL, 0, format, kinds[s->kind], s->name, s->size[0], s->size[1],
                           s->size[2]);
        if (len < 0)
                return NULL;
        char *text = malloc((size_t)len + 1);
        if (!text)
                return NULL;
        snprintf(text, (size_t)len + 1, format, kinds[s->kind], s->name, s->size[0],
                 s->size[1], s->size[2]);
        return text;
}
