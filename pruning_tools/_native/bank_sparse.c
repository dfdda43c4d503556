/* Bank-sparse products straight from packed banks (pruning_tools.export.pack, channels-last rows).
 *
 * A weight is described once by a bank_weight (below): rows of `in_features` weights, each row cut
 * into `banks` full banks of `bank` weights plus a tail bank of in_features - banks * bank; every full
 * bank stores k values and their uint8 positions inside the bank, every tail bank tail_k of them.
 *   values [rows, banks, k] float32, idx [rows, banks, k] uint8;
 *   tail_values [rows, tail_k], tail_idx [rows, tail_k] (tail_k may be 0).
 * Full bank j of a row covers input columns [j * bank, (j + 1) * bank); the tail starts at banks * bank.
 *
 * Safety: bank_check() reads every index once and stamps the descriptor; the products refuse a
 * descriptor whose stamp does not match its fields (changed pointers or sizes, never checked), and
 * check every size they receive against it, once per call. So no index, size or stride from a file
 * can make them read or write outside the buffers described.
 *
 * bank_linear: x [batch, in] -> y [batch, rows]. Batch 1 is a dot product per row (AVX-512, banks of
 *   64 with k <= 16: register permutes pick the inputs of 16 / k rows at once); larger batches
 *   copy x transposed into a scratch buffer xt [in, ldx] and run the tile core below.
 * bank_conv2d: x [n, c, h, w] (NCHW) -> y [n, o, oh, ow] for a k x k convolution (any stride,
 *   padding, dilation; groups 1) whose rows are (o, kh, kw), each along the input channels. Each image
 *   is copied once into zero-padded, stride-phase planes (so that the input pixels an output row
 *   reads at one kernel position are contiguous); then for each output channel and each run of output
 *   positions, every stored weight (c, kh, kw) adds value * plane_c[shifted run] into vector
 *   accumulators. The weight is never expanded and the input never unfolded.
 *
 * Threads: OpenMP, sharing torch's runtime (torch is loaded first): omp_get_max_threads() is
 * torch.get_num_threads(). The team shrinks when other processes keep the cores busy (team_size).
 * GCC vector extensions keep the code portable: the compiler maps them to the widest SIMD it has.
 */
#ifdef BANK_PYTHON_MODULE /* also a CPython extension module (see the end): Python.h comes first */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#else
#define _POSIX_C_SOURCE 200112L
#endif
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef VL
#define VL 16 /* floats per vector */
#endif
#ifndef TILE_VECTORS
#define TILE_VECTORS 4 /* vectors of output positions per tile (4 or 8) */
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));

static inline vf loadv(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* VL x VL blocks transposed in registers, in shuffles that stay inside 128-bit lanes and then moves
 * of whole lanes (the compiler's unpcklps / shufps / vperm2f128 / vshuff32x4: no cross-lane permutes
 * of single floats, which cost two or three instructions each on AVX2). */
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

/* Lane L, float j of the result: mask[4 L + j]. */
#define LANE_MASK(NAME, EXPR) \
    vi NAME;                  \
    for (int e = 0; e < VL; ++e) NAME[e] = (EXPR)

static inline void transpose_vl(vf a[VL]) {
    enum { LANES = VL / 4 };
    /* pairs of rows interleaved (unpcklps; + 2: unpckhps), then pairs of pairs (shufps): lane L of
     * s[4 i + c] is then column 4 L + c of rows 4 i .. 4 i + 3 */
    LANE_MASK(unpack, (e & ~3) + (e & 1 ? VL : 0) + (e & 3) / 2);
    LANE_MASK(pairs, (e & ~3) + (e & 2 ? VL - 2 : 0) + (e & 3));
    vf t[VL], s[VL];
    for (int r = 0; r < VL; r += 2) {
        t[r] = __builtin_shuffle(a[r], a[r + 1], unpack);
        t[r + 1] = __builtin_shuffle(a[r], a[r + 1], unpack + 2);
    }
    for (int r = 0; r < VL; r += 4) {
        s[r] = __builtin_shuffle(t[r], t[r + 2], pairs);
        s[r + 1] = __builtin_shuffle(t[r], t[r + 2], pairs + 2);
        s[r + 2] = __builtin_shuffle(t[r + 1], t[r + 3], pairs);
        s[r + 3] = __builtin_shuffle(t[r + 1], t[r + 3], pairs + 2);
    }
    /* then whole lanes: log2(LANES) rounds, each putting the even lanes of a pair of vectors in one
     * vector and their odd lanes (+ 4) in another; column 4 i + c ends in v[i] */
    LANE_MASK(even, (e / 4 < LANES / 2 ? 8 * (e / 4) : VL + 8 * (e / 4 - LANES / 2)) + (e & 3));
    for (int c = 0; c < 4; ++c) {
        vf v[LANES], n[LANES];
        for (int i = 0; i < LANES; ++i) v[i] = s[4 * i + c];
        for (int round = 1; round < LANES; round *= 2) {
            for (int i = 0; i < LANES / 2; ++i) {
                n[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], even);
                n[LANES / 2 + i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], even + 4);
            }
            memcpy(v, n, sizeof v);
        }
        for (int i = 0; i < LANES; ++i) a[4 * i + c] = v[i];
    }
}

/* dst[c * ds + r] = src[r * ss + c] + (add ? add[r] : 0) for r, c < 16, rows r >= rows read as 0:
 * a 16 x 16 block, in VL x VL blocks. */
static inline void transpose_block(const float *src, int64_t ss, int64_t rows, const float *add, float *dst,
                                   int64_t ds) {
    for (int r0 = 0; r0 < 16; r0 += VL)
        for (int c0 = 0; c0 < 16; c0 += VL) {
            vf a[VL];
            for (int r = 0; r < VL; ++r)
                a[r] = r0 + r < rows ? loadv(src + (r0 + r) * ss + c0) + (add ? add[r0 + r] : 0.0f) : (vf){0};
            transpose_vl(a);
            for (int c = 0; c < VL; ++c) memcpy(dst + (c0 + c) * ds + r0, &a[c], sizeof a[c]);
        }
}

enum { BANK_OK = 0, BANK_NO_MEMORY = -1, BANK_NOT_CHECKED = -2, BANK_BAD_SIZES = -3, BANK_BAD_INDEX = -4 };

typedef struct {
    const float *values;
    const uint8_t *idx;
    const float *tail_values;
    const uint8_t *tail_idx;
    const float *bias; /* [rows] (linear) or [rows / (kh * kw)] (conv), or NULL */
    int64_t rows, in_features, banks, k, bank, tail_k;
    uint64_t stamp; /* written by bank_check */
} bank_weight;

typedef struct {
    int64_t n, c, h, w;                 /* input */
    int64_t kh, kw, sh, sw, ph, pw, dh, dw; /* kernel, stride, top/left padding, dilation */
    int64_t oh, ow;                     /* output */
    int64_t xs_n, xs_c, xs_h, xs_w;     /* the input's strides, in floats (NCHW or channels-last) */
    int64_t relu;                       /* 1: max(y, 0) in the epilogue (NaN kept, as torch.relu), 0: none */
} bank_conv_geometry;

#define LIMIT ((int64_t)1 << 31) /* every size below this: products of a few of them fit in int64 */

