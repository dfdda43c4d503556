/* Mask selection for CPU tensors, one pass per bank (loaded by pruning_tools/native.py).
 *
 * Weights are read as unsigned integers of their width (16: fp16/bf16, 32: fp32, 64: fp64): for IEEE
 * formats `bits & ~sign` orders exactly like |w|, so no float math is needed. A weight whose `alive`
 * byte is 0 scores below every live weight (key -1); `alive` may be NULL (all live). A NaN (magnitude
 * bits above `inf`, the bits of +infinity of the format) scores like a dead weight: pruned first, the
 * rule of the PyTorch path too; `*nans` receives the number of live NaN weights. Ties go to the
 * lower index. `keep` may be the `alive` buffer itself (masks updated in place). No allocation.
 *
 * Bank rows (see masks.to_rows) are described by strides into the weight buffer:
 *   row r starts at (r / group) * group_stride + (r % group); element j of a row is at start + j * step.
 *
 * `threads`: OpenMP threads for large tensors (built without OpenMP, everything runs on one).
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_BANK 1024
#define PARALLEL_MIN 65536 /* elements below which one thread does the work */
#define BINS 65536

/* The K largest keys of a bank, descending, in registers: each key sinks through the list by
 * max/min (no branch, so no misprediction whatever the data). Sets t (the K-th largest) and above. */
#define TOP_K_SMALL(K)                                                                                       \
    case K: {                                                                                                \
        int64_t top[K];                                                                                      \
        for (int i = 0; i < K; ++i) top[i] = INT64_MIN;                                                      \
        for (int64_t j = 0; j < len; ++j) {                                                                  \
            int64_t s = key[j];                                                                              \
            for (int i = 0; i < K; ++i) {                                                                    \
                const int64_t hi = top[i] > s ? top[i] : s;                                                  \
                s = top[i] > s ? s : top[i];                                                                 \
                top[i] = hi;                                                                                 \
            }                                                                                                \
        }                                                                                                    \
        t = top[K - 1];                                                                                      \
        for (int i = 0; i < K - 1; ++i) above += top[i] > t;                                                 \
        break;                                                                                               \
    }

/* A bank of exactly L keys: key i is kept when fewer than k keys rank before it (larger, or equal
 * at a lower index). L is a constant, so the compiler unrolls both loops. */
#define RANK_SMALL(L)                                                                                        \
    case L:                                                                                                  \
        for (int i = 0; i < L; ++i) {                                                                        \
            int64_t rank = 0;                                                                                \
            for (int j = 0; j < L; ++j) rank += (key[j] > key[i]) | ((key[j] == key[i]) & (j < i));         \
            keep[off + i * step] = rank < k;                                                                 \
        }                                                                                                    \
        return;

