/* A tiny test runner: no dependencies, one binary per seam. A test is a
 * function; CHECK records a failure and goes on, so one run shows every
 * broken expectation. The last line, "<name>: N passed, N failed", is
 * what the Makefile adds up. */
#ifndef SLUICE_CHECK_H
#define SLUICE_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;            /* in the running test */
static int tests_passed, tests_failed;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            check_failures++;                                               \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__,        \
                    __LINE__, #cond);                                       \
        }                                                                   \
    } while (0)

#define CHECK_EQ(a, b)                                                      \
    do {                                                                    \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);     \
        if (check_a_ != check_b_) {                                         \
            check_failures++;                                               \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n",     \
                    __FILE__, __LINE__, #a, #b, check_a_, check_b_);        \
        }                                                                   \
    } while (0)

/* Does the n bytes at p contain the string needle? */
static inline int contains(const char *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (memcmp(p + i, needle, k) == 0)
            return 1;
    return 0;
}

#define RUN(test)                                                           \
    do {                                                                    \
        check_failures = 0;                                                 \
        test();                                                             \
        if (check_failures) {                                               \
            tests_failed++;                                                 \
            fprintf(stderr, "FAIL %s\n", #test);                            \
        } else {                                                            \
            tests_passed++;                                                 \
            printf("ok   %s\n", #test);                                     \
        }                                                                   \
    } while (0)

#define CHECK_SUMMARY(name)                                                 \
    (printf("%s: %d passed, %d failed\n", name, tests_passed, tests_failed), \
     tests_failed ? 1 : 0)

#endif