static uint64_t stamp_of(const bank_weight *w) {
    const uint64_t fields[] = {(uint64_t)(uintptr_t)w->values, (uint64_t)(uintptr_t)w->idx,
                               (uint64_t)(uintptr_t)w->tail_values, (uint64_t)(uintptr_t)w->tail_idx,
                               (uint64_t)w->rows, (uint64_t)w->in_features, (uint64_t)w->banks,
                               (uint64_t)w->k, (uint64_t)w->bank, (uint64_t)w->tail_k};
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) h = (h ^ fields[i]) * 0x100000001b3ull + 0x5bd1e995u;
    return h | 1u; /* never 0 (0: not checked) */
}

static int sizes_ok(const bank_weight *w) {
    if (w->rows < 0 || w->rows >= LIMIT || w->in_features < 0 || w->in_features >= LIMIT) return 0;
    if (w->bank < 1 || w->bank > 256 || w->banks < 0 || w->k < 0 || w->k > w->bank || w->tail_k < 0) return 0;
    if (w->banks * w->bank > w->in_features) return 0;
    const int64_t tail_len = w->in_features - w->banks * w->bank;
    if (tail_len >= w->bank || w->tail_k > tail_len) return 0;
    if (w->rows && w->banks && w->k && (!w->values || !w->idx)) return 0;
    if (w->rows && w->tail_k && (!w->tail_values || !w->tail_idx)) return 0;
    return 1;
}

/* Read every stored index once: each must lie inside its bank (full banks: < bank; tail: < tail_len).
 * Returns BANK_OK and stamps the descriptor, or BANK_BAD_SIZES / BANK_BAD_INDEX (first bad flat
 * position in *where: full banks, then tail). */
int bank_check(bank_weight *w, int64_t *where) {
    w->stamp = 0;
    *where = -1;
    if (!sizes_ok(w)) return BANK_BAD_SIZES;
    const int64_t n = w->rows * w->banks * w->k;
    const int64_t tail_len = w->in_features - w->banks * w->bank;
    for (int64_t i = 0; i < n; ++i)
        if (w->idx[i] >= w->bank) {
            *where = i;
            return BANK_BAD_INDEX;
        }
    const int64_t nt = w->rows * w->tail_k;
    for (int64_t i = 0; i < nt; ++i)
        if (w->tail_idx[i] >= tail_len) {
            *where = n + i;
            return BANK_BAD_INDEX;
        }
    w->stamp = stamp_of(w);
    return BANK_OK;
}

static int usable(const bank_weight *w) { return w && w->stamp != 0 && w->stamp == stamp_of(w) && sizes_ok(w); }

/* ---------------------------------------------------------------- threads */

#define PARALLEL_WORK 65536 /* multiply-adds below which one thread is faster than a team */

/* Threads for the next loop: omp_get_max_threads() (torch.set_num_threads), fewer when the count of
 * runnable threads (/proc/loadavg, read at most every 50 ms per calling thread, and again as soon as
 * the thread count changes) says other processes occupy the cores. Our own team is counted as running
 * (its threads spin between loops). bank_set_threads(n > 0) fixes the team size instead;
 * bank_set_threads(0) restores the default. bank_team_size() is the size the next product would use. */
static __thread double team_checked_at = -1.0;
static __thread int team_cached = 1, team_max = 0; /* team_max: omp_get_max_threads() at that check */
static int team_forced = 0;

void bank_set_threads(int n) { team_forced = n > 0 ? n : 0; }

static int team_size(void) {
    if (team_forced) return team_forced;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const double t = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
    const int max = omp_get_max_threads();
    if (team_checked_at < 0.0 || t - team_checked_at > 0.05 || max != team_max) {
        team_max = max;
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

int bank_team_size(void) { return team_size(); }

/* ---------------------------------------------------------------- batch 1 */

#define ROW_DOT_BODY(K)                                                                   \
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                              \
    int64_t j = 0;                                                                        \
    for (; j + 4 <= banks; j += 4) {                                                      \
        for (int u = 0; u < 4; ++u) {                                                     \
            const float *xb = x + (j + u) * bank;                                         \
            const float *vb = v + (j + u) * (K);                                          \
            const uint8_t *ib = ix + (j + u) * (K);                                       \
            float s = 0.0f;                                                               \
            for (int64_t t = 0; t < (K); ++t) s += vb[t] * xb[ib[t]];                     \
            acc[u] += s;                                                                  \
        }                                                                                 \
    }                                                                                     \
    for (; j < banks; ++j) {                                                              \
        const float *xb = x + j * bank;                                                   \
        for (int64_t t = 0; t < (K); ++t) acc[0] += v[j * (K) + t] * xb[ix[j * (K) + t]]; \
    }                                                                                     \
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);

#define DEFINE_ROW_DOT(K)                                                                             \
    static float row_dot_##K(const float *x, const float *v, const uint8_t *ix, int64_t banks, int64_t bank) { \
        ROW_DOT_BODY(K)                                                                               \
    }
DEFINE_ROW_DOT(1)
DEFINE_ROW_DOT(2)
DEFINE_ROW_DOT(3)
DEFINE_ROW_DOT(4)
DEFINE_ROW_DOT(5)
DEFINE_ROW_DOT(6)
DEFINE_ROW_DOT(7)
DEFINE_ROW_DOT(8)
DEFINE_ROW_DOT(9)
DEFINE_ROW_DOT(10)
DEFINE_ROW_DOT(11)
DEFINE_ROW_DOT(12)
DEFINE_ROW_DOT(13)
DEFINE_ROW_DOT(14)
DEFINE_ROW_DOT(15)
DEFINE_ROW_DOT(16)

static float row_dot_any(const float *x, const float *v, const uint8_t *ix, int64_t banks, int64_t bank, int64_t k) {
    ROW_DOT_BODY(k)
}

static inline float row_dot(const float *x, const float *v, const uint8_t *ix, int64_t banks, int64_t bank,
                            int64_t k) {
    switch (k) {
        case 0: return 0.0f;
        case 1: return row_dot_1(x, v, ix, banks, bank);
        case 2: return row_dot_2(x, v, ix, banks, bank);
        case 3: return row_dot_3(x, v, ix, banks, bank);
        case 4: return row_dot_4(x, v, ix, banks, bank);
        case 5: return row_dot_5(x, v, ix, banks, bank);
        case 6: return row_dot_6(x, v, ix, banks, bank);
        case 7: return row_dot_7(x, v, ix, banks, bank);
        case 8: return row_dot_8(x, v, ix, banks, bank);
        case 9: return row_dot_9(x, v, ix, banks, bank);
        case 10: return row_dot_10(x, v, ix, banks, bank);
        case 11: return row_dot_11(x, v, ix, banks, bank);
        case 12: return row_dot_12(x, v, ix, banks, bank);
        case 13: return row_dot_13(x, v, ix, banks, bank);
        case 14: return row_dot_14(x, v, ix, banks, bank);
        case 15: return row_dot_15(x, v, ix, banks, bank);
        case 16: return row_dot_16(x, v, ix, banks, bank);
        default: return row_dot_any(x, v, ix, banks, bank, k);
    }
}

/* Row o of a batch-1 product: the dot product `full` of its full banks, plus its tail bank and bias. */
static inline float finish_row(const bank_weight *w, const float *x, int64_t o, float full) {
    const float *tv = w->tail_values + o * w->tail_k;
    const uint8_t *ti = w->tail_idx + o * w->tail_k;
    const float *xt = x + w->banks * w->bank;
    for (int64_t t = 0; t < w->tail_k; ++t) full += tv[t] * xt[ti[t]];
    return full + (w->bias ? w->bias[o] : 0.0f);
}

