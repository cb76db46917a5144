/* Embedding small-agent from C: load the runtime, open a session, stream the agent's text to
 * stderr and print the answer to stdout.
 *
 *   cc -std=c99 ask.c $(pkg-config --cflags --libs small_agent) -o ask
 *   ./ask "What is 17 * 23?"
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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s QUESTION\n", argv[0]);
        return 2;
    }
    sa_runtime_params rp = sa_runtime_default_params();
    sa_runtime *runtime = NULL;
    sa_status st = sa_runtime_new(&rp, &runtime);
    if (st != SA_OK) {
        fprintf(stderr, "error: %s: %s\n", sa_status_name(st), sa_last_error_message());
        return 2;
    }
    sa_session_params sp = sa_session_default_params();
    sa_session *session = NULL;
    st = sa_session_new(runtime, &sp, &session);
    if (st != SA_OK) {
        fprintf(stderr, "error: %s: %s\n", sa_status_name(st), sa_last_error_message());
        sa_runtime_free(runtime);
        return 2;
    }
    char *answer = NULL;
    st = sa_ask_stream(session, argv[1], on_event, NULL, &answer, NULL);
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
