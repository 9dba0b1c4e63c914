// The CUDA kernels (kernels/decode_attention.h, page_writes.h) against CPU references written here from the page
// layout of docs/kv-cache.md, on fresh random pools: batched decode attention (fp16 format,
// KIVI post-RoPE and SQuat pre-RoPE pages, GQA and MHA, float32 / fp16 / bf16) against a
// float64 reference; key-group (KIVI and SQuat compensation) and value-token quantization
// against a float32 reference that follows the same IEEE operations, so codes and fp16
// metadata must agree bit for bit. Torch-free; skipped without a CUDA device.
#include "kernels/cuda_runtime.h"
#include "kernels/decode_attention.h"
#include "kernels/page_writes.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace squat::kernels {
namespace {

// ---- fp16 / bf16 bit conversions (host)
float HalfToFloat(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return sign ? -v : v;
}
// Round to nearest even (finite inputs in the normal/subnormal fp16 range).
uint16_t FloatToHalf(float f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  float a = std::fabs(f);
  if (a == 0.f) return sign;
  if (a >= 65520.f) return sign | 0x7c00;
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exponent = std::max(e - 1, -14);  // unbiased exponent of the half (subnormals fixed at -14)
  const float quantum = std::ldexp(1.f, exponent - 10);
  float q = std::nearbyint(a / quantum);  // default rounding mode: nearest even
  if (q >= 2048.f) {
    q /= 2.f;
    ++exponent;
  }
  const int m = static_cast<int>(q);
  if (m < 1024) return sign | static_cast<uint16_t>(m);  // subnormal
  return sign | static_cast<uint16_t>(((exponent + 15) << 10) | (m - 1024));
}
float Bf16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

int64_t ElementBytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// A host image of the pool with typed accessors that follow the documented layout.
struct HostPool {
  PoolLayout L;
  std::vector<uint8_t> bytes;

  uint8_t* Page(int64_t page) { return bytes.data() + page * L.page_bytes; }
  // Full-precision element (layer, part, head, slot, channel) as a float (stored in L.dtype).
  int64_t SlotOffset(int64_t page, int layer, int part, int head, int slot, int c) const {
    const int64_t per_part = static_cast<int64_t>(L.kv_heads) * L.slots_per_page * L.head_dim;
    const int64_t element = (2 * layer + part) * per_part + (static_cast<int64_t>(head) * L.slots_per_page + slot) * L.head_dim + c;
    return page * L.page_bytes + element * ElementBytes(L.dtype);
  }
  float GetSlot(int64_t page, int layer, int part, int head, int slot, int c) const {
    const uint8_t* p = bytes.data() + SlotOffset(page, layer, part, head, slot, c);
    return Decode(p);
  }
  float Decode(const uint8_t* p) const {
    if (L.dtype == DType::kFloat32) {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, p, 2);
    return L.dtype == DType::kFloat16 ? HalfToFloat(h) : Bf16ToFloat(h);
  }
  // Stores f rounded to L.dtype; returns the stored value.
  float Encode(float f, uint8_t* p) const {
    if (L.dtype == DType::kFloat32) {
      std::memcpy(p, &f, 4);
      return f;
    }
    const uint16_t h = L.dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBf16(f);
    std::memcpy(p, &h, 2);
    return Decode(p);
  }
  float SetSlot(int64_t page, int layer, int part, int head, int slot, int c, float f) {
    return Encode(f, bytes.data() + SlotOffset(page, layer, part, head, slot, c));
  }

  // Quantized blocks of (page, layer): byte offsets of the six arrays.
  struct Blocks {
    int64_t key_words, value_words, key_scale, key_min, value_scale, value_min;
  };
  Blocks QuantBlocks(int64_t page, int layer) const {
    const int64_t h = L.kv_heads, d = L.head_dim, n = L.tokens_per_page;
    const int64_t kw = h * d * (n / (32 / L.k_bits)), vw = h * n * (d / (32 / L.v_bits));
    const int64_t km = h * d * (n / L.group_size), vm = h * n * (d / L.group_size);
    const int64_t base = page * L.page_bytes + layer * ((kw + vw) * 4 + (km + vm) * 4);
    return {base, base + kw * 4, base + (kw + vw) * 4, base + (kw + vw) * 4 + km * 2,
            base + (kw + vw) * 4 + 2 * km * 2, base + (kw + vw) * 4 + 2 * km * 2 + vm * 2};
  }
  uint32_t Word(int64_t offset, int64_t index) const {
    uint32_t w;
    std::memcpy(&w, bytes.data() + offset + index * 4, 4);
    return w;
  }
  uint16_t Half(int64_t offset, int64_t index) const {
    uint16_t v;
    std::memcpy(&v, bytes.data() + offset + index * 2, 2);
    return v;
  }
  // Dequantized key (token `off` of the page, channel c) and value.
  float Key(int64_t page, int layer, int head, int off, int c) const {
    const Blocks b = QuantBlocks(page, layer);
    const int fpi = 32 / L.k_bits, tpp = L.tokens_per_page;
    const int64_t row = static_cast<int64_t>(head) * L.head_dim + c;
    const uint32_t code = (Word(b.key_words, row * (tpp / fpi) + off / fpi) >> (L.k_bits * (off % fpi))) & ((1u << L.k_bits) - 1);
    const int64_t meta = row * (tpp / L.group_size) + off / L.group_size;
    return code * HalfToFloat(Half(b.key_scale, meta)) + HalfToFloat(Half(b.key_min, meta));
  }
  float Value(int64_t page, int layer, int head, int off, int c) const {
    const Blocks b = QuantBlocks(page, layer);
    const int fpi = 32 / L.v_bits, D = L.head_dim;
    const int64_t row = static_cast<int64_t>(head) * L.tokens_per_page + off;
    const uint32_t code = (Word(b.value_words, row * (D / fpi) + c / fpi) >> (L.v_bits * (c % fpi))) & ((1u << L.v_bits) - 1);
    const int64_t meta = row * (D / L.group_size) + c / L.group_size;
    return code * HalfToFloat(Half(b.value_scale, meta)) + HalfToFloat(Half(b.value_min, meta));
  }
};

// Device buffers freed at scope exit.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) : ptr(AllocDevice(bytes)) {}
  ~DeviceBuffer() { FreeDevice(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <typename T>
void ToDevice(DeviceBuffer& dst, const std::vector<T>& src) {
  ASSERT_EQ(CopyToDevice(dst.ptr, src.data(), src.size() * sizeof(T), nullptr), 0);
}
template <typename T>
void ToHost(std::vector<T>& dst, const DeviceBuffer& src) {
  ASSERT_EQ(CopyToHost(dst.data(), src.ptr, dst.size() * sizeof(T), nullptr), 0);
  ASSERT_EQ(StreamSynchronize(nullptr), 0);
}

class KernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    const char* replay = std::getenv("SQUAT_TEST_SEED");
    seed_ = replay ? std::strtoull(replay, nullptr, 10) : std::random_device{}();
    rng_.seed(static_cast<uint32_t>(seed_));
  }
  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng_); }
  std::string Seed() const { return "seed " + std::to_string(seed_); }
  // Random pages of `count` ids out of a shuffled free list.
  std::vector<int32_t> TakePages(std::vector<int32_t>& free_pages, int64_t count) {
    std::vector<int32_t> out(free_pages.end() - count, free_pages.end());
    free_pages.resize(free_pages.size() - count);
    return out;
  }
  uint64_t seed_ = 0;
  std::mt19937 rng_;
};

