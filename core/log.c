#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_INFO;

static const char *const names[] = { "debug", "info", "warn", "error" };

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

/* One line: time stamp, level, message, newline; returns its length. */
static size_t format_line(char *line, size_t size, enum log_level level, const char *fmt,
                          va_list ap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, size, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, size - (size_t)n, ".%03ldZ [%s] ",
                  ts.tv_nsec / 1000000, names[level]);
    int m = vsnprintf(line + n, size - (size_t)n - 1, fmt, ap);
    n = (m < 0 || (size_t)(n + m) >= size - 1) ? (int)size - 2 : n + m;
    line[n++] = '\n';
    return (size_t)n;
}

void log_at(enum log_level level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, sizeof line, level, fmt, ap);
    va_end(ap);
    /* One write(2) per line keeps lines whole when several threads or
     * processes share the log, without a lock; a failed log write has
     * nowhere better to be reported. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}

void log_now(enum log_level level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, sizeof line, level, fmt, ap);
    va_end(ap);
    /* Straight to the descriptor, as log_at: no stdio lock is taken. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}
