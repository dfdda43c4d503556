/* Bank-sparse matrix product for CPUs: y = x W^T + b, W stored packed (pruning_tools/export.py).
 *
 * Packed W, one row per output feature:
 *   values [rows, banks, k] float32, idx [rows, banks, k] uint8 (position inside the bank);
 *   tail_values [rows, tail_k], tail_idx [rows, tail_k] for the shorter last bank (tail_k may be 0).
 * Full bank j of a row covers input columns [j * bank, (j + 1) * bank); the tail bank starts at
 * banks * bank.
 *
 * bank_linear: x [batch, in] -> y [batch, rows], returns 0 (or -1 when scratch memory is short).
 *   batch 1 is a dot product per row; larger batches first copy x transposed into a per-thread
 *   scratch buffer xt [in, ldx] (ldx = batch rounded up to 8, padding zeroed; kept for later calls),
 *   then run tiles of 8 to 64 batch columns held in vector registers.
 * Rows are shared among OpenMP threads (one thread when the work is small). The team shrinks when
 * other processes keep the cores busy (team_size below): on a shared machine a thread that waits for
 * a busy core costs a scheduler time slice, far more than the product itself.
 * GCC vector extensions keep the code portable: the compiler maps them to the widest SIMD it has.
 */
#define _POSIX_C_SOURCE 200112L
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

#define PARALLEL_WORK 65536 /* multiply-adds below which one thread is faster than a team */

/* Threads for the next loop: omp_get_max_threads() (torch.set_num_threads), fewer when the kernel's
 * count of runnable threads (/proc/loadavg, read at most every 50 ms per calling thread) says other
 * processes occupy the cores. Our own team is counted as running (its threads spin between loops).
 * bank_set_threads(n > 0) fixes the team size instead; bank_set_threads(0) restores the default. */
static __thread double team_checked_at = -1.0;
static __thread int team_cached = 1;
static int team_forced = 0; /* > 0: always this many threads (bank_set_threads) */

void bank_set_threads(int n) { team_forced = n > 0 ? n : 0; }

static int team_size(void) {
    if (team_forced) return team_forced;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const double t = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
    if (team_checked_at < 0.0 || t - team_checked_at > 0.05) {
        const int max = omp_get_max_threads();
        int running = 0, total = 0;
        double a1, a5, a15;
        FILE *f = fopen("/proc/loadavg", "r");
        if (f) {
            if (fscanf(f, "%lf %lf %lf %d/%d", &a1, &a5, &a15, &running, &total) != 5) running = 0;
            fclose(f);
        }
        const int free_cores = omp_get_num_procs() - (running - max);
        team_cached = running <= 0 ? max : free_cores < 1 ? 1 : free_cores < max ? free_cores : max;
        team_checked_at = t;
    }
    return team_cached;
}

/* ---------------------------------------------------------------- batch 1 */

/* Dot product of one packed row with x; K stored weights per bank (a constant in the copies below). */
#define ROW_DOT_BODY(K)                                                                         \
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                                    \
    int64_t j = 0;                                                                              \
    for (; j + 4 <= banks; j += 4) {                                                            \
        for (int u = 0; u < 4; ++u) {                                                           \
            const float *xb = x + (j + u) * bank;                                               \
            const float *vb = v + (j + u) * (K);                                                \
            const uint8_t *ib = ix + (j + u) * (K);                                             \
            float s = 0.0f;                                                                     \
            for (int64_t t = 0; t < (K); ++t) s += vb[t] * xb[ib[t]];                           \
            acc[u] += s;                                                                        \
        }                                                                                       \
    }                                                                                           \
    for (; j < banks; ++j) {                                                                    \
        const float *xb = x + j * bank;                                                         \
        for (int64_t t = 0; t < (K); ++t) acc[0] += v[j * (K) + t] * xb[ix[j * (K) + t]];       \
    }                                                                                           \
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);

#define DEFINE_ROW_DOT(K)                                                                            \
    static float row_dot_##K(const float *x, const float *v, const uint8_t *ix, int64_t banks,       \
                             int64_t bank) {                                                         \
        ROW_DOT_BODY(K)                                                                              \
    }
DEFINE_ROW_DOT(1)
DEFINE_ROW_DOT(2)
DEFINE_ROW_DOT(3)
DEFINE_ROW_DOT(4)
DEFINE_ROW_DOT(5)
DEFINE_ROW_DOT(6)
DEFINE_ROW_DOT(7)
DEFINE_ROW_DOT(8)