enum class Format { kFp16, kKiviPost, kSquatPre };

struct AttentionCase {
  Format format;
  DType dtype;
  int n_rep, head_dim, k_bits, v_bits;
};

std::string Name(const AttentionCase& c) {
  const char* f = c.format == Format::kFp16 ? "fp16" : c.format == Format::kKiviPost ? "kivi" : "squat-pre";
  const char* t = c.dtype == DType::kFloat32 ? "f32" : c.dtype == DType::kFloat16 ? "f16" : "bf16";
  return std::string(f) + "/" + t + "/n_rep" + std::to_string(c.n_rep) + "/d" + std::to_string(c.head_dim) + "/K" +
         std::to_string(c.k_bits) + "V" + std::to_string(c.v_bits);
}

class DecodeAttentionTest : public KernelsTest {
 protected:
  // split_tokens > 0: split-KV with chunks of that many tokens; lengths: N of each sequence
  // after the append (empty: short lengths inside and across key flushes).
  void Run(const AttentionCase& tc, int split_tokens = 0, std::vector<int> lengths = {}) {
    SCOPED_TRACE(Name(tc) + ", split " + std::to_string(split_tokens) + ", " + Seed());
    const bool quantized = tc.format != Format::kFp16, pre_rope = tc.format == Format::kSquatPre;
    HostPool pool;
    PoolLayout& L = pool.L;
    L.num_layers = 2;
    L.kv_heads = 2;
    L.q_heads = L.kv_heads * tc.n_rep;
    L.head_dim = tc.head_dim;
    L.dtype = tc.dtype;
    L.k_bits = tc.k_bits;
    L.v_bits = tc.v_bits;
    L.group_size = 32;
    L.residual_length = 32;
    L.slots_per_page = 16;
    L.tokens_per_page = 64;
    const int64_t fp_bytes = 2LL * L.num_layers * L.kv_heads * L.slots_per_page * L.head_dim * ElementBytes(L.dtype);
    const int64_t q_bytes = L.num_layers * (static_cast<int64_t>(L.kv_heads) * L.head_dim * L.tokens_per_page *
                                                (L.k_bits + L.v_bits) / 8 +
                                            2LL * L.kv_heads * L.head_dim * L.tokens_per_page / L.group_size * 4);
    L.page_bytes = std::max(fp_bytes, q_bytes);
    const int R = L.residual_length, D = L.head_dim, H = L.kv_heads, ring = R + 1;
    // Lengths after the append: not multiples of the tile, inside and across key flushes.
    if (lengths.empty()) lengths = {1, 2, 31, 33, 64, 97, 150, 200};
    const int B = static_cast<int>(lengths.size());
    int64_t total_pages = 0;
    for (int n : lengths) total_pages += (n + 15) / 16 + (n + 63) / 64 + 3;
    pool.bytes.assign(total_pages * L.page_bytes, 0);
    std::vector<int32_t> free_pages(total_pages);
    std::iota(free_pages.begin(), free_pages.end(), 0);
    std::shuffle(free_pages.begin(), free_pages.end(), rng_);

    std::vector<int32_t> page_ids;
    std::vector<DecodeSequence> seqs(B);
    std::vector<std::vector<int32_t>> data(B), residual(B);
    for (int s = 0; s < B; ++s) {
      const int N = lengths[s], previous = N - 1;
      DecodeSequence& q = seqs[s];
      q.row = B - 1 - s;  // rows in another order than the sequences
      q.tokens = N;
      if (quantized) {
        q.quantized_keys = previous - previous % R;
        q.quantized_values = std::max(0, previous - R);
        q.key_slot = previous % R;
        data[s] = TakePages(free_pages, (N + 63) / 64);
        residual[s] = TakePages(free_pages, 3);
      } else {
        q.key_slot = previous;
        data[s] = TakePages(free_pages, (N + 15) / 16);
      }
      q.data_pages = static_cast<int32_t>(page_ids.size());
      page_ids.insert(page_ids.end(), data[s].begin(), data[s].end());
      q.residual_pages = static_cast<int32_t>(page_ids.size());
      page_ids.insert(page_ids.end(), residual[s].begin(), residual[s].end());
    }
    // Random contents: codes anywhere, fp16 metadata with a positive scale, values in [-1, 1].
    for (int s = 0; s < B; ++s) {
      for (int layer = 0; layer < L.num_layers; ++layer) {
        if (quantized) {
          for (int32_t page : data[s]) {
            const HostPool::Blocks b = pool.QuantBlocks(page, layer);
            for (int64_t o = b.key_words; o < b.key_scale; o += 4) {
              const uint32_t w = rng_();
              std::memcpy(pool.bytes.data() + o, &w, 4);
            }
            for (int64_t o = b.key_scale; o < b.value_min + (b.value_min - b.value_scale); o += 2) {
              const bool is_scale = (o >= b.key_scale && o < b.key_min) || (o >= b.value_scale && o < b.value_min);
              const uint16_t h = FloatToHalf(is_scale ? Uniform(0.02f, 0.3f) : Uniform(-1.f, 0.f));
              std::memcpy(pool.bytes.data() + o, &h, 2);
            }
          }
          for (int32_t page : residual[s]) {
            for (int part = 0; part < 2; ++part)
              for (int h = 0; h < H; ++h)
                for (int slot = 0; slot < L.slots_per_page; ++slot)
                  for (int c = 0; c < D; ++c) pool.SetSlot(page, layer, part, h, slot, c, Uniform(-1.f, 1.f));
          }
        } else {
          for (int32_t page : data[s]) {
            for (int part = 0; part < 2; ++part)
              for (int h = 0; h < H; ++h)
                for (int slot = 0; slot < L.slots_per_page; ++slot)
                  for (int c = 0; c < D; ++c) pool.SetSlot(page, layer, part, h, slot, c, Uniform(-1.f, 1.f));
          }
        }
      }
    }
    std::vector<float> inv_freq(D / 2);
    for (int c = 0; c < D / 2; ++c) inv_freq[c] = static_cast<float>(std::pow(10000.0, -2.0 * c / D));
    // The model's RoPE table (page_layout.h): row n = cos, then sin, of the float32 angles.
    const int positions = *std::max_element(lengths.begin(), lengths.end());
    std::vector<float> rope(static_cast<size_t>(positions) * D);
    for (int n = 0; n < positions; ++n)
      for (int c = 0; c < D / 2; ++c) {
        const double angle = static_cast<float>(n) * inv_freq[c];
        rope[static_cast<size_t>(n) * D + c] = static_cast<float>(std::cos(angle));
        rope[static_cast<size_t>(n) * D + D / 2 + c] = static_cast<float>(std::sin(angle));
      }
    // New q, k, v rows in the dtype: k and v with a row stride larger than H * d (as in the
    // fused qkv projection).
    const int64_t q_stride = static_cast<int64_t>(L.q_heads) * D, kv_stride = 3LL * H * D;
    const int64_t elem = ElementBytes(L.dtype);
    std::vector<uint8_t> q_in(B * q_stride * elem), kv_in(B * kv_stride * elem);
    std::vector<float> q_val(B * q_stride), k_val(B * H * D), v_val(B * H * D);
    for (int64_t i = 0; i < B * q_stride; ++i) q_val[i] = pool.Encode(Uniform(-1.5f, 1.5f), q_in.data() + i * elem);
    for (int r = 0; r < B; ++r)
      for (int64_t i = 0; i < H * D; ++i) {
        k_val[r * H * D + i] = pool.Encode(Uniform(-1.f, 1.f), kv_in.data() + (r * kv_stride + i) * elem);
        v_val[r * H * D + i] = pool.Encode(Uniform(-1.f, 1.f), kv_in.data() + (r * kv_stride + H * D + i) * elem);
      }

    DeviceBuffer d_pool(pool.bytes.size()), d_pages(page_ids.size() * 4), d_seqs(seqs.size() * sizeof(DecodeSequence));
    DeviceBuffer d_q(q_in.size()), d_kv(kv_in.size()), d_rope(rope.size() * 4), d_out(B * q_stride * elem);
    ToDevice(d_pool, pool.bytes);
    ToDevice(d_pages, page_ids);
    ToDevice(d_seqs, seqs);
    ToDevice(d_q, q_in);
    ToDevice(d_kv, kv_in);
    ToDevice(d_rope, rope);
    L.pool = d_pool.ptr;

    DecodeArgs args;
    args.layout = L;
    args.quantized = quantized;
    args.pre_rope = pre_rope;
    args.sequences = static_cast<const DecodeSequence*>(d_seqs.ptr);
    args.page_ids = static_cast<const int32_t*>(d_pages.ptr);
    args.num_sequences = B;
    args.q = d_q.ptr;
    args.q_row_stride = q_stride;
    args.k_new = d_kv.ptr;
    args.k_row_stride = kv_stride;
    args.v_new = static_cast<uint8_t*>(d_kv.ptr) + H * D * elem;
    args.v_row_stride = kv_stride;
    args.rope_table = static_cast<const float*>(d_rope.ptr);
    args.rope_positions = positions;
    args.out = d_out.ptr;
    args.out_row_stride = q_stride;
    std::unique_ptr<DeviceBuffer> workspace;
    if (split_tokens > 0) {
      const int longest = *std::max_element(lengths.begin(), lengths.end());
      args.split_tokens = split_tokens;
      args.num_splits = (longest + split_tokens - 1) / split_tokens;
      workspace = std::make_unique<DeviceBuffer>(
          DecodeWorkspaceFloats(B, L.q_heads, D, args.num_splits) * sizeof(float));
      args.workspace = static_cast<float*>(workspace->ptr);
    }
    for (int layer = 0; layer < L.num_layers; ++layer) {
      args.layer = layer;
      ASSERT_EQ(PagedDecodeAttention(args, nullptr), 0);
      std::vector<uint8_t> out(B * q_stride * elem);
      ToHost(out, d_out);
      std::vector<uint8_t> pool_after(pool.bytes.size());
      ToHost(pool_after, d_pool);

      double worst = 0, scale = 0;
      for (int s = 0; s < B; ++s) {
        const DecodeSequence& q = seqs[s];
        const int N = q.tokens;
        // The appended token must be in its slots.
        {
          int64_t kpage, vpage;
          int kslot, vslot;
          if (quantized) {
            kpage = residual[s][q.key_slot / 16], kslot = q.key_slot % 16;
            vpage = residual[s][((N - 1) % ring) / 16], vslot = ((N - 1) % ring) % 16;
          } else {
            kpage = vpage = data[s][(N - 1) / 16], kslot = vslot = (N - 1) % 16;
          }
          for (int h = 0; h < H; ++h)
            for (int c = 0; c < D; ++c) {
              ASSERT_EQ(std::memcmp(pool_after.data() + pool.SlotOffset(kpage, layer, 0, h, kslot, c),
                                    kv_in.data() + (q.row * kv_stride + h * D + c) * elem, elem), 0);
              ASSERT_EQ(std::memcmp(pool_after.data() + pool.SlotOffset(vpage, layer, 1, h, vslot, c),
                                    kv_in.data() + (q.row * kv_stride + H * D + h * D + c) * elem, elem), 0);
            }
        }
        for (int h = 0; h < H; ++h) {
          // Keys and values of this head, float64.
          std::vector<double> keys(N * D), values(N * D);
          for (int n = 0; n < N; ++n) {
            for (int c = 0; c < D; ++c) {
              double k, v;
              if (n == N - 1) {
                k = k_val[q.row * H * D + h * D + c];
                v = v_val[q.row * H * D + h * D + c];
              } else if (!quantized) {
                k = pool.GetSlot(data[s][n / 16], layer, 0, h, n % 16, c);
                v = pool.GetSlot(data[s][n / 16], layer, 1, h, n % 16, c);
              } else {
                if (n < q.quantized_keys) {
                  k = pool.Key(data[s][n / 64], layer, h, n % 64, c);
                } else {
                  const int slot = n - q.quantized_keys;
                  k = pool.GetSlot(residual[s][slot / 16], layer, 0, h, slot % 16, c);
                }
                if (n < q.quantized_values) {
                  v = pool.Value(data[s][n / 64], layer, h, n % 64, c);
                } else {
                  const int slot = n % ring;
                  v = pool.GetSlot(residual[s][slot / 16], layer, 1, h, slot % 16, c);
                }
              }
              keys[n * D + c] = k;
              values[n * D + c] = v;
            }
            if (pre_rope) {
              for (int c = 0; c < D / 2; ++c) {
                const double angle = static_cast<float>(n) * inv_freq[c];  // float32 product, as the model
                const double x1 = keys[n * D + c], x2 = keys[n * D + c + D / 2];
                keys[n * D + c] = x1 * std::cos(angle) - x2 * std::sin(angle);
                keys[n * D + c + D / 2] = x2 * std::cos(angle) + x1 * std::sin(angle);
              }
            }
          }
          for (int j = 0; j < tc.n_rep; ++j) {
            const int head = h * tc.n_rep + j;
            const float* qv = &q_val[q.row * q_stride + head * D];
            std::vector<double> p(N);
            double mx = -1e300, sum = 0;
            for (int n = 0; n < N; ++n) {
              double dot = 0;
              for (int c = 0; c < D; ++c) dot += qv[c] * keys[n * D + c];
              p[n] = dot / std::sqrt(static_cast<double>(D));
              mx = std::max(mx, p[n]);
            }
            for (int n = 0; n < N; ++n) sum += (p[n] = std::exp(p[n] - mx));
            for (int c = 0; c < D; ++c) {
              double ref = 0;
              for (int n = 0; n < N; ++n) ref += p[n] / sum * values[n * D + c];
              const double got = pool.Decode(out.data() + (q.row * q_stride + head * D + c) * elem);
              worst = std::max(worst, std::fabs(got - ref));
              scale = std::max(scale, std::fabs(ref));
            }
          }
        }
      }
      const double tolerance = L.dtype == DType::kBFloat16 ? 1e-2 : 1e-3;
      EXPECT_LT(worst / scale, tolerance) << "layer " << layer << ": max |kernel - float64| " << worst
                                          << " over max |out| " << scale;
      std::cout << Name(tc) << " split " << split_tokens << " layer " << layer << ": rel error " << worst / scale << "\n";
    }
  }
};

