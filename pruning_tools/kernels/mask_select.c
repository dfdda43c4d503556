/* Mask selection for CPU tensors, one pass per bank (loaded by pruning_tools/native.py).
 *
 * Weights are read as unsigned integers of their width (16: fp16/bf16, 32: fp32, 64: fp64): for IEEE
 * formats `bits & ~sign` orders exactly like |w|, so no float math is needed. A weight whose `alive`
 * byte is 0 scores below every live weight (key -1); `alive` may be NULL (all live). Ties go to the
 * lower index. `keep` may be the `alive` buffer itself (masks updated in place). No allocation.
 *
 * Bank rows (see masks.to_rows) are described by strides into the weight buffer:
 *   row r starts at (r / group) * group_stride + (r % group); element j of a row is at start + j * step.
 */
#include <stdint.h>

#define MAX_BANK 1024

/* keep[off + j * step] for one bank of `len` keys of which the `k` largest are kept. */
static void select_bank(const int64_t *key, int64_t len, int64_t k, int64_t *sel, uint8_t *keep,
                        int64_t off, int64_t step) {
    if (k >= len) {
        for (int64_t j = 0; j < len; ++j) keep[off + j * step] = 1;
        return;
    }
    int64_t t; /* the k-th largest key */
    if (k <= len - k) { /* the k largest, descending */
        int64_t n = 0;
        for (int64_t j = 0; j < len; ++j) {
            const int64_t s = key[j];
            int64_t i;
            if (n < k) i = n++;
            else if (s > sel[k - 1]) i = k - 1;
            else continue;
            while (i > 0 && sel[i - 1] < s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        t = sel[k - 1];
    } else { /* the len - k + 1 smallest, ascending: the largest of them is the k-th largest */
        const int64_t m = len - k + 1;
        int64_t n = 0;
        for (int64_t j = 0; j < len; ++j) {
            const int64_t s = key[j];
            int64_t i;
            if (n < m) i = n++;
            else if (s < sel[m - 1]) i = m - 1;
            else continue;
            while (i > 0 && sel[i - 1] > s) { sel[i] = sel[i - 1]; --i; }
            sel[i] = s;
        }
        t = sel[m - 1];
    }
    int64_t above = 0;
    for (int64_t j = 0; j < len; ++j) above += key[j] > t;
    int64_t ties = k - above; /* keys equal to t that are kept: the first ones by index */
    for (int64_t j = 0; j < len; ++j) {
        const int64_t s = key[j];
        uint8_t kept = s > t;
        if (s == t && ties > 0) { kept = 1; --ties; }
        keep[off + j * step] = kept;
    }
}

#define KERNELS(BITS, T, MAGNITUDE)                                                                         \
    /* Bank-balanced keep-mask: full banks keep k, the tail bank keeps tail_k (rows [first, last)). */     \
    void bank_select_##BITS(const T *w, const uint8_t *alive, uint8_t *keep, int64_t first, int64_t last,  \
                            int64_t row_len, int64_t bank, int64_t k, int64_t tail_k, int64_t group,        \
                            int64_t group_stride, int64_t step) {                                          \
        int64_t key[MAX_BANK], sel[MAX_BANK + 1];                                                          \
        for (int64_t r = first; r < last; ++r) {                                                           \
            const int64_t base = (r / group) * group_stride + (r % group);                                 \
            for (int64_t start = 0; start < row_len; start += bank) {                                      \
                const int64_t len = row_len - start < bank ? row_len - start : bank;                       \
                const int64_t off = base + start * step;                                                   \
                for (int64_t j = 0; j < len; ++j) {                                                        \
                    const int64_t at = off + j * step;                                                     \
                    key[j] = (alive && !alive[at]) ? -1 : (int64_t)(w[at] & (MAGNITUDE));                  \
                }                                                                                          \
                select_bank(key, len, len == bank ? k : tail_k, sel, keep, off, step);                     \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
                                                                                                           \
    /* hist[b] += live keys whose bits [shift, shift + 16) equal b and whose bits above equal prefix. */   \
    void histogram_##BITS(const T *w, const uint8_t *alive, int64_t n, int shift, uint64_t prefix,          \
                          int64_t *hist) {                                                                 \
        const int top = shift + 16;                                                                        \
        for (int64_t i = 0; i < n; ++i) {                                                                  \
            if (alive && !alive[i]) continue;                                                              \
            const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                           \
            if (top < 64 && (key >> top) != prefix) continue;                                              \
            hist[(key >> shift) & 0xFFFF] += 1;                                                            \
        }                                                                                                  \
    }                                                                                                      \
                                                                                                           \
    /* keep = live and (key > t, or key == t for the first *ties such ones); *ties carries across calls. */ \
    void keep_above_##BITS(const T *w, const uint8_t *alive, uint8_t *keep, int64_t n, uint64_t t,         \
                           int64_t *ties) {                                                                \
        int64_t left = *ties;                                                                              \
        for (int64_t i = 0; i < n; ++i) {                                                                  \
            const uint8_t live = !alive || alive[i];                                                       \
            const uint64_t key = (uint64_t)(w[i] & (MAGNITUDE));                                           \
            uint8_t kept = live && key > t;                                                                \
            if (live && key == t && left > 0) { kept = 1; --left; }                                        \
            keep[i] = kept;                                                                                \
        }                                                                                                  \
        *ties = left;                                                                                      \
    }                                                                                                      \
                                                                                                           \
    /* w = 0 where keep is 0 (keep holds 0 or 1). */                                                      \
    void zero_pruned_##BITS(T *w, const uint8_t *keep, int64_t n) {                                        \
        for (int64_t i = 0; i < n; ++i) w[i] &= (T)0 - (T)keep[i];                                         \
    }

KERNELS(16, uint16_t, 0x7FFFu)
KERNELS(32, uint32_t, 0x7FFFFFFFu)
KERNELS(64, uint64_t, 0x7FFFFFFFFFFFFFFFull)