static float row_dot_any(const float *x, const float *v, const uint8_t *ix, int64_t banks, int64_t bank,
                         int64_t k) {
    ROW_DOT_BODY(k)
}

static inline float row_dot(const float *x, const float *v, const uint8_t *ix, int64_t banks,
                            int64_t bank, int64_t k) {
    switch (k) {
        case 1: return row_dot_1(x, v, ix, banks, bank);
        case 2: return row_dot_2(x, v, ix, banks, bank);
        case 3: return row_dot_3(x, v, ix, banks, bank);
        case 4: return row_dot_4(x, v, ix, banks, bank);
        case 5: return row_dot_5(x, v, ix, banks, bank);
        case 6: return row_dot_6(x, v, ix, banks, bank);
        case 7: return row_dot_7(x, v, ix, banks, bank);
        case 8: return row_dot_8(x, v, ix, banks, bank);
        default: return row_dot_any(x, v, ix, banks, bank, k);
    }
}

static void bank_gemv(const float *x, const float *values, const uint8_t *idx, const float *tail_values,
               const uint8_t *tail_idx, const float *bias, float *y, int64_t rows, int64_t banks,
               int64_t k, int64_t bank, int64_t tail_k) {
    const int64_t work = rows * (banks * k + tail_k);
    const int team = work > PARALLEL_WORK ? team_size() : 1;
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (int64_t o = 0; o < rows; ++o) {
        float acc = banks ? row_dot(x, values + o * banks * k, idx + o * banks * k, banks, bank, k) : 0.0f;
        const float *tv = tail_values + o * tail_k;
        const uint8_t *ti = tail_idx + o * tail_k;
        const float *xt = x + banks * bank;
        for (int64_t t = 0; t < tail_k; ++t) acc += tv[t] * xt[ti[t]];
        y[o] = acc + (bias ? bias[o] : 0.0f);
    }
}

/* ---------------------------------------------------------------- batch > 1 */

/* acc[0:N] (N vectors of 8 batch columns) += w * xt[col, b0 : b0 + 8N] for each stored weight.
 * U independent copies of acc (stored weight t of a bank goes to copy t % U) hide the FMA latency. */
#define GEMM_TILE(N, U)                                                                          \
    static void gemm_tile_##N(const float *xt, int64_t ldx, int64_t b0, int64_t width,           \
                              const float *v, const uint8_t *ix, int64_t banks, int64_t k,       \
                              int64_t bank, const float *tv, const uint8_t *ti, int64_t tail_k,  \
                              float b, float *dst) {                                             \
        v8 acc[U][N];                                                                            \
        for (int u = 0; u < U; ++u)                                                              \
            for (int n = 0; n < N; ++n) acc[u][n] = (v8){0};                                     \
        for (int64_t j = 0; j < banks; ++j) {                                                    \
            const float *xb = xt + j * bank * ldx + b0;                                          \
            int64_t t = 0;                                                                       \
            for (; t + U <= k; t += U) {                                                         \
                for (int u = 0; u < U; ++u) {                                                    \
                    const float w = v[j * k + t + u];                                            \
                    const float *xc = xb + ix[j * k + t + u] * ldx;                              \
                    for (int n = 0; n < N; ++n) acc[u][n] += w * load8(xc + 8 * n);              \
                }                                                                                \
            }                                                                                    \
            for (; t < k; ++t) {                                                                 \
                const float w = v[j * k + t];                                                    \
                const float *xc = xb + ix[j * k + t] * ldx;                                      \
                for (int n = 0; n < N; ++n) acc[0][n] += w * load8(xc + 8 * n);                  \
            }                                                                                    \
        }                                                                                        \
        const float *xtail = xt + banks * bank * ldx + b0;                                       \
        for (int64_t t = 0; t < tail_k; ++t) {                                                   \
            const float w = tv[t];                                                               \
            const float *xc = xtail + ti[t] * ldx;                                               \
            for (int n = 0; n < N; ++n) acc[0][n] += w * load8(xc + 8 * n);                      \
        }                                                                                        \
        for (int u = 1; u < U; ++u)                                                              \
            for (int n = 0; n < N; ++n) acc[0][n] += acc[u][n];                                  \
        float out[8 * N];                                                                        \
        memcpy(out, acc[0], sizeof out);                                                         \
        for (int64_t c = 0; c < width; ++c) dst[c] = out[c] + b;                                 \
    }
GEMM_TILE(1, 4)
GEMM_TILE(2, 2)
GEMM_TILE(4, 1)
GEMM_TILE(8, 1)

