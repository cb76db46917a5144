/* Hardening run of the C ABI, built by tests/e2e/ffi.rs with -fsanitize=address,undefined.
 *
 * One runtime shared by 8 threads, each with its own session: two asks each; thread 5 is
 * cancelled mid-run from the main thread; threads 6 and 7 cancel their own session before
 * asking (the ask must report SA_CANCELLED) and then ask again (use after cancel). The
 * runtime handle is freed while its sessions still run. NULL arguments, invalid UTF-8 and
 * free(NULL) are checked first. Prints "stress: ok" and exits 0 when every check held. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "small_agent.h"

#define THREADS 8
#define ASKS 2

static atomic_int failures;
static atomic_int tokens_of_5;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            fprintf(stderr, "check failed at line %d: ", __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fprintf(stderr, "\n");                        \
            atomic_fetch_add(&failures, 1);               \
        }                                                 \
    } while (0)

static const char *questions[THREADS][ASKS] = {
    {"What is 12 plus 30?", "Who wrote Hamlet?"},
    {"What is the capital of France?", "What is 9 times 9?"},
    {"How many legs does a spider have?", "What is 100 divided by 4?"},
    {"Which planet is the largest?", "What is 2 to the power of 10?"},
    {"Who painted the Mona Lisa?", "What is 15 minus 7?"},
    {"Name a river in Egypt.", "What is 3 plus 4?"},
    {"What is the boiling point of water in Celsius?", "What is 6 times 7?"},
    {"Which ocean is the largest?", "What is 81 square root?"},
};

struct job {
    int index;
    sa_session *session;
};

static void count_tokens(sa_event_kind kind, const char *text, size_t len, void *user) {
    (void)user;
    CHECK(text != NULL && strlen(text) == len, "event text and len disagree");
    if (kind == SA_EVENT_TOKEN) {
        atomic_fetch_add(&tokens_of_5, 1);
    }
}

static void *worker(void *arg) {
    struct job *job = arg;
    for (int k = 0; k < ASKS; k++) {
        if (job->index >= 6 && k == 0) {
            char *untouched = (char *)0x1;
            CHECK(sa_cancel(job->session) == SA_OK, "sa_cancel");
            sa_status st = sa_ask(job->session, questions[job->index][k], &untouched, NULL);
            CHECK(st == SA_CANCELLED, "thread %d: pending cancel gave %s", job->index,
                  sa_status_name(st));
            CHECK(untouched == (char *)0x1, "out-param written on SA_CANCELLED");
        }
        char *answer = NULL;
        char *trajectory = NULL;
        sa_status st;
        if (job->index == 5 && k == 0) {
            st = sa_ask_stream(job->session, questions[job->index][k], count_tokens, NULL,
                               &answer, &trajectory);
            CHECK(st == SA_CANCELLED, "thread 5: expected SA_CANCELLED, got %s (%s)",
                  sa_status_name(st), sa_last_error_message());
            CHECK(answer == NULL && trajectory == NULL, "out-params written on cancel");
            continue;
        }
        st = sa_ask(job->session, questions[job->index][k], &answer, &trajectory);
        CHECK(st == SA_OK, "thread %d ask %d: %s: %s", job->index, k, sa_status_name(st),
              sa_last_error_message());
        if (st == SA_OK) {
            CHECK(answer != NULL && trajectory != NULL, "missing out-params");
            CHECK(trajectory[0] == '{', "trajectory is not JSON");
            sa_string_free(answer);
            sa_string_free(trajectory);
        }
    }
    sa_session_free(job->session);
    return NULL;
}

static void check_bad_arguments(sa_runtime *rt) {
    sa_session *s = (sa_session *)0x1;
    CHECK(sa_session_new(NULL, NULL, &s) == SA_NULL_ARGUMENT, "session_new(NULL)");
    CHECK(s == (sa_session *)0x1, "out-param written on error");
    CHECK(sa_session_new(rt, NULL, NULL) == SA_NULL_ARGUMENT, "session_new(out NULL)");
    CHECK(sa_runtime_new(NULL, NULL) == SA_NULL_ARGUMENT, "runtime_new(out NULL)");
    CHECK(strstr(sa_last_error_message(), "NULL") != NULL, "message: %s",
          sa_last_error_message());
    CHECK(sa_cancel(NULL) == SA_NULL_ARGUMENT, "cancel(NULL)");
    char *a = NULL;
    CHECK(sa_ask(NULL, "q", &a, NULL) == SA_NULL_ARGUMENT, "ask(NULL session)");
    sa_session *ok = NULL;
    CHECK(sa_session_new(rt, NULL, &ok) == SA_OK, "session_new");
    CHECK(sa_ask(ok, NULL, &a, NULL) == SA_NULL_ARGUMENT, "ask(NULL question)");
    CHECK(sa_ask(ok, "q", NULL, NULL) == SA_NULL_ARGUMENT, "ask(NULL answer_out)");
    CHECK(sa_ask(ok, "caf\xc3(\xa9", &a, NULL) == SA_INVALID_UTF8, "ask(invalid UTF-8)");
    CHECK(a == NULL, "out-param written on SA_INVALID_UTF8");
    sa_runtime_params p = sa_runtime_default_params();
    p.struct_size = 1;
    sa_runtime *r = NULL;
    CHECK(sa_runtime_new(&p, &r) == SA_INVALID_ARGUMENT, "runtime_new(bad struct_size)");
    p = sa_runtime_default_params();
    p.model_path = "\xff\xfe.gguf";
    CHECK(sa_runtime_new(&p, &r) == SA_INVALID_UTF8, "runtime_new(invalid UTF-8 path)");
    CHECK(r == NULL, "out-param written on error");
    sa_session_free(ok);
    sa_string_free(NULL);
    sa_session_free(NULL);
    sa_runtime_free(NULL);
}

int main(void) {
    sa_runtime_params rp = sa_runtime_default_params();
    rp.threads = 1;
    rp.context_size = 2048;
    sa_runtime *rt = NULL;
    sa_status st = sa_runtime_new(&rp, &rt);
    if (st != SA_OK) {
        fprintf(stderr, "runtime: %s: %s\n", sa_status_name(st), sa_last_error_message());
        return 2;
    }
    check_bad_arguments(rt);

    sa_session_params sp = sa_session_default_params();
    sp.max_steps = 2;
    struct job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i].index = i;
        jobs[i].session = NULL;
        st = sa_session_new(rt, &sp, &jobs[i].session);
        CHECK(st == SA_OK, "session %d: %s", i, sa_last_error_message());
        if (st != SA_OK) {
            return 1;
        }
    }
    /* Sessions keep the runtime alive: the caller's handle can go now. */
    sa_runtime_free(rt);

    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_create(&threads[i], NULL, worker, &jobs[i]);
    }
    /* Cancel thread 5 once it is generating (or after 120 s, whatever comes first). */
    for (int waited = 0; atomic_load(&tokens_of_5) < 2 && waited < 120000; waited++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    CHECK(sa_cancel(jobs[5].session) == SA_OK, "cancel from main");
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
    }
    if (atomic_load(&failures) != 0) {
        fprintf(stderr, "stress: %d checks failed\n", atomic_load(&failures));
        return 1;
    }
    printf("stress: ok (%d threads, %d asks each, version %s)\n", THREADS, ASKS, sa_version());
    return 0;
}