TEST_F(DecodeAttentionTest, Fp16PagesMatchFloat64) {
  for (DType t : {DType::kFloat16, DType::kFloat32, DType::kBFloat16}) Run({Format::kFp16, t, 4, 128, 2, 2});
  Run({Format::kFp16, DType::kFloat16, 1, 64, 2, 2});
}

TEST_F(DecodeAttentionTest, KiviPagesMatchFloat64) {
  Run({Format::kKiviPost, DType::kFloat16, 1, 128, 2, 2});
  Run({Format::kKiviPost, DType::kFloat16, 4, 128, 4, 4});
  Run({Format::kKiviPost, DType::kFloat32, 2, 64, 2, 4});
}

// Split-KV: long contexts cut into chunks, chunks past a short sequence's end, the appended
// token in the last chunk, chunk edges inside quantized pages and residual windows.
TEST_F(DecodeAttentionTest, SplitKvLongContextsMatchFloat64) {
  const std::vector<int> lengths = {1, 40, 257, 700, 1333, 2100};
  Run({Format::kFp16, DType::kFloat16, 4, 128, 2, 2}, 256, lengths);
  Run({Format::kFp16, DType::kFloat32, 1, 64, 2, 2}, 32, {1, 31, 32, 33, 65, 300});
  Run({Format::kKiviPost, DType::kFloat16, 4, 128, 2, 2}, 128, lengths);
  Run({Format::kSquatPre, DType::kFloat16, 4, 128, 2, 2}, 96, lengths);
  Run({Format::kSquatPre, DType::kBFloat16, 2, 128, 4, 4}, 512, lengths);
}

