/*
 * The libboc test runner:
 *   boc_tests [--seed N] [--controlled] [--stress-behaviors N] [--no-fork]
 *             [--list] [name...]
 *
 * With no names it runs every case of test_list.h; otherwise just the named
 * ones.  Each case runs in a forked child process (unless --no-fork), so a
 * failing ASSERT, a crash, a sanitizer report (non-zero exit) or a hang (the
 * child's alarm) fails only that case.  It prints one line per case and a
 * final line "N passed, M failed"; the exit status is non-zero on failure.
 * A failing case is followed by the exact command that reruns it.
 *
 * The seed (--seed N or BOC_TEST_SEED) drives the randomised tests' inputs
 * and, in a -DBOC_YIELD_POINTS build, the yield points (boc_yield.h), which
 * are reseeded before every case.  --controlled (yield-point builds only)
 * runs the tests that support it under the controlled scheduler, where the
 * seed fixes the whole schedule.  --stress-behaviors N sizes the stress test.
 */
#include "test.h"
#include "test_list.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* A case that runs longer than this (seconds) is killed and fails. */
#define TEST_CASE_TIME_LIMIT_S 240

/* Build-time defaults; the sweep variants lower them (see the Makefile). */
#ifndef TEST_QUIESCENCE_TIMEOUT_S
#define TEST_QUIESCENCE_TIMEOUT_S 60
#endif
#ifndef TEST_STRESS_BEHAVIORS
#define TEST_STRESS_BEHAVIORS 132000
#endif

uint64_t test_seed = UINT64_C(0x5eed0b0c);
const char *test_program = "boc_tests";
bool test_controlled = false;
int64_t test_quiescence_timeout_ns = (int64_t)TEST_QUIESCENCE_TIMEOUT_S * 1000000000;
uint32_t test_stress_behaviors = TEST_STRESS_BEHAVIORS;
/* The options other than --seed that change what a case does, for the
 * rerun command printed after a failure. */
static char test_extra_options[64] = "";

#define TEST_DECLARE(name) TEST_IMPL(name);
TEST_LIST(TEST_DECLARE)
#undef TEST_DECLARE

typedef struct test_entry {
    const char *name;
    int (*fn)(void);
} test_entry;

#define TEST_ENTRY(name) {#name, test_##name},
static const test_entry test_entries[] = {TEST_LIST(TEST_ENTRY)};
#undef TEST_ENTRY

#define TEST_COUNT (sizeof test_entries / sizeof test_entries[0])

static int run_in_child(const test_entry *entry) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        alarm(TEST_CASE_TIME_LIMIT_S);
        /* Every case starts its yield points afresh from the seed. */
        boc_yield_set_seed(test_seed);
        boc_yield_set_identity(BOC_YIELD_ROLE_MAIN, 0);
        int rc = entry->fn();
        fflush(stdout);
        /* exit (not _exit): sanitizers run their exit-time checks here. */
        exit(rc == 0 ? 0 : 1);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return -1;
        }
    }
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) != 0) {
            fprintf(stdout, "#   %s: exit status %d\n", entry->name, WEXITSTATUS(status));
        }
        return WEXITSTATUS(status) == 0 ? 0 : -1;
    }
    if (WIFSIGNALED(status)) {
        fprintf(stdout, "#   %s: killed by signal %d%s\n", entry->name, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (time limit)" : "");
    }
    return -1;
}

static bool parse_seed(const char *text) {
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 0);
    if (end == text || *end != '\0') {
        fprintf(stderr, "bad seed: %s\n", text);
        return false;
    }
    test_seed = (uint64_t)value;
    return true;
}

static bool parse_stress_behaviors(const char *text) {
    char *end = NULL;
    unsigned long value = strtoul(text, &end, 0);
    if (end == text || *end != '\0' || value < 100 || value > 10000000) {
        fprintf(stderr, "bad --stress-behaviors (100 .. 10000000): %s\n", text);
        return false;
    }
    test_stress_behaviors = (uint32_t)value;
    return true;
}

const char *test_rerun_command(const char *name) {
    static char command[512];
    snprintf(command, sizeof command, "%s%s --seed %llu %s", test_program, test_extra_options,
             (unsigned long long)test_seed, name);
    return command;
}

static const char usage[] = "usage: %s [--seed N] [--controlled] [--stress-behaviors N] "
                            "[--no-fork] [--list] [name...]\n";

int main(int argc, char **argv) {
    bool use_fork = true;
    test_program = argv[0];
    const char *env_seed = getenv("BOC_TEST_SEED");
    if (env_seed != NULL && *env_seed != '\0' && !parse_seed(env_seed)) {
        return 2;
    }
    const char *selected[TEST_COUNT + 1];
    size_t selected_count = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            if (!parse_seed(argv[++i])) {
                return 2;
            }
        } else if (strcmp(argv[i], "--controlled") == 0) {
            if (!boc_yield_enabled()) {
                fprintf(stderr, "--controlled needs a build with -DBOC_YIELD_POINTS "
                                "(make sweep)\n");
                return 2;
            }
            test_controlled = true;
        } else if (strcmp(argv[i], "--stress-behaviors") == 0 && i + 1 < argc) {
            if (!parse_stress_behaviors(argv[++i])) {
                return 2;
            }
        } else if (strcmp(argv[i], "--no-fork") == 0) {
            use_fork = false;
        } else if (strcmp(argv[i], "--list") == 0) {
            for (size_t t = 0; t < TEST_COUNT; t++) {
                printf("%s\n", test_entries[t].name);
            }
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, usage, argv[0]);
            return 2;
        } else {
            bool known = false;
            for (size_t t = 0; t < TEST_COUNT; t++) {
                known = known || strcmp(argv[i], test_entries[t].name) == 0;
            }
            if (!known || selected_count == TEST_COUNT) {
                fprintf(stderr, "unknown or repeated test: %s\n", argv[i]);
                return 2;
            }
            selected[selected_count++] = argv[i];
        }
    }

    if (test_controlled) {
        strcat(test_extra_options, " --controlled");
    }
    if (test_stress_behaviors != TEST_STRESS_BEHAVIORS) {
        snprintf(test_extra_options + strlen(test_extra_options),
                 sizeof test_extra_options - strlen(test_extra_options), " --stress-behaviors %u",
                 (unsigned)test_stress_behaviors);
    }
    printf("# seed %llu, yield points %s\n", (unsigned long long)test_seed,
           !boc_yield_enabled() ? "off"
           : test_controlled    ? "controlled"
                                : "seeded");

    unsigned passed = 0;
    unsigned failed = 0;
    unsigned number = 0;
    for (size_t t = 0; t < TEST_COUNT; t++) {
        const test_entry *entry = &test_entries[t];
        bool wanted = selected_count == 0;
        for (size_t s = 0; s < selected_count; s++) {
            wanted = wanted || strcmp(selected[s], entry->name) == 0;
        }
        if (!wanted) {
            continue;
        }
        number++;
        uint64_t started = boc_now_ns();
        int rc = use_fork ? run_in_child(entry) : entry->fn();
        uint64_t elapsed_ms = (boc_now_ns() - started) / 1000000;
        if (rc == 0) {
            passed++;
            printf("ok %u - %s (%llu ms)\n", number, entry->name, (unsigned long long)elapsed_ms);
        } else {
            failed++;
            printf("not ok %u - %s (%llu ms)\n", number, entry->name,
                   (unsigned long long)elapsed_ms);
            printf("#   reproduce: %s\n", test_rerun_command(entry->name));
        }
        fflush(stdout);
    }
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