/* Row o of a batch-1 product, one stored weight at a time. */
static inline float scalar_row(const bank_weight *w, const float *x, int64_t o) {
    const int64_t n = w->banks * w->k;
    const float full = w->banks ? row_dot(x, w->values + o * n, w->idx + o * n, w->banks, w->bank, w->k) : 0.0f;
    return finish_row(w, x, o, full);
}

#if defined(__AVX512F__)
#include <immintrin.h>
/* Banks of 64 with k <= 16 (no gather): the 64 inputs of bank j sit in four registers, and the k
 * stored weights of each of g = 16 / k rows pick theirs with two two-register permutes and a blend.
 * Lanes [r * k, (r + 1) * k) belong to row o + r (g * k of the 16 used); two accumulators take the
 * banks in turn. k = 4, 8, 16 fill their lanes with plain loads, any other k with masked ones. */
static inline __attribute__((always_inline)) void gemv_permute_k(const bank_weight *w, const float *x, float *y,
                                                                 int64_t o0, int64_t o1, const int k) {
    const int64_t banks = w->banks, n = banks * k, g = 16 / k;
    const __m512i bit5 = _mm512_set1_epi32(32);
    int64_t o = o0;
    for (; o + g <= o1; o += g) {
        const float *v = w->values + o * n;
        const uint8_t *ix = w->idx + o * n;
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t j = 0; j < banks; ++j) {
            const float *xb = x + j * 64;
            __m512 vals;
            __m128i idx8;
            if (k == 4) {
                uint32_t i0, i1, i2, i3;
                memcpy(&i0, ix + j * 4, 4);
                memcpy(&i1, ix + n + j * 4, 4);
                memcpy(&i2, ix + 2 * n + j * 4, 4);
                memcpy(&i3, ix + 3 * n + j * 4, 4);
                idx8 = _mm_setr_epi32((int)i0, (int)i1, (int)i2, (int)i3);
                vals = _mm512_castps128_ps512(_mm_loadu_ps(v + j * 4));
                vals = _mm512_insertf32x4(vals, _mm_loadu_ps(v + n + j * 4), 1);
                vals = _mm512_insertf32x4(vals, _mm_loadu_ps(v + 2 * n + j * 4), 2);
                vals = _mm512_insertf32x4(vals, _mm_loadu_ps(v + 3 * n + j * 4), 3);
            } else if (k == 8) {
                uint64_t i0, i1;
                memcpy(&i0, ix + j * 8, 8);
                memcpy(&i1, ix + n + j * 8, 8);
                idx8 = _mm_set_epi64x((long long)i1, (long long)i0);
                vals = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(v + j * 8)),
                                          _mm256_loadu_ps(v + n + j * 8), 1);
            } else if (k == 16) {
                idx8 = _mm_loadu_si128((const __m128i *)(ix + j * 16));
                vals = _mm512_loadu_ps(v + j * 16);
            } else { /* lanes [r * k, (r + 1) * k) from row r's bank j: masked, so nothing else is read */
                idx8 = _mm_setzero_si128();
                vals = _mm512_setzero_ps();
                for (int64_t r = 0; r < g; ++r) {
                    const __mmask16 lanes = (__mmask16)(((1u << k) - 1u) << (r * k));
                    const int64_t at = r * n + j * k - r * k; /* lane r * k reads element r * n + j * k */
                    vals = _mm512_mask_loadu_ps(vals, lanes, v + at);
                    idx8 = _mm_mask_loadu_epi8(idx8, lanes, ix + at);
                }
            }
            const __m512i idx = _mm512_cvtepu8_epi32(idx8);
            const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(xb), idx, _mm512_loadu_ps(xb + 16));
            const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(xb + 32), idx, _mm512_loadu_ps(xb + 48));
            const __m512 picked = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, bit5), lo, hi);
            acc[j & 1] = _mm512_fmadd_ps(vals, picked, acc[j & 1]);
        }
        float lanes[16];
        _mm512_storeu_ps(lanes, _mm512_add_ps(acc[0], acc[1]));
        for (int64_t r = 0; r < g; ++r) {
            float sum = 0.0f;
            for (int t = 0; t < k; ++t) sum += lanes[r * k + t];
            y[o + r] = finish_row(w, x, o + r, sum);
        }
    }
    for (; o < o1; ++o) y[o] = scalar_row(w, x, o); /* rows left over: one at a time */
}

static int gemv_permuted(const bank_weight *w, const float *x, float *y, int64_t o0, int64_t o1) {
#ifdef NO_GEMV_PERMUTE
    return 0;
#endif
    if (w->bank != 64 || w->k < 1 || w->k > 16) return 0;
    switch (w->k) {
        case 4: gemv_permute_k(w, x, y, o0, o1, 4); return 1;
        case 8: gemv_permute_k(w, x, y, o0, o1, 8); return 1;
        case 16: gemv_permute_k(w, x, y, o0, o1, 16); return 1;
        default: gemv_permute_k(w, x, y, o0, o1, (int)w->k); return 1;
    }
}

/* 16 stored weights at a time: their values, their columns (bank start from `base` + in-bank index)
 * gathered from x. `base[f]` = (f / k) * bank for the flat position f of a row's full banks. */
static void gemv_rows(const bank_weight *w, const float *x, float *y, int64_t o0, int64_t o1, const int32_t *base) {
    if (gemv_permuted(w, x, y, o0, o1)) return;
    const int64_t n = w->banks * w->k;
    for (int64_t o = o0; o < o1; ++o) {
        const float *v = w->values + o * n;
        const uint8_t *ix = w->idx + o * n;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t f = 0;
        for (; f + 32 <= n; f += 32) {
            const __m512i c0 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ix + f))),
                                                _mm512_loadu_si512(base + f));
            const __m512i c1 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ix + f + 16))),
                                                _mm512_loadu_si512(base + f + 16));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + f), _mm512_i32gather_ps(c0, x, 4), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + f + 16), _mm512_i32gather_ps(c1, x, 4), a1);
        }
        for (; f + 16 <= n; f += 16) {
            const __m512i c0 = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ix + f))),
                                                _mm512_loadu_si512(base + f));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + f), _mm512_i32gather_ps(c0, x, 4), a0);
        }
        float acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (; f < n; ++f) acc += v[f] * x[base[f] + ix[f]];
        y[o] = finish_row(w, x, o, acc);
    }
}
#define GEMV_BASE 1
#else
static void gemv_rows(const bank_weight *w, const float *x, float *y, int64_t o0, int64_t o1, const int32_t *base) {
    (void)base;
    for (int64_t o = o0; o < o1; ++o) y[o] = scalar_row(w, x, o);
}
#define GEMV_BASE 0
#endif