TEST_F(KernelsTest, ChooseDecodeSplitCoversEveryToken) {
  for (int32_t seqs : {1, 3, 4, 11, 64, 512})
    for (int32_t heads : {1, 8, 32})
      for (int32_t tokens : {1, 100, 257, 8206, 32782, 131072}) {
        const DecodeSplit s = ChooseDecodeSplit(seqs, heads, tokens);
        if (s.num_splits <= 1) continue;
        SCOPED_TRACE(std::to_string(seqs) + " x " + std::to_string(heads) + ", " + std::to_string(tokens));
        EXPECT_EQ(s.split_tokens % 32, 0);
        EXPECT_GE(static_cast<int64_t>(s.num_splits) * s.split_tokens, tokens);
        EXPECT_LT(static_cast<int64_t>(s.num_splits - 1) * s.split_tokens, tokens);  // no empty chunk
      }
  // Few sequences with long contexts must split (the point of split-KV); the printed plan is
  // the one the engine uses at the Llama-3.1-8B shape.
  const DecodeSplit s = ChooseDecodeSplit(4, 8, 8206);
  EXPECT_GT(s.num_splits, 1);
  std::cout << "4 sequences x 8 KV heads x 8206 tokens: " << s.num_splits << " splits of " << s.split_tokens << "\n";
}

TEST_F(DecodeAttentionTest, SquatPreRopePagesMatchFloat64) {
  Run({Format::kSquatPre, DType::kFloat16, 1, 128, 2, 2});
  Run({Format::kSquatPre, DType::kFloat16, 4, 128, 2, 2});
  Run({Format::kSquatPre, DType::kBFloat16, 4, 128, 4, 2});
  Run({Format::kSquatPre, DType::kFloat32, 2, 64, 4, 4});
}

