"""bm25s side of small-agent-index's speed benchmark.

Reads the same JSONL corpus and query file as the Rust side, indexes title + text with
English stop words and the Snowball English stemmer (closest to our analyzer), then times
single-query top-10 retrieval including looking the passages up. Prints one JSON line.
"""
import json
import sys
import time

import bm25s
import Stemmer


def main():
    corpus_path, queries_path, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stemmer = Stemmer.Stemmer("english")
    t0 = time.perf_counter()
    docs = []
    with open(corpus_path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            docs.append(rec["title"] + " " + rec["text"])
    tokens = bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    index_seconds = time.perf_counter() - t0

    with open(queries_path, encoding="utf-8") as f:
        queries = [q.rstrip("\n") for q in f]
    samples = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        qt = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        if len(qt.vocab) > 0:
            ids, _scores = retriever.retrieve(qt, k=10, show_progress=False, n_threads=1)
            _texts = [docs[j] for j in ids[0]]
        dt = time.perf_counter() - t
        if i >= warmup:
            samples.append(dt)
    samples.sort()

    # bm25s is built for batches: also time all queries in one call, per query.
    t = time.perf_counter()
    qt = bm25s.tokenize(queries[warmup:], stopwords="en", stemmer=stemmer, show_progress=False)
    retriever.retrieve(qt, k=10, show_progress=False, n_threads=1)
    batch_ms = (time.perf_counter() - t) / max(1, len(queries) - warmup) * 1e3

    def pct(p):
        return samples[round((len(samples) - 1) * p)] * 1e3

    print(json.dumps({
        "engine": "bm25s " + bm25s.__version__,
        "index_passages_per_s": len(docs) / index_seconds,
        "index_seconds": index_seconds,
        "query": {"p50_ms": pct(0.5), "p99_ms": pct(0.99),
                  "mean_ms": sum(samples) / len(samples) * 1e3},
        "query_ids_only": None,
        "batch_ms_per_query": batch_ms,
    }))


if __name__ == "__main__":
    main()