static int bank_gemv(const bank_weight *w, const float *x, float *y) {
    const int64_t rows = w->rows, n = w->banks * w->k;
    int32_t local[1024], *base = local;
    if (GEMV_BASE && n > 1024 && !(base = malloc(sizeof(int32_t) * (size_t)n))) return BANK_NO_MEMORY;
    for (int64_t f = 0; GEMV_BASE && f < n; ++f) base[f] = (int32_t)((f / w->k) * w->bank);
    const int team = rows * (n + w->tail_k) > PARALLEL_WORK ? team_size() : 1;
    if (team == 1) /* no OpenMP region at all: small products are over in a few microseconds */
        gemv_rows(w, x, y, 0, rows, base);
    else {
#pragma omp parallel num_threads(team)
        {
            const int64_t nth = omp_get_num_threads(), me = omp_get_thread_num();
            gemv_rows(w, x, y, rows * me / nth, rows * (me + 1) / nth, base);
        }
    }
    if (base != local) free(base);
    return BANK_OK;
}

/* ---------------------------------------------------------------- the tile core */

#define CHUNK_O 32 /* output channels per work item */
#define X_AHEAD 64 /* floats: how far ahead of the transpose the input rows are asked for */

/* Asks for the cache lines of bytes [p, p + bytes) (write: for writing). A prefetch never faults, so
 * p may lie past an array's end. always_inline: GCC deems a function of prefetches alone free of
 * effects and drops its calls. */
static inline __attribute__((always_inline)) void prefetch_span(const void *p, int64_t bytes, int write) {
#ifndef NO_PREFETCH
    const char *line = (const char *)((uintptr_t)p & ~(uintptr_t)63), *end = (const char *)p + bytes;
    for (; line < end; line += 64) {
        if (write)
            __builtin_prefetch(line, 1, 3);
        else
            __builtin_prefetch(line, 0, 3);
    }
#else
    (void)p, (void)bytes, (void)write;
#endif
}

/* Asks for the weights of output channel o (rows o * kk + r, r < kk) that the next pass reads: their
 * next block of banks, or after the last block those of channel o + CHUNK_O (the next chunk). Each pass
 * reads one short run of every row, at the row's stride: a pattern the hardware prefetchers miss when
 * the weights come from memory, as they do inside a model whose other layers evicted them. */
static inline __attribute__((always_inline)) void prefetch_next(const bank_weight *w, int64_t o, int64_t kk,
                                                                int64_t j0, int64_t j1) {
    const int64_t banks = w->banks, k = w->k, span = j1 - j0;
    int64_t first = o * kk, from = j1, n = j1 + span < banks ? span : banks - j1;
    if (j1 == banks) {
        first = (o + CHUNK_O) * kk;
        if (first >= w->rows) return;
        from = 0;
        n = span;
    }
    if (n == banks) { /* whole rows: one run */
        prefetch_span(w->values + first * banks * k, kk * banks * k * 4, 0);
        prefetch_span(w->idx + first * banks * k, kk * banks * k, 0);
        return;
    }
    for (int64_t row = first; row < first + kk; ++row) {
        prefetch_span(w->values + (row * banks + from) * k, n * k * 4, 0);
        prefetch_span(w->idx + (row * banks + from) * k, n * k, 0);
    }
}

/* The products below read their input as *planes*: input channel c is the run planes[c * ldc + ...],
 * and output position p of kernel position r reads planes[c * ldc + offs[r] + p] (linear: one
 * kernel position, offset 0, positions = batch columns of x transposed).
 *
 * For each of n_o output channels o0 + i: io[i][0 : NV * VL] (+)= sum over its kk rows r (row
 * (o0 + i) * kk + r), over their full banks [j0, j1) and (with_tail) tail bank, of
 * value * planes[c * ldc + offs[r] + p0 + 0 : NV * VL]. Sets of accumulators (stored weights take
 * turns: four for one vector, two for more) hide the FMA latency. */
#define TILE_OF(NAME, VT, VLEN, LOAD, NV)                                                                \
    static void NAME(const bank_weight *w, int64_t o0, int64_t n_o, int64_t kk, const float *xq,        \
                          int64_t ldc, const int64_t *offs, int64_t p0, int64_t j0, int64_t j1,          \
                          int with_tail, int first, int ahead, float (*io)[TILE_POSITIONS]) {           \
        const int64_t banks = w->banks, k = w->k, bank = w->bank, tail_k = w->tail_k;                   \
        for (int64_t i = 0; i < n_o; ++i) {                                                             \
            VT a[NV], b[NV], c[NV], d[NV];                                                                            \
            if (ahead) prefetch_next(w, o0 + i, kk, j0, j1);                                            \
            for (int n = 0; n < NV; ++n) {                                                              \
                a[n] = first ? (VT){0} : LOAD(io[i] + n * VLEN);                                         \
                b[n] = c[n] = d[n] = (VT){0};                                                           \
            }                                                                                           \
            for (int64_t r = 0; r < kk; ++r) {                                                          \
                const int64_t row = (o0 + i) * kk + r;                                                  \
                const float *v = w->values + (row * banks + j0) * k;                                    \
                const uint8_t *ix = w->idx + (row * banks + j0) * k;                                    \
                const float *xb = xq + offs[r] + p0 + j0 * bank * ldc;                                  \
                for (int64_t j = j0; j < j1; ++j, v += k, ix += k, xb += bank * ldc) {                  \
                    int64_t t = 0;                                                                      \
                    for (; (NV) <= 1 && t + 4 <= k; t += 4) { /* one vector: four chains */            \
                        const float w0 = v[t], w1 = v[t + 1], w2 = v[t + 2], w3 = v[t + 3];             \
                        const float *s0 = xb + ix[t] * ldc, *s1 = xb + ix[t + 1] * ldc;                 \
                        const float *s2 = xb + ix[t + 2] * ldc, *s3 = xb + ix[t + 3] * ldc;             \
                        for (int n = 0; n < NV; ++n) {                                                  \
                            a[n] += w0 * LOAD(s0 + n * VLEN);                                           \
                            b[n] += w1 * LOAD(s1 + n * VLEN);                                           \
                            c[n] += w2 * LOAD(s2 + n * VLEN);                                           \
                            d[n] += w3 * LOAD(s3 + n * VLEN);                                           \
                        }                                                                               \
                    }                                                                                   \
                    for (; t + 2 <= k; t += 2) {                                                        \
                        const float w0 = v[t], w1 = v[t + 1];                                           \
                        const float *s0 = xb + ix[t] * ldc, *s1 = xb + ix[t + 1] * ldc;                 \
                        for (int n = 0; n < NV; ++n) {                                                  \
                            a[n] += w0 * LOAD(s0 + n * VLEN);                                           \
                            b[n] += w1 * LOAD(s1 + n * VLEN);                                           \
                        }                                                                               \
                    }                                                                                   \
                    if (t < k) {                                                                        \
                        const float w0 = v[t];                                                          \
                        const float *s0 = xb + ix[t] * ldc;                                             \
                        for (int n = 0; n < NV; ++n) a[n] += w0 * LOAD(s0 + n * VLEN);                   \
                    }                                                                                   \
                }                                                                                       \
                if (with_tail) {                                                                        \
                    const float *tv = w->tail_values + row * tail_k;                                    \
                    const uint8_t *ti = w->tail_idx + row * tail_k;                                     \
                    const float *xt = xq + offs[r] + p0 + banks * bank * ldc;                           \
                    for (int64_t t = 0; t < tail_k; ++t) {                                              \
                        const float w0 = tv[t];                                                         \
                        const float *s0 = xt + ti[t] * ldc;                                             \
                        for (int n = 0; n < NV; ++n) a[n] += w0 * LOAD(s0 + n * VLEN);                   \
                    }                                                                                   \
                }                                                                                       \
            }                                                                                           \
            for (int n = 0; n < NV; ++n) {                                                              \
                const VT sum = (a[n] + b[n]) + (c[n] + d[n]);                                                             \
                memcpy(io[i] + n * VLEN, &sum, sizeof sum);                                               \
            }                                                                                           \
        }                                                                                               \
    }