// Not a check: prints the time of one decode-attention launch at the Llama-2-7B layer shape
// (32 KV heads, d 128, fp16) for 256 sequences of 500 tokens, and the bytes it must read.
TEST_F(KernelsTest, DecodeAttentionTimingLlama2Shape) {
  constexpr int B = 256, N = 500, H = 32, D = 128, R = 32;
  for (Format format : {Format::kFp16, Format::kKiviPost, Format::kSquatPre}) {
    const bool quantized = format != Format::kFp16;
    PoolLayout L;
    L.num_layers = 1;
    L.kv_heads = L.q_heads = H;
    L.head_dim = D;
    L.dtype = DType::kFloat16;
    L.group_size = L.residual_length = R;
    L.slots_per_page = 16;
    L.page_bytes = 2LL * H * 16 * D * 2;             // 16 fp16 tokens of one layer
    L.tokens_per_page = static_cast<int32_t>(L.page_bytes / (R * H * D * 3 / 4) * R);  // K2V2, G 32
    const int data_per_seq = quantized ? (N + L.tokens_per_page - 1) / L.tokens_per_page : (N + 15) / 16;
    const int per_seq = data_per_seq + (quantized ? 3 : 0);
    std::vector<int32_t> ids(static_cast<size_t>(B) * per_seq);
    std::iota(ids.begin(), ids.end(), 0);
    std::vector<DecodeSequence> seqs(B);
    for (int s = 0; s < B; ++s) {
      DecodeSequence& q = seqs[s];
      q.row = s;
      q.tokens = N;
      q.data_pages = s * per_seq;
      q.residual_pages = s * per_seq + data_per_seq;
      q.quantized_keys = quantized ? (N - 1) - (N - 1) % R : 0;
      q.quantized_values = quantized ? N - 1 - R : 0;
      q.key_slot = quantized ? (N - 1) % R : N - 1;
    }
    DeviceBuffer pool(ids.size() * L.page_bytes), pages(ids.size() * 4), d_seqs(B * sizeof(DecodeSequence));
    DeviceBuffer qkv(static_cast<size_t>(B) * 3 * H * D * 2), out(static_cast<size_t>(B) * H * D * 2),
        rope(static_cast<size_t>(N) * D * 4);
    ASSERT_TRUE(pool.ptr && qkv.ptr);
    std::vector<uint8_t> zeros(std::max<size_t>(ids.size() * L.page_bytes, static_cast<size_t>(B) * 3 * H * D * 2), 0);
    ASSERT_EQ(CopyToDevice(pool.ptr, zeros.data(), ids.size() * L.page_bytes, nullptr), 0);
    ASSERT_EQ(CopyToDevice(qkv.ptr, zeros.data(), static_cast<size_t>(B) * 3 * H * D * 2, nullptr), 0);
    const std::vector<float> rope_zeros(static_cast<size_t>(N) * D, 0.f);
    ToDevice(rope, rope_zeros);
    ToDevice(pages, ids);
    ToDevice(d_seqs, seqs);
    L.pool = pool.ptr;
    DecodeArgs a;
    a.layout = L;
    a.quantized = quantized;
    a.pre_rope = format == Format::kSquatPre;
    a.sequences = static_cast<const DecodeSequence*>(d_seqs.ptr);
    a.page_ids = static_cast<const int32_t*>(pages.ptr);
    a.num_sequences = B;
    a.q = qkv.ptr;
    a.q_row_stride = 3 * H * D;
    a.k_new = static_cast<uint8_t*>(qkv.ptr) + H * D * 2;
    a.k_row_stride = 3 * H * D;
    a.v_new = static_cast<uint8_t*>(qkv.ptr) + 2 * H * D * 2;
    a.v_row_stride = 3 * H * D;
    a.rope_table = static_cast<const float*>(rope.ptr);
    a.rope_positions = N;
    a.out = out.ptr;
    a.out_row_stride = H * D;
    ASSERT_EQ(PagedDecodeAttention(a, nullptr), 0);
    ASSERT_EQ(StreamSynchronize(nullptr), 0);
    constexpr int kLaunches = 20;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kLaunches; ++i) ASSERT_EQ(PagedDecodeAttention(a, nullptr), 0);
    ASSERT_EQ(StreamSynchronize(nullptr), 0);
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kLaunches;
    const double bytes = static_cast<double>(B) * N * H * D * (quantized ? 0.75 : 4.0);
    std::cout << (format == Format::kFp16 ? "fp16" : format == Format::kKiviPost ? "kivi K2V2" : "squat K2V2 (RoPE fused)")
              << ": " << us << " us per layer launch, " << bytes / 1e6 << " MB of KV, " << bytes / us / 1e3
              << " GB/s\n";
  }
}