/* keep[off + j * step] for one bank of `len` keys of which the `k` largest are kept. */
static inline __attribute__((always_inline)) void select_bank(const int64_t *key, int64_t len, int64_t k, int64_t *sel, uint8_t *keep,
                               int64_t off, int64_t step) {
    if (k >= len) {
        for (int64_t j = 0; j < len; ++j) keep[off + j * step] = 1;
        return;
    }
    if (len <= 8) { /* short banks (N:M): rank every key against the others, no branch */
        switch (len) {
            RANK_SMALL(2) RANK_SMALL(3) RANK_SMALL(4) RANK_SMALL(5) RANK_SMALL(6) RANK_SMALL(7) RANK_SMALL(8)
        }
    }
    int64_t t = 0, above = 0; /* the k-th largest key; keys strictly above it */
    if (k <= 8) {
        switch (k) {
            TOP_K_SMALL(1) TOP_K_SMALL(2) TOP_K_SMALL(3) TOP_K_SMALL(4)
            TOP_K_SMALL(5) TOP_K_SMALL(6) TOP_K_SMALL(7) TOP_K_SMALL(8)
        }
    } else if (k <= len - k) { /* the k largest, descending (one comparison per key once the list is full) */
        for (int64_t j = 0; j < k; ++j) {
            const int64_t s = key[j];
            int64_t i = j;
            while (i > 0 && sel[i - 1] < s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        for (int64_t j = k; j < len; ++j) {
            const int64_t s = key[j];
            if (s <= sel[k - 1]) continue;
            int64_t i = k - 1;
            while (i > 0 && sel[i - 1] < s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        t = sel[k - 1];
        for (int64_t i = 0; i < k - 1; ++i) above += sel[i] > t;
    } else { /* the len - k + 1 smallest, ascending: the largest of them is the k-th largest */
        const int64_t m = len - k + 1;
        for (int64_t j = 0; j < m; ++j) {
            const int64_t s = key[j];
            int64_t i = j;
            while (i > 0 && sel[i - 1] > s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        for (int64_t j = m; j < len; ++j) {
            const int64_t s = key[j];
            if (s >= sel[m - 1]) continue;
            int64_t i = m - 1;
            while (i > 0 && sel[i - 1] > s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        t = sel[m - 1];
        for (int64_t j = 0; j < len; ++j) above += key[j] > t;
    }
    int64_t ties = k - above; /* keys equal to t that are kept: the first ones by index */
    for (int64_t j = 0; j < len; ++j) {
        const int64_t s = key[j];
        uint8_t kept = s > t;
        if (s == t) { kept = ties > 0; ties -= kept; }
        keep[off + j * step] = kept;
    }
}

#define KERNELS(BITS, T, MAGNITUDE)                                                                         \
    /* Bank-balanced keep-mask: full banks keep k, the tail bank keeps tail_k. */                          \
    void bank_select_##BITS(const T *w, const uint8_t *alive, uint8_t *keep, int64_t rows, int64_t row_len, \
                            int64_t bank, int64_t k, int64_t tail_k, int64_t group, int64_t group_stride,   \
                            int64_t step, int64_t threads, uint64_t inf, int64_t *nans) {                  \
        int64_t found = 0;                                                                                 \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(rows * row_len >= PARALLEL_MIN) reduction(+:found)") \
        for (int64_t r = 0; r < rows; ++r) {                                                               \
            int64_t key[MAX_BANK], sel[MAX_BANK + 1];                                                      \
            const int64_t base = (r / group) * group_stride + (r % group);                                 \
            for (int64_t start = 0; start < row_len; start += bank) {                                      \
                const int64_t len = row_len - start < bank ? row_len - start : bank;                       \
                const int64_t off = base + start * step;                                                   \
                int64_t nan_here = 0;                                                                      \
                for (int64_t j = 0; j < len; ++j) { /* -1 when dead or NaN, no branch */                  \
                    const int64_t at = off + j * step;                                                     \
                    const uint64_t v = (uint64_t)(w[at] & (MAGNITUDE));                                    \
                    const int64_t live = alive ? (int64_t)alive[at] : 1, nan = (int64_t)(v > inf);        \
                    key[j] = (int64_t)v | (live - 1) | -nan;                                               \
                    nan_here += nan & live;                                                                \
                }                                                                                          \
                found += nan_here;                                                                         \
                select_bank(key, len, len == bank ? k : tail_k, sel, keep, off, step);                     \
            }                                                                                              \
        }                                                                                                  \
        *nans = found;                                                                                     \
    }                                                                                                      \
                                                                                                           \
    /* hist[thread][b] += live keys (not NaN) whose bits [shift, shift + 16) equal b and whose bits above  \
     * equal prefix; hist holds `threads` histograms of BINS counts (the caller sums them). */             \
    void histogram_##BITS(const T *w, const uint8_t *alive, int64_t n, int shift, uint64_t prefix,          \
                          int64_t *hist, int64_t threads, uint64_t inf) {                                  \
        const int top = shift + 16;                                                                        \
        _Pragma("omp parallel num_threads(threads) if(n >= PARALLEL_MIN)")                                  \
        {                                                                                                  \
            int64_t id = 0, count = 1;                                                                     \
            PARALLEL_IDS(id, count)                                                                        \
            int64_t *h = hist + id * BINS;                                                                 \
            const int64_t lo = n * id / count, hi = n * (id + 1) / count;                                  \
            if (top >= BITS) { /* first level: every key counts, branch-free */                           \
                for (int64_t i = lo; i < hi; ++i) {                                                        \
                    const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                   \
                    h[(key >> shift) & 0xFFFF] += (alive ? alive[i] : 1) & (key <= inf);                   \
                }                                                                                          \
            } else { /* later levels: few keys match the prefix */                                         \
                for (int64_t i = lo; i < hi; ++i) {                                                        \
                    const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                   \
                    if ((key >> top) == prefix && key <= inf && (!alive || alive[i])) h[(key >> shift) & 0xFFFF] += 1; \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
                                                                                                           \
    /* keep = live, not NaN, and (key > t, or key == t for the first *ties such ones); *ties carries     \
     * across calls. *ties < 0: every live key equal to t is kept (no order to respect, so any thread may   \
     * do any part). t <= inf always. *nans = live NaN weights. */                                          \
    void keep_above_##BITS(const T *w, const uint8_t *alive, uint8_t *keep, int64_t n, uint64_t t,         \
                           int64_t *ties, int64_t threads, uint64_t inf, int64_t *nans) {                  \
        int64_t left = *ties, found = 0;                                                                   \
        if (left < 0) {                                                                                    \
            _Pragma("omp parallel for schedule(static) num_threads(threads) if(n >= PARALLEL_MIN) reduction(+:found)") \
            for (int64_t i = 0; i < n; ++i) {                                                              \
                const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                       \
                const uint8_t live = alive ? alive[i] : 1, nan = key > inf;                                \
                keep[i] = live & !nan & (key >= t);                                                        \
                found += live & nan;                                                                       \
            }                                                                                              \
            *nans = found;                                                                                 \
            return;                                                                                        \
        }                                                                                                  \
        for (int64_t i = 0; i < n; ++i) {                                                                  \
            const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                           \
            const uint8_t live = alive ? alive[i] : 1, nan = key > inf;                                    \
            uint8_t kept = live & !nan & (key > t);                                                        \
            if (key == t) { kept = live & (left > 0); left -= kept; } /* rare: no misprediction */         \
            keep[i] = kept;                                                                                \
            found += live & nan;                                                                           \
        }                                                                                                  \
        *ties = left;                                                                                      \
        *nans = found;                                                                                     \
    }                                                                                                      \
                                                                                                           \
    /* One tensor, one thread, no Python in between: keep the k largest keys (dead and NaN weights count    \
     * as the smallest, ties to the lower index) by a radix select on 8-bit digits (BITS / 8 passes, a     \
     * 256-bin histogram on the stack), then one pass to write keep. For small tensors, where the          \
     * 16-bit histograms of histogram_##BITS cost more than the tensor. 0 < k <= n. */                     \
    void keep_largest_##BITS(const T *w, const uint8_t *alive, uint8_t *keep, int64_t n, int64_t k,        \
                             uint64_t inf, int64_t *nans) {                                                \
        uint64_t prefix = 0;                                                                               \
        int64_t remaining = k, found = 0;                                                                  \
        for (int shift = BITS - 8; shift >= 0; shift -= 8) {                                               \
            int64_t hist[256] = {0};                                                                       \
            const int top = shift + 8 >= BITS; /* first digit: every key counts */                        \
            for (int64_t i = 0; i < n; ++i) {                                                              \
                const uint64_t v = (uint64_t)(w[i] & (MAGNITUDE));                                         \
                const uint64_t live = (alive ? alive[i] : 1) & (v <= inf);                                 \
                const uint64_t u = live * (v + 1); /* dead or NaN: 0, below every live key */              \
                if (top) { hist[u >> shift] += 1; found += (alive ? alive[i] : 1) & (v > inf); }          \
                else if ((u >> (shift + 8)) == prefix) hist[(u >> shift) & 0xFF] += 1;                     \
            }                                                                                              \
            int b = 255;                                                                                   \
            while (b > 0 && hist[b] < remaining) remaining -= hist[b--];                                   \
            prefix = (prefix << 8) | (uint64_t)b;                                                          \
        }                                                                                                  \
        for (int64_t i = 0; i < n; ++i) { /* prefix: the k-th largest key; keep `remaining` equal ones */  \
            const uint64_t v = (uint64_t)(w[i] & (MAGNITUDE));                                             \
            const uint64_t u = (uint64_t)((alive ? alive[i] : 1) & (v <= inf)) * (v + 1);                  \
            uint8_t kept = u > prefix;                                                                     \
            if (u == prefix) { kept = remaining > 0; remaining -= kept; }                                  \
            keep[i] = kept;                                                                                \
        }                                                                                                  \
        *nans = found;                                                                                     \
    }                                                                                                      \
                                                                                                           \
    /* w = 0 where keep is 0 (keep holds 0 or 1). */                                                      \
    void zero_pruned_##BITS(T *w, const uint8_t *keep, int64_t n, int64_t threads) {                       \
        _Pragma("omp parallel for simd schedule(static) num_threads(threads) if(n >= PARALLEL_MIN)")       \
        for (int64_t i = 0; i < n; ++i) w[i] &= (T)0 - (T)keep[i];                                         \
    }

#ifdef _OPENMP
#define PARALLEL_IDS(id, count) id = omp_get_thread_num(); count = omp_get_num_threads();
#else
#define PARALLEL_IDS(id, count)
#endif

KERNELS(16, uint16_t, 0x7FFFu)
KERNELS(32, uint32_t, 0x7FFFFFFFu)
KERNELS(64, uint64_t, 0x7FFFFFFFFFFFFFFFull)