#define TILE_POSITIONS (TILE_VECTORS * VL) /* output positions per tile */
#define TILE(NV) TILE_OF(tile_##NV, vf, VL, loadv, NV)
TILE(1)
TILE(2)
TILE(3)
TILE(4)
#if TILE_VECTORS > 4
TILE(5)
TILE(6)
TILE(7)
TILE(8)
#endif
/* 8 positions (small batches): half vectors, so that no lane is computed for nothing */
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
TILE_OF(tile_half, v8, 8, load8, 1)

/* a[c] = column c of the 8 x 8 block a[r] (row r): pairs interleaved, then pairs of pairs, then
 * 128-bit halves (shuffles of the build's own instructions for 8-float vectors). */
typedef int32_t v8i __attribute__((vector_size(8 * sizeof(int32_t))));
static inline void transpose8(v8 a[8]) {
    const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const v8i pairs_lo = {0, 1, 8, 9, 4, 5, 12, 13}, pairs_hi = {2, 3, 10, 11, 6, 7, 14, 15};
    const v8i halves_lo = {0, 1, 2, 3, 8, 9, 10, 11}, halves_hi = {4, 5, 6, 7, 12, 13, 14, 15};
    v8 t[8], s[8];
    for (int r = 0; r < 8; r += 2) {
        t[r] = __builtin_shuffle(a[r], a[r + 1], lo);
        t[r + 1] = __builtin_shuffle(a[r], a[r + 1], hi);
    }
    for (int r = 0; r < 8; r += 4) {
        s[r] = __builtin_shuffle(t[r], t[r + 2], pairs_lo);
        s[r + 1] = __builtin_shuffle(t[r], t[r + 2], pairs_hi);
        s[r + 2] = __builtin_shuffle(t[r + 1], t[r + 3], pairs_lo);
        s[r + 3] = __builtin_shuffle(t[r + 1], t[r + 3], pairs_hi);
    }
    for (int i = 0; i < 4; ++i) {
        a[i] = __builtin_shuffle(s[i], s[i + 4], halves_lo);
        a[i + 4] = __builtin_shuffle(s[i], s[i + 4], halves_hi);
    }
}

/* xt[c * 8 + b] = x[b * in + c] for channels [c0, c1), b < 8 (0 for b >= batch, batch <= 8): blocks of
 * 8 channels transposed in registers, the channels past the last block one float at a time. */
static inline void transpose_rows8(const float *x, int64_t batch, int64_t in, int64_t c0, int64_t c1, float *xt) {
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        v8 a[8];
        for (int b = 0; b < 8; ++b) a[b] = b < batch ? load8(x + b * in + c) : (v8){0};
        transpose8(a);
        for (int i = 0; i < 8; ++i) memcpy(xt + (c + i) * 8, &a[i], sizeof a[i]);
    }
    for (; c < c1; ++c)
        for (int64_t b = 0; b < 8; ++b) xt[c * 8 + b] = b < batch ? x[b * in + c] : 0.0f;
}

#ifndef L1_TARGET
#define L1_TARGET (32 * 1024) /* bytes of input a block of banks may read per tile */
#endif