// Not a check: one decode-attention launch at the Llama-3.1-8B layer shape (8 KV heads, 32
// query heads, d 128, fp16) for a few long sequences, without and with split-KV (the split the
// engine would choose), so the printed times show what the extra blocks buy.
TEST_F(KernelsTest, DecodeAttentionTimingLongContextSplit) {
  constexpr int H = 8, n_rep = 4, D = 128, R = 32;
  struct Shape { int B, N; };
  for (Shape shape : {Shape{4, 8206}, Shape{3, 32782}}) {
    const int B = shape.B, N = shape.N;
    for (Format format : {Format::kFp16, Format::kSquatPre}) {
      const bool quantized = format != Format::kFp16;
      PoolLayout L;
      L.num_layers = 1;
      L.kv_heads = H;
      L.q_heads = H * n_rep;
      L.head_dim = D;
      L.dtype = DType::kFloat16;
      L.group_size = L.residual_length = R;
      L.slots_per_page = 16;
      L.page_bytes = 2LL * H * 16 * D * 2;
      L.tokens_per_page = static_cast<int32_t>(L.page_bytes / (R * H * D * 3 / 4) * R);  // K2V2, G 32
      const int data_per_seq = quantized ? (N + L.tokens_per_page - 1) / L.tokens_per_page : (N + 15) / 16;
      const int per_seq = data_per_seq + (quantized ? 3 : 0);
      std::vector<int32_t> ids(static_cast<size_t>(B) * per_seq);
      std::iota(ids.begin(), ids.end(), 0);
      std::vector<DecodeSequence> seqs(B);
      for (int s = 0; s < B; ++s) {
        DecodeSequence& q = seqs[s];
        q.row = s;
        q.tokens = N;
        q.data_pages = s * per_seq;
        q.residual_pages = s * per_seq + data_per_seq;
        q.quantized_keys = quantized ? (N - 1) - (N - 1) % R : 0;
        q.quantized_values = quantized ? N - 1 - R : 0;
        q.key_slot = quantized ? (N - 1) % R : N - 1;
      }
      const size_t pool_bytes = ids.size() * L.page_bytes, qkv_bytes = static_cast<size_t>(B) * (n_rep + 2) * H * D * 2;
      DeviceBuffer pool(pool_bytes), pages(ids.size() * 4), d_seqs(B * sizeof(DecodeSequence));
      DeviceBuffer qkv(qkv_bytes), out(static_cast<size_t>(B) * n_rep * H * D * 2), rope(static_cast<size_t>(N) * D * 4);
      ASSERT_TRUE(pool.ptr && qkv.ptr);
      std::vector<uint8_t> zeros(std::max(pool_bytes, qkv_bytes), 0);
      ASSERT_EQ(CopyToDevice(pool.ptr, zeros.data(), pool_bytes, nullptr), 0);
      ASSERT_EQ(CopyToDevice(qkv.ptr, zeros.data(), qkv_bytes, nullptr), 0);
      const std::vector<float> rope_zeros(static_cast<size_t>(N) * D, 0.f);
    ToDevice(rope, rope_zeros);
      ToDevice(pages, ids);
      ToDevice(d_seqs, seqs);
      L.pool = pool.ptr;
      DecodeArgs a;
      a.layout = L;
      a.quantized = quantized;
      a.pre_rope = format == Format::kSquatPre;
      a.sequences = static_cast<const DecodeSequence*>(d_seqs.ptr);
      a.page_ids = static_cast<const int32_t*>(pages.ptr);
      a.num_sequences = B;
      const int64_t row = static_cast<int64_t>(n_rep + 2) * H * D;
      a.q = qkv.ptr;
      a.q_row_stride = row;
      a.k_new = static_cast<uint8_t*>(qkv.ptr) + n_rep * H * D * 2;
      a.k_row_stride = row;
      a.v_new = static_cast<uint8_t*>(qkv.ptr) + (n_rep + 1) * H * D * 2;
      a.v_row_stride = row;
      a.rope_table = static_cast<const float*>(rope.ptr);
      a.rope_positions = N;
      a.out = out.ptr;
      a.out_row_stride = n_rep * H * D;
      const DecodeSplit split = ChooseDecodeSplit(B, H, N);
      DeviceBuffer workspace(DecodeWorkspaceFloats(B, L.q_heads, D, std::max(1, split.num_splits)) * sizeof(float));
      for (bool use_split : {false, true}) {
        a.num_splits = use_split ? split.num_splits : 1;
        a.split_tokens = use_split ? split.split_tokens : 0;
        a.workspace = use_split ? static_cast<float*>(workspace.ptr) : nullptr;
        ASSERT_EQ(PagedDecodeAttention(a, nullptr), 0);
        ASSERT_EQ(StreamSynchronize(nullptr), 0);
        constexpr int kLaunches = 20;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < kLaunches; ++i) ASSERT_EQ(PagedDecodeAttention(a, nullptr), 0);
        ASSERT_EQ(StreamSynchronize(nullptr), 0);
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kLaunches;
        const double bytes = static_cast<double>(B) * N * H * D * (quantized ? 0.75 : 4.0);
        std::cout << (quantized ? "squat K2V2" : "fp16") << " B " << B << " N " << N << " splits " << a.num_splits
                  << " x " << a.split_tokens << ": " << us << " us per layer launch, " << bytes / us / 1e3
                  << " GB/s\n";
      }
    }
  }
}

// ---- quantization kernels

struct QuantCase {
  DType dtype;
  int bits, head_dim, group, block;  // block 0: KIVI (no state)
};

class QuantizeTest : public KernelsTest {
 protected:
  // CPU quantizer with the kernel's IEEE operations (squat_math.cpp's algorithm in float32).
  struct Grid {
    uint16_t scale, min;
  };
  static Grid MinMax(float lo, float hi, int bits) {
    const float max_code = static_cast<float>((1 << bits) - 1);
    return {FloatToHalf((hi - lo) / max_code), FloatToHalf(lo)};
  }
  static float Code(float x, Grid g, int bits) {
    const float s = HalfToFloat(g.scale), m = HalfToFloat(g.min), max_code = static_cast<float>((1 << bits) - 1);
    if (s == 0.f) return 0.f;
    return std::min(std::max(std::nearbyint((x - m) / s), 0.f), max_code);
  }

