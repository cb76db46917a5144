/* Embedding small-agent from C: load the runtime, open a session, stream the agent's text to
 * stderr and print the answer to stdout.
 *
 *   cc -std=c99 ask.c $(pkg-config --cflags --libs small_agent) -o ask
 *   ./ask [--max-steps N] [--python full|lite] "What is 17 * 23?"
 *
 * Exit status: 0 answered, 1 the run failed, 2 usage or set-up error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "small_agent.h"

static void on_event(sa_event_kind kind, const char *text, size_t len, void *user_data) {
    (void)user_data;
    if (kind == SA_EVENT_TOKEN) {
        fwrite(text, 1, len, stderr);
    } else if (kind == SA_EVENT_OBSERVATION) {
        fprintf(stderr, "\n[observation] %s\n", text);
    }
}

static int usage(const char *prog) {
    fprintf(stderr, "usage: %s [--max-steps N] [--python full|lite] QUESTION\n", prog);
    return 2;
}

int main(int argc, char **argv) {
    sa_runtime_params rp = sa_runtime_default_params();
    sa_session_params sp = sa_session_default_params();
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--max-steps") == 0) {
            char *end = NULL;
            long n = strtol(argv[i + 1], &end, 10);
            if (*end != '\0' || n < 1 || n > 100) {
                return usage(argv[0]);
            }
            sp.max_steps = (uint32_t)n;
        } else if (strcmp(argv[i], "--python") == 0) {
            if (strcmp(argv[i + 1], "full") == 0) {
                rp.python = SA_PYTHON_FULL;
            } else if (strcmp(argv[i + 1], "lite") == 0) {
                rp.python = SA_PYTHON_LITE;
            } else {
                return usage(argv[0]);
            }
        } else {
            return usage(argv[0]);
        }
    }
    if (i != argc - 1) {
        return usage(argv[0]);
    }
    const char *question = argv[i];
    sa_runtime *runtime = NULL;
    sa_status st = sa_runtime_new(&rp, &runtime);
    if (st != SA_OK) {
        fprintf(stderr, "error: %s: %s\n", sa_status_name(st), sa_last_error_message());
        return 2;
    }
    sa_session *session = NULL;
    st = sa_session_new(runtime, &sp, &session);
    if (st != SA_OK) {
        fprintf(stderr, "error: %s: %s\n", sa_status_name(st), sa_last_error_message());
        sa_runtime_free(runtime);
        return 2;
    }
    char *answer = NULL;
    st = sa_ask_stream(session, question, on_event, NULL, &answer, NULL);
    int code = 0;
    if (st == SA_OK) {
        printf("%s\n", answer);
        sa_string_free(answer);
    } else {
        fprintf(stderr, "\nerror: %s: %s\n", sa_status_name(st), sa_last_error_message());
        code = 1;
    }
    sa_session_free(session);
    sa_runtime_free(runtime);
    return code;
}