static void tile(const bank_weight *w, int64_t o0, int64_t n_o, int64_t kk, const float *xq, int64_t ldc,
                 const int64_t *offs, int64_t p0, int64_t width, int64_t j0, int64_t j1, int with_tail, int first,
                 int ahead, float (*io)[TILE_POSITIONS]) {
    /* exactly the whole vectors covering [p0, p0 + width): what the callers' buffers hold */
    if (VL > 8 && width <= 8) {
        tile_half(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io);
        return;
    }
    switch ((width + VL - 1) / VL) {
#if TILE_VECTORS > 4
        case 8: tile_8(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        case 7: tile_7(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        case 6: tile_6(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        case 5: tile_5(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
#endif
        case 4: tile_4(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        case 3: tile_3(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        case 2: tile_2(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
        default: tile_1(w, o0, n_o, kk, xq, ldc, offs, p0, j0, j1, with_tail, first, ahead, io); break;
    }
}

/* Where results go: conv y[(n * out_c + o) * out_plane + oh * out_w + ow] for position
 * p = n * img_stride + oh * wq_len + ow with oh < out_h and ow < out_w (other positions dropped),
 * or linear y[p * rows + o]; plus bias[o], then (conv, relu set) max(., 0). */
typedef struct {
    float *y;
    int linear;
    int64_t out_plane, wq_len, out_w, out_h, img_stride;
    int relu;
} sink;

/* dst[q] = src[q] + b, through ReLU when relu is set (v < 0 ? 0 : v keeps a NaN, as torch.relu does) */
static inline void store_run(float *dst, const float *src, int64_t n, float b, int relu) {
    if (relu)
        for (int64_t q = 0; q < n; ++q) {
            const float v = src[q] + b;
            dst[q] = v < 0.0f ? 0.0f : v;
        }
    else
        for (int64_t q = 0; q < n; ++q) dst[q] = src[q] + b;
}

/* The whole product, called by every thread of a parallel region: work items (tile of positions,
 * chunk of output channels) are split into one contiguous range per thread. Input channels are taken
 * in blocks of banks that keep a tile's input in L1 (span_bytes: input bytes one channel reads per
 * tile); partial sums stay in a per-thread buffer of CHUNK_O x TILE_POSITIONS. */
static void product(const bank_weight *w, int64_t kk, const float *planes, int64_t ldc, const int64_t *offs,
                    int64_t positions, int64_t span_bytes, const sink *out) {
    const int64_t out_c = w->rows / kk, banks = w->banks;
    const int64_t tiles = (positions + TILE_POSITIONS - 1) / TILE_POSITIONS;
    const int64_t chunks = (out_c + CHUNK_O - 1) / CHUNK_O;
    const int64_t per_bank = w->bank * span_bytes;
    int64_t block = L1_TARGET / (per_bank > 0 ? per_bank : 1);
    block = block < 1 ? 1 : block;
    const int64_t items = tiles * chunks, nth = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = items * me / nth, last = items * (me + 1) / nth;
    float buf[CHUNK_O][TILE_POSITIONS] __attribute__((aligned(64)));
    for (int64_t item = first; item < last; ++item) {
        const int64_t tb = item / chunks, o0 = (item % chunks) * CHUNK_O;
        const int64_t p0 = tb * TILE_POSITIONS;
        const int64_t width = positions - p0 < TILE_POSITIONS ? positions - p0 : TILE_POSITIONS;
        const int64_t n_o = out_c - o0 < CHUNK_O ? out_c - o0 : CHUNK_O;
        if (out->linear) /* the outputs it will write, while the tiles run */
            for (int64_t q = 0; q < width; ++q) prefetch_span(out->y + (p0 + q) * w->rows + o0, n_o * 4, 1);
        const int ahead = tb == first / chunks; /* this thread's first tile: later ones find the weights cached */
        for (int64_t j0 = 0;; j0 += block) {
            const int64_t j1 = j0 + block < banks ? j0 + block : banks;
            const int tail = j1 == banks;
            tile(w, o0, n_o, kk, planes, ldc, offs, p0, width, j0, j1, tail, j0 == 0, ahead, buf);
            if (tail) break;
        }
        if (out->linear) { /* y[p0 + q, o0 + i] = buf[i][q] + bias, in 16 x 16 blocks */
            for (int64_t i0 = 0; i0 < n_o; i0 += 16) {
                for (int64_t q0 = 0; q0 < width; q0 += 16) {
                    if (i0 + 16 <= n_o && q0 + 16 <= width) {
                        transpose_block(buf[i0] + q0, TILE_POSITIONS, 16, w->bias ? w->bias + o0 + i0 : NULL,
                                        out->y + (p0 + q0) * w->rows + o0 + i0, w->rows);
                        continue;
                    }
                    const int64_t i1 = i0 + 16 < n_o ? i0 + 16 : n_o, q1 = q0 + 16 < width ? q0 + 16 : width;
                    for (int64_t q = q0; q < q1; ++q)
                        for (int64_t i = i0; i < i1; ++i)
                            out->y[(p0 + q) * w->rows + o0 + i] = buf[i][q] + (w->bias ? w->bias[o0 + i] : 0.0f);
                }
            }
            continue;
        }
        const int64_t out_c = w->rows / kk;
        const int64_t first_img = p0 / out->img_stride, last_img = (p0 + width - 1) / out->img_stride;
        if (out->img_stride == out->out_plane && first_img == last_img) { /* no dropped positions: one run */
            const int64_t r0 = p0 - first_img * out->img_stride;
            for (int64_t i = 0; i < n_o; ++i) {
                const float b = w->bias ? w->bias[o0 + i] : 0.0f;
                float *dst = out->y + (first_img * out_c + o0 + i) * out->out_plane + r0;
                store_run(dst, buf[i], width, b, out->relu);
            }
            continue;
        }
        for (int64_t i = 0; i < n_o; ++i) {
            const float b = w->bias ? w->bias[o0 + i] : 0.0f;
            int64_t n = p0 / out->img_stride, r = p0 % out->img_stride;
            int64_t oh = r / out->wq_len, ow = r % out->wq_len;
            for (int64_t t = 0; t < width;) { /* runs of one row of one image */
                const int64_t run = out->wq_len - ow < width - t ? out->wq_len - ow : width - t;
                const int64_t valid =
                    oh < out->out_h && ow < out->out_w ? (out->out_w - ow < run ? out->out_w - ow : run) : 0;
                float *dst = out->y + (n * out_c + o0 + i) * out->out_plane + oh * out->out_w + ow;
                store_run(dst, buf[i] + t, valid, b, out->relu);
                t += run;
                ow += run;
                if (ow == out->wq_len) {
                    ow = 0;
                    if (++oh * out->wq_len == out->img_stride) {
                        oh = 0;
                        ++n;
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- linear */

static __thread float *scratch = NULL; /* of the calling thread, grown on demand, kept for later calls */
static __thread size_t scratch_floats = 0;

/* A stride of n floats (a multiple of 16) made an odd number of 64-byte lines: rows of channels
 * then fall into different cache sets (a power-of-two stride maps them onto a few and they evict
 * each other). */
#ifdef NO_ODD_LINES
static int64_t odd_lines(int64_t n) { return n; }
#else
static int64_t odd_lines(int64_t n) { return (n / 16) % 2 ? n : n + 16; }
#endif

static float *scratch_of(size_t floats) {
    if (floats > scratch_floats) {
        void *grown = NULL;
        if (posix_memalign(&grown, 64, floats * sizeof(float))) return NULL;
        free(scratch);
        scratch = grown;
        scratch_floats = floats;
    }
    return scratch;
}

int bank_linear(const bank_weight *w, const float *x, int64_t batch, int64_t in_features, float *y) {
    if (!usable(w)) return BANK_NOT_CHECKED;
    if (batch < 0 || batch >= LIMIT || in_features != w->in_features) return BANK_BAD_SIZES;
    if (batch == 0 || w->rows == 0) return BANK_OK;
    if (batch == 1) return bank_gemv(w, x, y);
    /* up to 8 columns: rows of 8 floats (half vectors); more: whole 16 x 16 blocks and vectors */
    const int64_t ldx = batch <= 8 ? 8 : odd_lines((batch + 15) / 16 * 16);
    float *xt = scratch_of((size_t)in_features * (size_t)ldx);
    if (!xt) return BANK_NO_MEMORY;
    const int64_t work = w->rows * (w->banks * w->k + w->tail_k) * batch;
    const int team = work > PARALLEL_WORK ? team_size() : 1;
    const int64_t zero = 0;
    const sink out = {y, 1, 0, 0, 0, 0, 0, 0};
#pragma omp parallel num_threads(team) if (team > 1)
    {
#pragma omp for schedule(static)
        for (int64_t c0 = 0; c0 < in_features; c0 += 16) { /* xt[c, b] = x[b, c] (0 for b >= batch) */
            if (ldx == 8) {
                transpose_rows8(x, batch, in_features, c0, c0 + 16 < in_features ? c0 + 16 : in_features, xt);
                continue;
            }
            for (int64_t b0 = 0; b0 < ldx; b0 += 16) {
                if (c0 + 16 <= in_features) { /* a 16 x 16 block */
                    const float *src = b0 < batch ? x + b0 * in_features + c0 : x; /* rows past the batch: 0 */
                    for (int64_t b = 0; b < 16 && b < batch - b0; ++b)
                        prefetch_span(src + b * in_features + X_AHEAD, 1, 0);
                    transpose_block(src, in_features, batch - b0, NULL, xt + c0 * ldx + b0, ldx);
                    continue;
                }
                for (int64_t c = c0; c < in_features; ++c)
                    for (int64_t b = b0; b < b0 + 16; ++b) xt[c * ldx + b] = b < batch ? x[b * in_features + c] : 0.0f;
            }
        }
        product(w, 1, xt, ldx, &zero, batch, (int64_t)((ldx == 8 ? 8 : TILE_POSITIONS) * sizeof(float)), &out);
    }
    return BANK_OK;
}

/* ---------------------------------------------------------------- convolution */

/* n floats from src to dst / n zeros at dst: whole vectors, then single floats. The rows copied here
 * are a few dozen floats; a library call each cost more than the copy. */
static inline void copy_run(float *dst, const float *src, int64_t n) {
    int64_t q = 0;
    for (; q + VL <= n; q += VL) {
        const vf v = loadv(src + q);
        memcpy(dst + q, &v, sizeof v);
    }
    for (; q < n; ++q) dst[q] = src[q];
}

static inline void zero_run(float *dst, int64_t n) {
    const vf z = {0};
    int64_t q = 0;
    for (; q + VL <= n; q += VL) memcpy(dst + q, &z, sizeof z);
    for (; q < n; ++q) dst[q] = 0.0f;
}

/* The planes' layout (see bank_conv2d): channel stride, slot length, image stride, rows and columns
 * of a slot's image, phase slots per row phase, and the slot of each row / column phase (-1: unused). */
typedef struct {
    int64_t ldc, slot_len, img_stride, hq_len, wq_len, nw;
    const int64_t *slot_of_h, *slot_of_w;
} planes_layout;

/* Channel c of every image (NCHW-like strides) into its phase slots at `dst` (= xq + c * ldc), zeros
 * where the kernel reads padding. */
static void channel_to_planes(const bank_conv_geometry *g, const planes_layout *L, const float *x, int64_t c,
                              float *dst) {
    for (int rh = 0; rh < g->sh; ++rh) {
        if (L->slot_of_h[rh] < 0) continue;
        for (int rw = 0; rw < g->sw; ++rw) {
            if (L->slot_of_w[rw] < 0) continue;
            float *slot = dst + (L->slot_of_h[rh] * L->nw + L->slot_of_w[rw]) * L->slot_len;
            /* columns wq in [w0, w1) read the image (iw = wq * sw + rw - pw), the rest is padding */
            int64_t w0 = 0, w1 = L->wq_len;
            while (w0 < L->wq_len && w0 * g->sw + rw - g->pw < 0) ++w0;
            while (w1 > w0 && (w1 - 1) * g->sw + rw - g->pw >= g->w) --w1;
            const int64_t step = g->sw * g->xs_w;
            /* whole rows, one after the other in the image and in the slot: one run per image */
            const int whole = step == 1 && g->sh == 1 && w0 == 0 && w1 == L->wq_len && g->xs_h == L->wq_len;
            for (int64_t img = 0; img < g->n; ++img) {
                for (int64_t hq = 0; hq < L->hq_len; ++hq) {
                    const int64_t ih = hq * g->sh + rh - g->ph;
                    float *row = slot + img * L->img_stride + hq * L->wq_len;
                    if (ih < 0 || ih >= g->h || w1 <= w0) {
                        zero_run(row, L->wq_len);
                        continue;
                    }
                    const float *src = x + img * g->xs_n + c * g->xs_c + ih * g->xs_h + (w0 * g->sw + rw - g->pw) * g->xs_w;
                    if (whole) { /* rows hq .. last valid: one copy */
                        int64_t last = hq;
                        while (last + 1 < L->hq_len && last + 1 + rh - g->ph < g->h) ++last;
                        copy_run(row, src, (last - hq + 1) * L->wq_len);
                        hq = last;
                        continue;
                    }
                    zero_run(row, w0);
                    if (step == 1) copy_run(row + w0, src, w1 - w0);
                    else
                        for (int64_t q = 0; q < w1 - w0; ++q) row[w0 + q] = src[q * step];
                    zero_run(row + w1, L->wq_len - w1);
                }
            }
            zero_run(slot + g->n * L->img_stride, L->slot_len - g->n * L->img_stride);
        }
    }
}

/* dst[c * ldc + q] = src[q * xs + c] for q < count pixels, c < channels (channel stride 1): blocks of up
 * to 16 pixels x 16 channels transposed in registers, the channels past the last 16 one at a time. */
static void pixels_run(const float *src, int64_t xs, int64_t channels, float *dst, int64_t ldc, int64_t count) {
    const int64_t c16 = channels / 16 * 16;
    for (int64_t q0 = 0; q0 < count; q0 += 16) {
        const int64_t n = count - q0 < 16 ? count - q0 : 16;
        for (int64_t c0 = 0; c0 < c16; c0 += 16) {
            if (n == 16) {
                transpose_block(src + q0 * xs + c0, xs, 16, NULL, dst + c0 * ldc + q0, ldc);
                continue;
            }
            float block[16][16] __attribute__((aligned(64))); /* then only the run's own pixels */
            transpose_block(src + q0 * xs + c0, xs, n, NULL, block[0], 16);
            for (int c = 0; c < 16; ++c) copy_run(dst + (c0 + c) * ldc + q0, block[c], n);
        }
        for (int64_t c = c16; c < channels; ++c)
            for (int64_t q = q0; q < q0 + n; ++q) dst[c * ldc + q] = src[q * xs + c];
    }
}

/* Row ih of image img of a channels-last input (channel stride 1) into the planes `xq` (zeroed). */
static void pixels_to_planes(const bank_conv_geometry *g, const planes_layout *L, const float *x, int64_t img,
                             int64_t ih, float *xq) {
    const int64_t hp = ih + g->ph, rh = hp % g->sh, hq = hp / g->sh;
    if (L->slot_of_h[rh] < 0 || hq >= L->hq_len) return;
    const float *src_row = x + img * g->xs_n + ih * g->xs_h;
    float *row = xq + L->slot_of_h[rh] * L->nw * L->slot_len + img * L->img_stride + hq * L->wq_len;
    if (g->sw == 1) { /* every pixel in slot column 0, at wq = iw + pw: one run */
        pixels_run(src_row, g->xs_w, g->c, row + g->pw, L->ldc, g->w < L->wq_len - g->pw ? g->w : L->wq_len - g->pw);
        return;
    }
    for (int64_t iw = 0; iw < g->w; ++iw) {
        const int64_t wp = iw + g->pw, rw = wp % g->sw, wq = wp / g->sw;
        if (L->slot_of_w[rw] < 0 || wq >= L->wq_len) continue;
        const float *src = src_row + iw * g->xs_w;
        float *dst = row + L->slot_of_w[rw] * L->slot_len + wq;
        for (int64_t c = 0; c < g->c; ++c) dst[c * L->ldc] = src[c];
    }
}

/* Planes: input channel c, phase slot s (one per (row phase rh, column phase rw) that some kernel
 * position reads), image n, then hq, wq:
 *   xq[c * ldc + s * slot_len + n * img_stride + hq * wq_len + wq] = x[n, c, hq * sh + rh - ph, wq * sw + rw - pw]
 * (zero outside the image). Output position p = n * img_stride + oh * wq_len + ow reads, at kernel
 * position (kh, kw), p + offs[kh * kw_n + kw] (its slot and shift): the images follow each other along
 * the positions, so one product covers the whole batch; rows oh >= out_h and columns ow >= out_w are
 * computed and dropped. A 1x1 convolution with stride 1 and no padding on planes of whole vectors reads
 * each image in place instead (no copy). */
int bank_conv2d(const bank_weight *w, const bank_conv_geometry *g, const float *x, float *y) {
    if (!usable(w)) return BANK_NOT_CHECKED;
    const int64_t sizes[] = {g->n,  g->c,  g->h,  g->w,  g->kh, g->kw, g->sh,   g->sw,   g->ph,
                             g->pw, g->dh, g->dw, g->oh, g->ow, g->xs_n, g->xs_c, g->xs_h, g->xs_w};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i)
        if (sizes[i] < 0 || sizes[i] >= LIMIT) return BANK_BAD_SIZES;
    if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1) return BANK_BAD_SIZES;
    if (g->sh > 8 || g->sw > 8) return BANK_BAD_SIZES; /* phase slots: strides up to 8 */
    if (g->relu != 0 && g->relu != 1) return BANK_BAD_SIZES;
    const int64_t kk = g->kh * g->kw;
    if (kk >= LIMIT || g->c != w->in_features || w->rows % kk) return BANK_BAD_SIZES;
    const int64_t out_c = w->rows / kk;
    if (g->n == 0 || out_c == 0 || g->oh == 0 || g->ow == 0) return BANK_OK;

    int used_h[8] = {0}, used_w[8] = {0};
    for (int64_t i = 0; i < g->kh; ++i) used_h[(i * g->dh) % g->sh] = 1;
    for (int64_t i = 0; i < g->kw; ++i) used_w[(i * g->dw) % g->sw] = 1;
    int64_t slot_of_h[8], slot_of_w[8], nh = 0, nw = 0;
    for (int r = 0; r < 8; ++r) slot_of_h[r] = used_h[r] ? nh++ : -1;
    for (int r = 0; r < 8; ++r) slot_of_w[r] = used_w[r] ? nw++ : -1;
    const int64_t wq_len = g->ow + ((g->kw - 1) * g->dw) / g->sw;
    const int64_t hq_len = g->oh + ((g->kh - 1) * g->dh) / g->sh;
    const int64_t img_stride = hq_len * wq_len;
    if ((double)img_stride * (double)g->n >= (double)LIMIT * 64.0) return BANK_BAD_SIZES;
    const int64_t slack = (wq_len - g->ow) + VL; /* reads of dropped columns and of whole vectors */
    const int64_t slot_len = (g->n * img_stride + slack + 15) / 16 * 16;
    const int64_t slots = nh * nw, ldc = odd_lines(slots * slot_len);
    const int64_t in_plane = g->h * g->w, out_plane = g->oh * g->ow;
    if ((double)ldc * (double)g->c >= (double)LIMIT * (double)LIMIT) return BANK_BAD_SIZES;
    const int nchw = g->xs_w == 1 && g->xs_h == g->w && g->xs_c == in_plane && g->xs_n == g->c * in_plane;
    const int direct = nchw && kk == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 && g->oh == g->h &&
                       g->ow == g->w && in_plane % VL == 0 && in_plane >= 4 * TILE_POSITIONS;
    const int pixel_major = g->xs_c == 1 && g->c > 1; /* channels-last input: read each pixel's channels at once */
    /* channels-last, stride 1, no padding, every input pixel read: each image's pixels one run of the planes */
    const int flat = pixel_major && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 && wq_len == g->w &&
                     hq_len == g->h && g->xs_h == g->w * g->xs_w;

    int64_t *offs = malloc(sizeof(int64_t) * (size_t)kk);
    if (!offs) return BANK_NO_MEMORY;
    int64_t max_shift = 0;
    for (int64_t i = 0; i < g->kh; ++i)
        for (int64_t j = 0; j < g->kw; ++j) {
            const int64_t s = slot_of_h[(i * g->dh) % g->sh] * nw + slot_of_w[(j * g->dw) % g->sw];
            const int64_t shift = ((i * g->dh) / g->sh) * wq_len + (j * g->dw) / g->sw;
            offs[i * g->kw + j] = (direct ? 0 : s * slot_len) + shift;
            max_shift = shift > max_shift ? shift : max_shift;
        }
    const int64_t work = w->rows * (w->banks * w->k + w->tail_k) * g->n * img_stride;
    const int team = work > PARALLEL_WORK ? team_size() : 1;

    if (direct) { /* each image in place (NCHW): channel c of image n is x[(n * c_n + c) * in_plane ...] */
        for (int64_t img = 0; img < g->n; ++img) {
            const sink out = {y + img * out_c * out_plane, 0, out_plane, wq_len, g->ow, g->oh, img_stride, (int)g->relu};
#pragma omp parallel num_threads(team) if (team > 1)
            product(w, kk, x + img * g->c * in_plane, in_plane, offs, img_stride,
                    (int64_t)(TILE_POSITIONS * sizeof(float)), &out);
        }
        free(offs);
        return BANK_OK;
    }
    float *xq = scratch_of((size_t)ldc * (size_t)g->c);
    if (!xq) {
        free(offs);
        return BANK_NO_MEMORY;
    }
    const int64_t span = slots * (TILE_POSITIONS + max_shift) * (int64_t)sizeof(float);
    const sink out = {y, 0, out_plane, wq_len, g->ow, g->oh, img_stride, (int)g->relu};
#pragma omp parallel num_threads(team) if (team > 1)
    {
        const planes_layout L = {ldc, slot_len, img_stride, hq_len, wq_len, nw, slot_of_h, slot_of_w};
        if (!pixel_major) {
#pragma omp for schedule(static)
            for (int64_t c = 0; c < g->c; ++c) channel_to_planes(g, &L, x, c, xq + c * ldc);
        } else if (flat) { /* channels-last, every position read from the image: runs of 64 pixels */
#pragma omp for schedule(static)
            for (int64_t c = 0; c < g->c; ++c) zero_run(xq + c * ldc + g->n * img_stride, slot_len - g->n * img_stride);
#pragma omp for schedule(static) collapse(2)
            for (int64_t img = 0; img < g->n; ++img)
                for (int64_t p0 = 0; p0 < in_plane; p0 += 64)
                    pixels_run(x + img * g->xs_n + p0 * g->xs_w, g->xs_w, g->c, xq + img * img_stride + p0, ldc,
                               in_plane - p0 < 64 ? in_plane - p0 : 64);
        } else { /* channels-last: zero the planes, then each row of pixels goes to its planes */
#pragma omp for schedule(static)
            for (int64_t c = 0; c < g->c; ++c) zero_run(xq + c * ldc, slots * slot_len);
#pragma omp for schedule(static) collapse(2)
            for (int64_t img = 0; img < g->n; ++img)
                for (int64_t ih = 0; ih < g->h; ++ih) pixels_to_planes(g, &L, x, img, ih, xq);
        }
        product(w, kk, xq, ldc, offs, g->n * img_stride, span, &out);
    }
    free(offs);
    return BANK_OK;
}

/* ---------------------------------------------------------------- as a Python module */

#ifdef BANK_PYTHON_MODULE
/* The same entry points for Python without ctypes' argument conversion (a call costs ~0.2 µs instead
 * of ~2.5): linear(weight, x, batch, in_features, y) and conv2d(weight, geometry, x, y), addresses and
 * sizes as ints, returning the entry point's code. The GIL is released while they run. */
static int args_ok(Py_ssize_t n, Py_ssize_t want, const char *signature) {
    if (n == want) return 1;
    PyErr_SetString(PyExc_TypeError, signature);
    return 0;
}

static PyObject *py_linear(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (!args_ok(n, 5, "linear(weight, x, batch, in_features, y)")) return NULL;
    const bank_weight *w = PyLong_AsVoidPtr(args[0]);
    const float *x = PyLong_AsVoidPtr(args[1]);
    const long long batch = PyLong_AsLongLong(args[2]), in_features = PyLong_AsLongLong(args[3]);
    float *y = PyLong_AsVoidPtr(args[4]);
    if (PyErr_Occurred()) return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS code = bank_linear(w, x, batch, in_features, y);
    Py_END_ALLOW_THREADS return PyLong_FromLong(code);
}

static PyObject *py_conv2d(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    (void)self;
    if (!args_ok(n, 4, "conv2d(weight, geometry, x, y)")) return NULL;
    const bank_weight *w = PyLong_AsVoidPtr(args[0]);
    const bank_conv_geometry *g = PyLong_AsVoidPtr(args[1]);
    const float *x = PyLong_AsVoidPtr(args[2]);
    float *y = PyLong_AsVoidPtr(args[3]);
    if (PyErr_Occurred()) return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS code = bank_conv2d(w, g, x, y);
    Py_END_ALLOW_THREADS return PyLong_FromLong(code);
}

static PyMethodDef methods[] = {
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_FASTCALL, "bank_linear"},
    {"conv2d", (PyCFunction)(void (*)(void))py_conv2d, METH_FASTCALL, "bank_conv2d"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bank_sparse", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bank_sparse(void) { return PyModule_Create(&module); }
#endif