  void RunKeys(const QuantCase& tc) {
    SCOPED_TRACE("keys dtype " + std::to_string(static_cast<int>(tc.dtype)) + " bits " + std::to_string(tc.bits) +
                 " d " + std::to_string(tc.head_dim) + " G " + std::to_string(tc.group) + " g " +
                 std::to_string(tc.block) + ", " + Seed());
    HostPool pool;
    PoolLayout& L = pool.L;
    L.num_layers = 2;
    L.kv_heads = 3;
    L.q_heads = 3;
    L.head_dim = tc.head_dim;
    L.dtype = tc.dtype;
    L.k_bits = L.v_bits = tc.bits;
    L.group_size = tc.group;
    L.residual_length = tc.group;
    L.slots_per_page = 8;
    L.tokens_per_page = 2 * tc.group;
    const int D = tc.head_dim, G = tc.group, H = L.kv_heads, g = tc.block ? tc.block : D;
    L.page_bytes = 2LL * L.num_layers * H * L.slots_per_page * D * 4 +
                   2LL * L.num_layers * H * D * L.tokens_per_page;  // roomy for either layout
    L.page_bytes = (L.page_bytes + 255) / 256 * 256;
    int64_t floats_per_head = 0;
    for (int done = g; done < D; done += g) floats_per_head += static_cast<int64_t>(g) * (D - done);
    const int64_t state_floats = L.num_layers * H * floats_per_head;
    const int groups = 2;  // one task quantizes two groups, another the first one again elsewhere
    const int src_pages = (groups * G + 5 + 7) / 8 + 1, dst_pages = 3;
    L.tokens_per_page = groups * G;
    const int state_pages = static_cast<int>((state_floats * 4 + L.page_bytes - 1) / L.page_bytes) + 1;
    const int total = src_pages + dst_pages + state_pages;
    pool.bytes.assign(static_cast<size_t>(total) * L.page_bytes, 0);
    std::vector<int32_t> ids(total);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    // Table: source slot pages, destination pages, state pages.
    const std::vector<int32_t> src(ids.begin(), ids.begin() + src_pages);
    const std::vector<int32_t> dst(ids.begin() + src_pages, ids.begin() + src_pages + dst_pages);
    const std::vector<int32_t> state(ids.begin() + src_pages + dst_pages, ids.end());
    // Keys with per-channel offsets and scales (as real keys), slots from 5 on.
    const int first_slot = 5;
    for (int layer = 0; layer < L.num_layers; ++layer)
      for (int h = 0; h < H; ++h)
        for (int c = 0; c < D; ++c) {
          const float center = Uniform(-2.f, 2.f), spread = Uniform(0.1f, 1.5f);
          for (int t = 0; t < groups * G; ++t) {
            const int slot = first_slot + t;
            pool.SetSlot(src[slot / 8], layer, 0, h, slot % 8, c, center + spread * Uniform(-1.f, 1.f));
          }
        }
    // C_i: random, scaled like the real ones (entries ~0.1).
    std::vector<float> comp(state_floats);
    for (float& v : comp) v = Uniform(-0.15f, 0.15f);
    const int64_t floats_per_page = L.page_bytes / 4;
    for (int64_t f = 0; f < state_floats; ++f) {
      std::memcpy(pool.Page(state[f / floats_per_page]) + (f % floats_per_page) * 4, &comp[f], 4);
    }
    std::vector<int32_t> table = src;
    table.insert(table.end(), dst.begin(), dst.end());
    table.insert(table.end(), state.begin(), state.end());
    KeyTask again;  // group 0 into the second destination page
    again.src_pages = 0;
    again.src_first_slot = first_slot;
    again.dst_pages = src_pages + 1;
    again.dst_first_token = 0;
    again.state_pages = tc.block ? src_pages + dst_pages : -1;
    again.num_groups = 1;
    again.first_block = 0;
    KeyTask task = again;  // both groups into the first
    task.dst_pages = src_pages;
    task.num_groups = groups;
    task.first_block = L.num_layers;
    const std::vector<KeyTask> tasks = {again, task};
    const int32_t blocks = (1 + groups) * L.num_layers;
    DeviceBuffer d_pool(pool.bytes.size()), d_table(table.size() * 4), d_tasks(tasks.size() * sizeof(KeyTask));
    ToDevice(d_pool, pool.bytes);
    ToDevice(d_table, table);
    ToDevice(d_tasks, tasks);
    L.pool = d_pool.ptr;
    ASSERT_EQ(QuantizeKeyTasks(L, static_cast<const KeyTask*>(d_tasks.ptr), static_cast<int32_t>(tasks.size()), blocks,
                               static_cast<const int32_t*>(d_table.ptr), g, nullptr),
              0);
    std::vector<uint8_t> after(pool.bytes.size());
    ToHost(after, d_pool);
    HostPool got{L, after};

    int64_t checked = 0;
    for (int layer = 0; layer < L.num_layers; ++layer) {
      const HostPool::Blocks b = got.QuantBlocks(dst[0], layer);
      const int fpi = 32 / tc.bits, tpp = L.tokens_per_page;
      for (int group = 0; group < groups; ++group) {
        const int dst_token = group * G;
        for (int h = 0; h < H; ++h) {
          std::vector<float> x(G * D);
          for (int t = 0; t < G; ++t)
            for (int c = 0; c < D; ++c) {
              const int slot = first_slot + dst_token + t;
              x[t * D + c] = pool.GetSlot(src[slot / 8], layer, 0, h, slot % 8, c);
            }
          int64_t comp_at = (static_cast<int64_t>(layer) * H + h) * floats_per_head;
          for (int start = 0; start < D; start += g) {
            const int rest = start + g, cols = D - rest;
            std::vector<float> error(G * g);
            for (int c = start; c < rest; ++c) {
              float lo = x[c], hi = x[c];
              for (int t = 1; t < G; ++t) lo = std::min(lo, x[t * D + c]), hi = std::max(hi, x[t * D + c]);
              const Grid grid = MinMax(lo, hi, tc.bits);
              const int64_t row = static_cast<int64_t>(h) * D + c, meta = row * (tpp / G) + dst_token / G;
              ASSERT_EQ(got.Half(b.key_scale, meta), grid.scale) << "layer " << layer << " head " << h << " ch " << c;
              ASSERT_EQ(got.Half(b.key_min, meta), grid.min);
              for (int t = 0; t < G; ++t) {
                const float code = Code(x[t * D + c], grid, tc.bits);
                const int off = dst_token + t;
                const uint32_t stored = (got.Word(b.key_words, row * (tpp / fpi) + off / fpi) >> (tc.bits * (off % fpi))) &
                                        ((1u << tc.bits) - 1);
                ASSERT_EQ(stored, static_cast<uint32_t>(code)) << "group " << group << " token " << t << " channel " << c;
                const float dequant = code * HalfToFloat(grid.scale) + HalfToFloat(grid.min);
                error[t * g + (c - start)] = dequant - x[t * D + c];
                ++checked;
              }
            }
            if (tc.block && rest < D) {
              for (int t = 0; t < G; ++t)
                for (int col = 0; col < cols; ++col) {
                  float sum = 0.f;
                  for (int j = 0; j < g; ++j) sum = std::fma(error[t * g + j], comp[comp_at + j * cols + col], sum);
                  x[t * D + rest + col] += sum;
                }
              comp_at += static_cast<int64_t>(g) * cols;
            }
          }
        }
      }
      // The other task wrote group 0 into the second page: the same codes and metadata.
      const HostPool::Blocks other = got.QuantBlocks(dst[1], layer);
      for (int64_t row = 0; row < static_cast<int64_t>(H) * D; ++row) {
        ASSERT_EQ(got.Word(other.key_words, row * (tpp / fpi)), got.Word(b.key_words, row * (tpp / fpi)));
        ASSERT_EQ(got.Half(other.key_scale, row * (tpp / G)), got.Half(b.key_scale, row * (tpp / G)));
      }
    }
    EXPECT_EQ(checked, static_cast<int64_t>(L.num_layers) * groups * H * G * D);
  }