/* Row o of y for batch columns [c0, c0 + width), width <= 64, into dst[0:width]: widest tiles first;
 * the last 8-wide tile may read columns up to ldx. */
static void gemm_row(const float *xt, int64_t ldx, int64_t c0, int64_t width, const float *v, const uint8_t *ix,
                     int64_t banks, int64_t k, int64_t bank, const float *tv, const uint8_t *ti, int64_t tail_k,
                     float b, float *dst) {
    int64_t c = 0;
    if (width == 64) {
        gemm_tile_8(xt, ldx, c0, 64, v, ix, banks, k, bank, tv, ti, tail_k, b, dst);
        return;
    }
    if (width - c >= 32) {
        gemm_tile_4(xt, ldx, c0 + c, 32, v, ix, banks, k, bank, tv, ti, tail_k, b, dst + c);
        c += 32;
    }
    if (width - c >= 16) {
        gemm_tile_2(xt, ldx, c0 + c, 16, v, ix, banks, k, bank, tv, ti, tail_k, b, dst + c);
        c += 16;
    }
    for (; c < width; c += 8) {
        const int64_t left = width - c;
        gemm_tile_1(xt, ldx, c0 + c, left < 8 ? left : 8, v, ix, banks, k, bank, tv, ti, tail_k, b, dst + c);
    }
}

#define ROW_BLOCK 16 /* rows computed into a local buffer, then written as contiguous runs of y */
#define BATCH_TILE 64

static void bank_gemm(const float *xt, int64_t ldx, int64_t batch, const float *values, const uint8_t *idx,
               const float *tail_values, const uint8_t *tail_idx, const float *bias, float *y,
               int64_t rows, int64_t banks, int64_t k, int64_t bank, int64_t tail_k) {
    const int64_t work = rows * (banks * k + tail_k) * batch;
    const int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
    const int team = work > PARALLEL_WORK ? team_size() : 1;
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t o0 = blk * ROW_BLOCK;
        const int64_t n_rows = rows - o0 < ROW_BLOCK ? rows - o0 : ROW_BLOCK;
        float buf[ROW_BLOCK][BATCH_TILE];
        for (int64_t c0 = 0; c0 < batch; c0 += BATCH_TILE) {
            const int64_t width = batch - c0 < BATCH_TILE ? batch - c0 : BATCH_TILE;
            for (int64_t r = 0; r < n_rows; ++r) {
                const int64_t o = o0 + r;
                gemm_row(xt, ldx, c0, width, values + o * banks * k, idx + o * banks * k, banks, k, bank,
                         tail_values + o * tail_k, tail_idx + o * tail_k, tail_k, bias ? bias[o] : 0.0f, buf[r]);
            }
            for (int64_t c = 0; c < width; ++c)  /* y[c0 + c, o0 : o0 + n_rows] */
                for (int64_t r = 0; r < n_rows; ++r) y[(c0 + c) * rows + o0 + r] = buf[r][c];
        }
    }
}

/* ---------------------------------------------------------------- entry point */

static __thread float *scratch = NULL; /* xt of the calling thread, grown on demand */
static __thread size_t scratch_floats = 0;

int bank_linear(const float *x, int64_t batch, int64_t in_features, float *y, const float *values,
                const uint8_t *idx, const float *tail_values, const uint8_t *tail_idx, const float *bias,
                int64_t rows, int64_t banks, int64_t k, int64_t bank, int64_t tail_k) {
    if (batch <= 0) return 0;
    if (batch == 1) {
        bank_gemv(x, values, idx, tail_values, tail_idx, bias, y, rows, banks, k, bank, tail_k);
        return 0;
    }
    const int64_t ldx = (batch + 7) / 8 * 8;
    const size_t need = (size_t)in_features * (size_t)ldx;
    if (need > scratch_floats) {
        void *grown = NULL;
        if (posix_memalign(&grown, 64, need * sizeof(float))) return -1;
        free(scratch);
        scratch = grown;
        scratch_floats = need;
    }
    for (int64_t c0 = 0; c0 < in_features; c0 += 16) { /* xt[c, b] = x[b, c], in blocks of 16 columns */
        const int64_t c1 = c0 + 16 < in_features ? c0 + 16 : in_features;
        for (int64_t b = 0; b < ldx; ++b)
            for (int64_t c = c0; c < c1; ++c) scratch[c * ldx + b] = b < batch ? x[b * in_features + c] : 0.0f;
    }
    bank_gemm(scratch, ldx, batch, values, idx, tail_values, tail_idx, bias, y, rows, banks, k, bank, tail_k);
    return 0;
}