  void RunValues(DType dtype, int bits, int head_dim, int group) {
    SCOPED_TRACE("values bits " + std::to_string(bits) + " G " + std::to_string(group) + ", " + Seed());
    HostPool pool;
    PoolLayout& L = pool.L;
    L.num_layers = 2;
    L.kv_heads = 2;
    L.q_heads = 4;
    L.head_dim = head_dim;
    L.dtype = dtype;
    L.k_bits = L.v_bits = bits;
    L.group_size = group;
    L.residual_length = group;
    L.slots_per_page = 4;
    L.tokens_per_page = group;
    const int D = head_dim, H = L.kv_heads;
    L.page_bytes = 2LL * L.num_layers * H * L.slots_per_page * D * 4 + L.num_layers * 2LL * H * D * L.tokens_per_page;
    // Tokens [0, split) from slots 0.. of one page list, [split, tokens) from a ring of
    // `ring` slots of another, starting at slot ring - 2 (so it wraps).
    const int tokens = 2 * group + 3, split = group + 1, ring = tokens - split + 2;
    const int plain_pages = (split + 3) / 4, ring_pages = (ring + 3) / 4, dst_pages = (tokens + group - 1) / group;
    const int src_pages = plain_pages + ring_pages;
    pool.bytes.assign(static_cast<size_t>(src_pages + dst_pages) * L.page_bytes, 0);
    std::vector<int32_t> ids(src_pages + dst_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    auto slot_of = [&](int t) {  // (page, slot) of token t's source
      if (t < split) return std::pair<int32_t, int>{ids[t / 4], t % 4};
      const int slot = (ring - 2 + (t - split)) % ring;
      return std::pair<int32_t, int>{ids[plain_pages + slot / 4], slot % 4};
    };
    for (int layer = 0; layer < L.num_layers; ++layer)
      for (int t = 0; t < tokens; ++t)
        for (int h = 0; h < H; ++h)
          for (int c = 0; c < D; ++c) pool.SetSlot(slot_of(t).first, layer, 1, h, slot_of(t).second, c, Uniform(-3.f, 3.f));
    ValueTask plain;
    plain.src_pages = 0;
    plain.src_first_slot = 0;
    plain.dst_pages = src_pages;
    plain.dst_first_token = 0;
    plain.num_tokens = split;
    plain.first_block = 0;
    ValueTask wrapped;
    wrapped.src_pages = plain_pages;
    wrapped.src_first_slot = ring - 2;
    wrapped.ring = ring;
    wrapped.dst_pages = src_pages;
    wrapped.dst_first_token = split;
    wrapped.num_tokens = tokens - split;
    wrapped.first_block = split * L.num_layers;
    const std::vector<ValueTask> tasks = {plain, wrapped};
    DeviceBuffer d_pool(pool.bytes.size()), d_table(ids.size() * 4), d_tasks(tasks.size() * sizeof(ValueTask));
    ToDevice(d_pool, pool.bytes);
    ToDevice(d_table, ids);
    ToDevice(d_tasks, tasks);
    L.pool = d_pool.ptr;
    ASSERT_EQ(QuantizeValueTasks(L, static_cast<const ValueTask*>(d_tasks.ptr), static_cast<int32_t>(tasks.size()),
                                 tokens * L.num_layers, static_cast<const int32_t*>(d_table.ptr), nullptr),
              0);
    std::vector<uint8_t> after(pool.bytes.size());
    ToHost(after, d_pool);
    HostPool got{L, after};
    const int fpi = 32 / bits;
    for (int layer = 0; layer < L.num_layers; ++layer)
      for (int t = 0; t < tokens; ++t) {
        const int32_t page = ids[src_pages + t / group];
        const HostPool::Blocks b = got.QuantBlocks(page, layer);
        for (int h = 0; h < H; ++h)
          for (int c0 = 0; c0 < D; c0 += group) {
            float lo = INFINITY, hi = -INFINITY;
            for (int c = c0; c < c0 + group; ++c) {
              const float x = pool.GetSlot(slot_of(t).first, layer, 1, h, slot_of(t).second, c);
              lo = std::min(lo, x), hi = std::max(hi, x);
            }
            const Grid grid = MinMax(lo, hi, bits);
            const int64_t row = static_cast<int64_t>(h) * L.tokens_per_page + t % group;
            ASSERT_EQ(got.Half(b.value_scale, row * (D / group) + c0 / group), grid.scale);
            ASSERT_EQ(got.Half(b.value_min, row * (D / group) + c0 / group), grid.min);
            for (int c = c0; c < c0 + group; ++c) {
              const float code = Code(pool.GetSlot(slot_of(t).first, layer, 1, h, slot_of(t).second, c), grid, bits);
              const uint32_t stored = (got.Word(b.value_words, row * (D / fpi) + c / fpi) >> (bits * (c % fpi))) &
                                      ((1u << bits) - 1);
              ASSERT_EQ(stored, static_cast<uint32_t>(code)) << "layer " << layer << " token " << t << " ch " << c;
            }
          }
      }
  }
};

TEST_F(QuantizeTest, KiviKeyGroupsMatchCpu) {
  RunKeys({DType::kFloat16, 2, 128, 32, 0});
  RunKeys({DType::kFloat32, 4, 64, 16, 0});
}

TEST_F(QuantizeTest, SquatKeyGroupsWithCompensationMatchCpu) {
  RunKeys({DType::kFloat16, 2, 128, 32, 64});
  RunKeys({DType::kBFloat16, 4, 128, 32, 32});
  RunKeys({DType::kFloat32, 2, 64, 32, 16});
}

TEST_F(QuantizeTest, ValueTokensMatchCpu) {
  RunValues(DType::kFloat16, 2, 128, 32);
  RunValues(DType::kFloat32, 4, 128, 64);
  RunValues(DType::kBFloat16, 2, 64, 32);
}

}  // namespace
}  // namespace squat::kernels
