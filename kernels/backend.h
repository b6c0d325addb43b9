// The op set every backend implements, and nothing about models.
//
// Conventions for every op:
// - Pointers are device pointers of this backend's device (host memory for the CPU backend),
//   except where a field says "host". Matrices are row-major with an explicit leading
//   dimension (elements between the starts of consecutive rows).
// - Floating math is done in fp32; a bf16 / f16 result is rounded once, to nearest even.
// - Every public method validates its arguments (shapes, dtypes, pointers, leading dims) and
//   returns InvalidArgument naming the op, the field and the numbers involved; only then is
//   the backend's Run* method called. Backends only compute. A dtype combination a backend
//   does not implement is Unimplemented, never a silent fallback.
// - Results are deterministic: no float atomics, fixed summation orders, and no dependence
//   on the thread count or launch configuration.
// - Ops run in stream order on the backend's device; the CPU backend runs synchronously.
//   Synchronize() waits for all work issued so far.
// - Data errors (an index read from device memory that is out of range: token ids, slot
//   mappings, block tables, positions, expert ids) are InvalidArgument naming the op, the
//   field, the position and the value. The CPU backend returns them from the op; a device
//   backend, which finds them only on the device, returns them from the next Synchronize or
//   CopyToHost (the first failed op's, in issue order, once), so that a step never waits for
//   its checks. Either way the failed op writes nothing and nothing is read or written out of
//   bounds.
// - Thread safety: a Backend may be used by one thread at a time.
#ifndef MOE_KERNELS_BACKEND_H_
#define MOE_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace moe {

class Backend;

// `batch` constant B operands [k, n] of one dtype (model weights), copied once by a backend
// into the layout its GEMMs read fastest, so that GEMMs with a small m do not re-pack B on
// every call. The CPU backend keeps oneDNN's blocked weights layout per output tile; a backend
// may as well keep a plain copy. Made by Backend::PackWeights, read through GemmArgs::packed_b,
// refreshed by Backend::RepackWeights after a weight update, and read back exactly (packing
// only moves elements) by Backend::UnpackWeights, so a caller need not keep the plain source.
// Ownership: the caller owns the handle, which must not outlive the backend that made it; only
// that backend accepts it. The source matrices are not read after PackWeights / RepackWeights
// return (they may be freed or changed).
// Thread safety: GEMMs and UnpackWeights only read it; RepackWeights must not overlap another
// call using the same handle (stream order takes care of that on a stream backend).
class PackedWeights {
 public:
  virtual ~PackedWeights() = default;
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;

  int64_t batch() const { return batch_; }
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  DType dtype() const { return dtype_; }
  // Layout of the source matrices given to PackWeights and RepackWeights, and of what
  // UnpackWeights writes: [n, k] when true, else [k, n].
  bool trans_b() const { return trans_b_; }
  const Backend* backend() const { return backend_; }
  // Device memory the handle holds (padding included); 0 for an empty set.
  virtual size_t bytes() const = 0;

 protected:
  PackedWeights(const Backend* backend, int64_t batch, int64_t k, int64_t n, DType dtype,
                bool trans_b)
      : backend_(backend), batch_(batch), k_(k), n_(n), dtype_(dtype), trans_b_(trans_b) {}

 private:
  const Backend* backend_;
  int64_t batch_;
  int64_t k_;
  int64_t n_;
  DType dtype_;
  bool trans_b_;
};

// Source of PackWeights, laid out like a batched GEMM's B: matrix i starts at
// b + i * stride_b elements and is [k, n] (trans_b = false) or [n, k] (trans_b = true) with
// leading dim ldb; stride_b = 0 repeats one matrix. dtype in {f32, bf16}.
// b = null makes the storage only, every matrix all zeros until RepackWeights fills it: a
// loader packs one matrix at a time without holding a plain copy of them all.
struct PackWeightsArgs {
  int64_t batch = 0;
  int64_t k = 0;
  int64_t n = 0;
  const void* b = nullptr;
  DType dtype = DType::kF32;
  int64_t ldb = 0;
  bool trans_b = false;
  int64_t stride_b = 0;
};

// C[m, n] = op(A)[m, k] * op(B)[k, n], fp32 accumulation, one rounding to c_dtype.
// A is stored [m, k] (trans_a = false) or [k, m] (trans_a = true) with leading dim lda;
// likewise B is [k, n] or [n, k] with ldb. a_dtype == b_dtype, in {f32, bf16};
// c_dtype in {f32, bf16}. C must not overlap A or B.
//
// Pre-packed B: with packed_b set, B is matrix packed_b_index of packed_b (a batched GEMM's
// matrix i and a grouped GEMM's group g use matrix packed_b_index + i, + g) and b, ldb,
// trans_b and stride_b are ignored; k, n and b_dtype must equal packed_b's. A packed GEMM
// computes the same function with the same determinism guarantees, but may round differently
// from the same GEMM with a plain B (the CPU backend runs another oneDNN kernel for it);
// packed gemm, batched and grouped GEMMs give the same bits for the same rows and matrix.
struct GemmArgs {
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  const void* a = nullptr;
  DType a_dtype = DType::kF32;
  int64_t lda = 0;
  bool trans_a = false;
  const void* b = nullptr;
  DType b_dtype = DType::kF32;
  int64_t ldb = 0;
  bool trans_b = false;
  void* c = nullptr;
  DType c_dtype = DType::kF32;
  int64_t ldc = 0;
  const PackedWeights* packed_b = nullptr;
  int64_t packed_b_index = 0;
  // A row's bits must not depend on m (on the other rows of A): a backend that picks its
  // kernel by m makes one choice for every m. The CPU backend's packed GEMMs are so anyway;
  // the CUDA backend runs its own segment kernel at every m where that takes the shape, else
  // one cuBLASLt algorithm per shape without m. Set for the router and shared-expert GEMMs, so
  // a token's routing and shared output do not depend on its batch (MOE_SEMANTICS 7.15) and
  // expert parallel ranks, which see fewer rows, give one device's bits.
  bool row_invariant = false;
};

// `batch` independent GEMMs; matrix i of A starts at a + i * stride_a elements (same for B, C).
// This is the equal-count expert fast path: one call over all experts.
struct BatchedGemmArgs {
  GemmArgs gemm;
  int64_t batch = 0;
  int64_t stride_a = 0;
  int64_t stride_b = 0;
  int64_t stride_c = 0;
};

// Grouped GEMM over row segments: for group g, rows [offsets[g], offsets[g+1]) of A
// (gemm.a is [M, k], M = offsets[num_groups], trans_a must be false) times B_g
// (B_g starts at gemm.b + g * stride_b elements) into the same rows of C.
// gemm.m is ignored (M comes from offsets). Empty groups cost nothing.
//
// Instead of host offsets the segments may be given by their sizes in this backend's memory
// (`counts`, num_groups entries, e.g. Bincount's output, summing to gemm.m = M): the host never
// reads them, so no device-to-host copy waits for the routing (and the call can be captured in
// a CUDA graph). Exactly one of offsets and counts is set. Counts that do not sum to M are the
// caller's bug: the CPU backend reports InvalidArgument; a device backend cannot see them and
// clips the segments to M rows (never touching memory past A or C).
struct GroupedGemmArgs {
  GemmArgs gemm;
  int64_t num_groups = 0;
  const int64_t* offsets = nullptr;  // host, num_groups + 1 entries, offsets[0] = 0, nondecreasing
  const int64_t* counts = nullptr;   // backend memory, num_groups entries; see above
  int64_t stride_b = 0;
};

enum class ScoreFunction { kSoftmax, kSigmoid };

// Top-k routing from fp32 gate logits.
// scores = softmax over all experts | sigmoid, fp32. choice = scores + expert_bias (bias is for
// selection only). With num_groups > 1: group score = sum of the two largest choice values in
// the group; the topk_groups best groups are kept (ties to the lower group id) and every expert
// outside them is excluded. Then top_k over choice, ties to the lower expert id.
// weights = scores at the chosen ids (never the bias); if renormalize, divided by
// (their sum in slot order + 1e-20); then multiplied by route_scale.
// ids come out in ascending expert id within a token.
// force_balanced replaces the selection by ids[t, k] = (t * top_k + k) mod num_experts
// (slot order; ids may repeat within a token when top_k > num_experts); weights as above.
struct RouterArgs {
  int64_t tokens = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  const float* logits = nullptr;  // [tokens, num_experts]
  ScoreFunction score = ScoreFunction::kSoftmax;
  const float* expert_bias = nullptr;  // [num_experts] or null
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  bool renormalize = false;
  float route_scale = 1.0f;
  bool force_balanced = false;
  int32_t* ids = nullptr;    // out [tokens, top_k]
  float* weights = nullptr;  // out [tokens, top_k]
};

// counts[b] = number of i with ids[i] == b, exact integers. An id outside [0, num_bins) is an
// error (InvalidArgument where the backend can see it).
struct BincountArgs {
  int64_t n = 0;
  const int32_t* ids = nullptr;  // [n]
  int64_t num_bins = 0;
  int64_t* counts = nullptr;  // out [num_bins]
};

// Dispatch order: a stable sort of the n slots by expert id (ties keep slot order, so within an
// expert tokens ascend). sorted_slots[r] = the slot placed at row r; slot_to_row is its inverse.
// counts are the bincount of ids (num_experts entries).
struct ExpertOrderArgs {
  int64_t n = 0;
  const int32_t* ids = nullptr;  // [n]
  int64_t num_experts = 0;
  const int64_t* counts = nullptr;  // [num_experts]
  int32_t* sorted_slots = nullptr;  // out [n]
  int32_t* slot_to_row = nullptr;   // out [n]
};

// dst[r, :] = src[index[r] / index_divisor, :] for r in [0, rows). With slot_scale, the row is
// multiplied by slot_scale[index[r]] in fp32 and rounded once (scores applied before experts).
// src and dst share dtype; they must not overlap.
struct GatherRowsArgs {
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;
  const void* src = nullptr;
  int64_t src_ld = 0;
  int64_t src_rows = 0;            // rows available in src, for validation
  const int32_t* index = nullptr;  // [rows]
  int64_t index_divisor = 1;
  const float* slot_scale = nullptr;  // indexed by index[r], or null
  void* dst = nullptr;
  int64_t dst_ld = 0;
};

// out[r, j] = silu(g) * u with g = gate_up[r, j], u = gate_up[r, inter + j] (gate then up).
// f32: computed in fp32. bf16: PyTorch's two roundings, s = bf16(silu(fp32 g)), out = bf16(s*u),
// which is what an unfused `act(gate(x)) * up(x)` computes in bf16 (Hugging Face, torchtitan).
struct SwiGluArgs {
  int64_t rows = 0;
  int64_t inter = 0;
  DType dtype = DType::kF32;
  const void* gate_up = nullptr;  // [rows, 2 * inter]
  int64_t gate_up_ld = 0;
  void* out = nullptr;  // [rows, inter]
  int64_t out_ld = 0;
};

// The deterministic combine, a gather per token (no float atomics):
//   acc = sum over token t's top_k slots in ascending expert id (ties: slot order) of
//         fp32(expert_out[slot_to_row[slot]]) * weight[slot]   (weight 1 when weights is null)
//   routed = round(acc)                          one rounding to dtype
//   out[t] = add_to_out ? round(routed + out[t]) : routed
// add_to_out folds the shared experts' output, already in out, in place.
// A slot with slot_to_row[slot] < 0 was dropped (capacity mode) and contributes nothing.
// out must not overlap expert_out.
struct CombineArgs {
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;
  const void* expert_out = nullptr;  // [tokens * top_k, cols] in dispatch order
  int64_t expert_out_ld = 0;
  const int32_t* slot_to_row = nullptr;  // [tokens * top_k]
  const int32_t* ids = nullptr;          // [tokens * top_k]
  const float* weights = nullptr;        // [tokens * top_k] or null
  bool add_to_out = false;
  void* out = nullptr;  // [tokens, cols]
  int64_t out_ld = 0;
};

// dst[r, :] = round(fp32(src[r, :]) * s_r), s_r = scale[r] or sigmoid(scale[r]).
// dst may equal src (same pointer and ld); no other overlap.
struct ScaleRowsArgs {
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;
  const void* src = nullptr;
  int64_t src_ld = 0;
  const float* scale = nullptr;  // [rows]
  bool sigmoid_of_scale = false;
  void* dst = nullptr;
  int64_t dst_ld = 0;
};

// out[i] = round(fp32(a[i]) + fp32(b[i])); out may equal a or b.
struct AddArgs {
  int64_t n = 0;
  DType dtype = DType::kF32;
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
};

// dst[i] = convert(src[i]) between f32, bf16 and f16 (round to nearest even).
struct CastArgs {
  int64_t n = 0;
  const void* src = nullptr;
  DType src_dtype = DType::kF32;
  void* dst = nullptr;
  DType dst_dtype = DType::kF32;
};

// out[r, :] = RMSNorm of x[r, :] with weight w[cols] (Hugging Face's LlamaRMSNorm, also used by
// Mixtral, Qwen2/3-MoE and DeepSeek-V3). weight has x's dtype (the loader converts it to the run
// dtype, as a model loaded in that dtype holds it). The sum of squares is fp32 over 8 lanes:
// element j goes to lane j mod 8 in ascending j, then the lanes add as
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); then
//   inv = 1 / sqrtf(sum / cols + eps)                              (fp32, as torch.rsqrt on CPU)
//   f32:  out = w * (x * inv)                                        fp32, no further rounding
//   bf16: out = bf16(fp32(w) * fp32(bf16(fp32(x) * inv)))           HF's two roundings: the
//         normalized row is cast to the input dtype, then multiplied by the bf16 weight.
// out may equal x (same pointer and ld); no other overlap. eps finite and >= 0.
struct RmsNormArgs {
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;  // of x, weight and out: f32 or bf16
  const void* x = nullptr;    // [rows, cols]
  int64_t x_ld = 0;
  const void* weight = nullptr;  // [cols]
  float eps = 1e-6f;
  void* out = nullptr;  // [rows, cols]
  int64_t out_ld = 0;
  // Rows in groups, e.g. the heads of each token in a fused qkv buffer (qk-norm: one call for
  // every token): with rows_per_group > 0, row i is at x + (i / rows_per_group) * group_ld +
  // (i % rows_per_group) * x_ld, and at out + the same with out_ld. 0: row i at x + i * x_ld.
  // group_ld must be >= rows_per_group * x_ld and >= rows_per_group * out_ld.
  int64_t rows_per_group = 0;
  int64_t group_ld = 0;
};

// The element offset of row i of an RmsNormArgs operand with leading dim `ld`.
inline int64_t RmsNormRowOffset(const RmsNormArgs& a, int64_t i, int64_t ld) {
  if (a.rows_per_group <= 0) return i * ld;
  return (i / a.rows_per_group) * a.group_ld + (i % a.rows_per_group) * ld;
}

// Which dims of a head's rotated part form the pairs that RoPE rotates by frequency i.
// kHalf: (i, i + rotary_dim / 2), Hugging Face's rotate_half (Llama, Mixtral, Qwen2/3-MoE).
// kInterleaved: (2i, 2i + 1), the original RoPE layout. HF DeepSeek-V3 with rope_interleave
// (true in its config) de-interleaves q_pe / k_pe ((2i, 2i+1) -> (i, i + d/2)) and then applies
// rotate_half, leaving the result de-interleaved; kInterleaved computes the same values in the
// original dim order. That permutation is the same for q_pe and k_pe, so q . k and attention are
// unchanged: the DeepSeek-V3 path uses kInterleaved (kHalf when rope_interleave is false).
enum class RopeStyle { kHalf, kInterleaved };

// Rotary position embedding in place, fp32 math and one rounding per element for bf16:
// for row r, head h, pair (a, b) of frequency i (see RopeStyle), p = positions[r],
//   c = cos[p, i], s = sin[p, i]    (tables [max_positions, rotary_dim / 2], f32, from
//                                    MakeRopeTable in kernels/rope_table.h; any YaRN attention
//                                    factor is already in them)
//   x[a] = x[a] * c - x[b] * s;  x[b] = x[b] * c + x[a] * s    (old x[a] on the right)
// which is HF's q * cos + rotate_half(q) * sin bit for bit in f32 (HF bf16 rounds cos, sin and
// each product to bf16; here bf16 is rounded once, at the end). Head h of row r starts at
// x + r * ld + h * head_dim and its first rotary_dim dims rotate, the rest are untouched:
// head_dim is the head stride, so x may point into a head (MLA's q_pe: x = q + nope_dim,
// head_dim = qk_head_dim). rotary_dim even and in [2, head_dim]; ld covers the last rotated dim.
// A position outside [0, max_positions) is InvalidArgument naming the row, position and
// max_positions, checked before anything is written.
struct RopeArgs {
  int64_t rows = 0;  // tokens
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;
  RopeStyle style = RopeStyle::kHalf;
  DType dtype = DType::kF32;  // of x: f32 or bf16
  void* x = nullptr;
  int64_t ld = 0;
  const int32_t* positions = nullptr;  // [rows]
  const float* cos = nullptr;          // [max_positions, rotary_dim / 2]
  const float* sin = nullptr;          // [max_positions, rotary_dim / 2]
  int64_t max_positions = 0;
};

// out[t, :] = table[ids[t], :] (a row gather, exact copies). An id outside [0, vocab) is
// InvalidArgument naming the position, id and vocab, checked before anything is written.
// table and out share dtype (f32 or bf16) and must not overlap.
struct EmbeddingArgs {
  int64_t tokens = 0;
  const int32_t* ids = nullptr;  // [tokens]
  int64_t vocab = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;
  const void* table = nullptr;  // [vocab, cols]
  int64_t table_ld = 0;
  void* out = nullptr;  // [tokens, cols]
  int64_t out_ld = 0;
};

// The paged KV cache: one K and one V array per layer, each [num_blocks, block_size, kv_heads,
// head_dim] contiguous in the run dtype. Slot s = block * block_size + offset holds one token's
// row of kv_heads * head_dim values, at element s * kv_heads * head_dim.
//
// KvWrite appends the new tokens' K and V rows: k_cache[slot_mapping[t]] = k[t, :] and
// v_cache[slot_mapping[t]] = v[t, :], exact copies. The caller turns (sequence, position) into
// a slot through its block table. k and v are [tokens, kv_heads * head_dim] with leading dims
// k_ld, v_ld; they share dtype (f32 or bf16) with the caches and must not overlap them. Slots
// should be distinct; a repeated slot keeps the row of the last token naming it. A slot outside
// [0, num_blocks * block_size) is InvalidArgument naming the token, slot and limit, checked
// before anything is written.
struct KvWriteArgs {
  int64_t tokens = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::kF32;  // of k, v and both caches: f32 or bf16
  const void* k = nullptr;    // [tokens, kv_heads * head_dim]
  int64_t k_ld = 0;
  const void* v = nullptr;  // [tokens, kv_heads * head_dim]
  int64_t v_ld = 0;
  const int32_t* slot_mapping = nullptr;  // [tokens]
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  void* k_cache = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
  void* v_cache = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
};

// Causal GQA attention of a batch of query tokens over the paged KV cache (K and V of the
// query tokens themselves already written by KvWrite). The batch may mix sequences in prefill
// (many tokens, possibly a chunk) and in decode (one token); every query token names its
// sequence (seq_ids) and its absolute position p (positions). Query (t, h) with s = seq_ids[t]
// and p = positions[t] sees the cache positions j of sequence s with lo <= j <= p, where
// lo = 0, or lo = max(0, p - sliding_window + 1) when sliding_window > 0 (HF Mixtral / Qwen2
// sliding_window: the last sliding_window positions, p included). Position j lives in slot
// block_tables[s, j / block_size] * block_size + j % block_size. Head h reads kv head
// h / (heads / kv_heads). All math in fp32, in this fixed order (no dependence on the thread
// count, the launch or the other tokens of the batch):
//   score_j = scale * dot(q[t, h], k_j), dot over 8 lanes: dim d to lane d mod 8 in ascending
//             d, lanes added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
// The visible positions fall into partitions of kAttentionPartition absolute positions
// (partition i holds j in [i * 64, i * 64 + 63]), each reduced on its own, then merged:
//   for each partition i the query sees (V_i its visible positions):
//     m_i = max over V_i of score_j;  e_j = exp(score_j - m_i)
//     sum_i = sum of e_j, acc_i[d] = sum of e_j * v_j[d], both in ascending j from 0.0
//   m = max_i m_i;  then over the same partitions in ascending i, from 0.0:
//     w_i = exp(m_i - m);  sum += w_i * sum_i;  acc[d] += w_i * acc_i[d]
//   out[t, h, d] = round(acc[d] / sum)
// every product and sum rounded to fp32 on its own (no fma), one rounding to dtype at the end.
// A query that sees one partition gets w = 1 exactly, so the merge changes no bit of it; the
// partitions let a long context's positions be reduced in parallel (split-KV decode) with the
// same bits as one pass over them. Maxima ignore NaN scores (the max keeps m when a score is
// NaN); a NaN score still makes its e_j, and so the output, NaN, and so does a partition whose
// scores are all -inf (exp(-inf - -inf)). q is [tokens, heads * head_dim] (ld q_ld), out is
// [tokens, heads * head_dim] (ld out_ld); V's head dim equals K's. q, the caches and out share
// dtype (f32 or bf16); out must not overlap q or the caches. block_tables is
// [num_seqs, max_blocks_per_seq] (entries beyond a sequence's length are not read).
// Data errors are InvalidArgument naming the field, index and limit, checked before anything
// is written: seq_ids[t] outside [0, num_seqs), positions[t] outside
// [0, max_blocks_per_seq * block_size), a block_tables entry that a query reads outside
// [0, num_blocks).

// Positions per attention partition (see above).
constexpr int64_t kAttentionPartition = 64;

struct AttentionArgs {
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;  // divides heads
  int64_t head_dim = 0;
  DType dtype = DType::kF32;  // of q, both caches and out: f32 or bf16
  const void* q = nullptr;    // [tokens, heads * head_dim]
  int64_t q_ld = 0;
  const void* k_cache = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
  const void* v_cache = nullptr;  // [num_blocks, block_size, kv_heads, head_dim]
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* seq_ids = nullptr;       // [tokens]
  const int32_t* positions = nullptr;     // [tokens]
  int64_t sliding_window = 0;             // 0: none; else the visible positions per query
  float scale = 1.0f;                     // finite; usually 1 / sqrt(head_dim)
  void* out = nullptr;                    // [tokens, heads * head_dim]
  int64_t out_ld = 0;
};

// Per-row sampling parameters (host memory). The defaults sample from the plain softmax.
struct SamplingParams {
  float temperature = 1.0f;         // finite, >= 0; 0 = greedy (argmax, ties to the lowest id)
  int32_t top_k = 0;                // >= 0; 0 = off
  float top_p = 1.0f;               // in (0, 1]; 1 = off
  float min_p = 0.0f;               // in [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // finite, > 0; 1 = off
  uint64_t seed = 0;                // with step, the only source of randomness
  uint64_t step = 0;                // e.g. the number of tokens generated so far
};

// OK if every field of p is in its range above, else InvalidArgument
// "<name>.<field>=<value> <rule>", e.g. "request 3: sampling.top_p=1.5 is outside (0, 1]".
absl::Status CheckSamplingParams(const SamplingParams& p, absl::string_view name);

// The uniform in [0, 1) that Sample draws for a row: a pure function of (seed, step), the
// same on every backend. SplitMix64's finaliser of the seed, xor the finalised step, finalised
// again; its top 53 bits scaled by 2^-53.
inline uint64_t SampleMix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline double SampleUniform(uint64_t seed, uint64_t step) {
  const uint64_t h = SampleMix64(SampleMix64(seed + 0x9e3779b97f4a7c15ull) ^
                                 SampleMix64(step + 0x632be59bd9b4e019ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Next-token sampling, one token per row of fp32 logits [rows, vocab] (leading dim ld), with
// Hugging Face's logits processors in HF's order. All math after reading a logit is fp64.
// For row r with p = params[r] and x = logits[r, :]:
//   1. repetition penalty: for each distinct id in seen_ids[seen_offsets[r], seen_offsets[r+1])
//      x[id] = x[id] > 0 ? x[id] / penalty : x[id] * penalty   (HF RepetitionPenalty; repeats
//      of an id count once).
//   2. temperature 0: the token is the argmax of x, ties to the lowest id; steps 3-7 are
//      skipped and logprobs[r] = 0 (the greedy distribution is a point mass).
//   3. z = x / temperature.
//   4. top_k > 0: tokens with z below the top_k-th largest z are removed (ties at the
//      threshold all stay, as HF TopKLogitsWarper).
//   5. top_p < 1: the kept tokens in order of descending z (ties: ascending id) stay while the
//      probability mass before them (softmax over the kept tokens) is < top_p, so the
//      smallest such prefix reaching top_p stays, and always the first (HF TopPLogitsWarper).
//   6. min_p > 0: kept tokens with probability < min_p * the largest probability are
//      removed (HF MinPLogitsWarper).
//   7. q = softmax of z over the kept tokens (sum in ascending id); with u =
//      SampleUniform(p.seed, p.step), the token is the smallest kept id whose cumulative q
//      (ascending id) exceeds u (the last kept id if rounding leaves none).
// Every sum over ids above ("in ascending id": the softmax denominators of steps 5 and 7 and
// of raw_logprobs, and step 7's cumulative q) is chunked: the ids are cut into chunks of
// kSampleChunk consecutive ids; a chunk's terms are added in ascending id from 0.0, and the
// chunk sums in ascending chunk order from 0.0. The cumulative sum at id i is the sum of the
// chunk sums before i's chunk (so chunked) plus the sum of i's chunk's terms up to i, added
// once. With at most kSampleChunk ids this is the plain ascending sum; the chunks let a GPU
// add them in parallel with the same bits. (Step 5's walk in descending z stays one sum.)
// Outputs: ids[r]; if logprobs is set, logprobs[r] = log q[id], the log-prob under the final
// processed distribution (what vLLM reports by default and what HF's output_scores hold, after
// log-softmax); if raw_logprobs is set, raw_logprobs[r] = log_softmax(logits[r, :])[id] of the
// unprocessed logits. The result is a pure function of (logits, params, seen ids): no
// dependence on the thread count or the other rows.
// Logits may be -inf (a masked token). InvalidArgument, checked before anything is written:
// a parameter outside its range (naming params[r], the field and the value), a seen id outside
// [0, vocab), seen_offsets not starting at 0 or decreasing, a NaN or +inf logit, or a row
// whose logits are all -inf (naming the row and column).
// Workspace: the op allocates nothing; the caller passes `workspace`, memory of this backend's
// device (any host memory for the CPU backend) of at least SampleWorkspaceBytes(rows, vocab)
// bytes, with any alignment, that the call may overwrite (it keeps nothing there between
// calls). InvalidArgument naming both sizes if workspace_bytes is smaller, or if workspace is
// null while that is non-zero. Any sufficient size gives the same results.
// Ids per chunk of Sample's sums (see above).
constexpr int64_t kSampleChunk = 1024;

struct SampleArgs {
  int64_t rows = 0;
  int64_t vocab = 0;
  const float* logits = nullptr;  // [rows, vocab]
  int64_t ld = 0;
  const SamplingParams* params = nullptr;  // host, [rows]
  // Repetition-penalty history: host, rows + 1 offsets into seen_ids; null = no history.
  const int64_t* seen_offsets = nullptr;
  const int32_t* seen_ids = nullptr;  // host, [seen_offsets[rows]]
  int32_t* ids = nullptr;             // out [rows]
  float* logprobs = nullptr;          // out [rows] or null
  float* raw_logprobs = nullptr;      // out [rows] or null
  void* workspace = nullptr;          // scratch, [workspace_bytes]; see above
  size_t workspace_bytes = 0;
};

// A recorded sequence of ops that a backend can run again with one call (a CUDA graph): the
// same kernels with the same arguments and pointers, so it reads and writes the same memory
// each time, and what it computes depends only on that memory's contents then. Made by
// Backend::CaptureOps; the backend must outlive it.
class OpGraph {
 public:
  virtual ~OpGraph() = default;
  // Enqueues the recorded ops; like them, asynchronous. Data errors the recorded ops find are
  // reported as theirs would be (the next Synchronize / CopyToHost).
  virtual absl::Status Replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  virtual Device device() const = 0;
  // "cpu (oneDNN 2.6, avx512_core_bf16, 2 threads)" and the like, for logs and benchmarks.
  virtual std::string Describe() const = 0;

  // Memory on this backend's device. Allocate returns ResourceExhausted naming the size.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  // Copies between host memory and this device (either side may be this device's memory).
  virtual absl::Status CopyFromHost(void* dst, const void* host_src, size_t bytes) = 0;
  virtual absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status Synchronize() = 0;

  // Records the ops `enqueue` issues on this backend, without running them, into a graph that
  // Replay runs. While it records, every call that would wait for the device or move host
  // memory (Allocate, CopyFromHost, CopyToHost, Synchronize, an op that needs a value on the
  // host) fails, and so does the capture: the caller then runs `enqueue` directly instead.
  // Unimplemented on a backend without graphs (the CPU's); the Status of `enqueue`, or
  // FailedPrecondition naming what could not be recorded, otherwise.
  virtual absl::StatusOr<std::unique_ptr<OpGraph>> CaptureOps(
      const std::function<absl::Status()>& enqueue);
  // Whether CaptureOps can record at all on this backend.
  virtual bool RecordsOpGraphs() const { return false; }

  // Packs `args.batch` constant B matrices into a new handle (see PackedWeights).
  // InvalidArgument naming the field for bad shapes, leading dim, stride or pointer;
  // Unimplemented for a dtype other than f32 / bf16; ResourceExhausted naming the bytes.
  absl::StatusOr<std::unique_ptr<PackedWeights>> PackWeights(const PackWeightsArgs& args);
  // Packs matrix `index` of `packed` again from `b` (laid out as packed->trans_b() says, with
  // leading dim ldb), after the weights changed. InvalidArgument (nothing changed) for a null
  // or foreign handle, an index outside [0, batch), a short ldb or a null b.
  absl::Status RepackWeights(PackedWeights* packed, int64_t index, const void* b, int64_t ldb);
  // Writes matrix `index` of `packed` back to `b` in the layout it was packed from ([k, n], or
  // [n, k] when packed.trans_b(), leading dim ldb), bit for bit what was packed last; elements
  // of b between rows (ld padding) are not written. Validated like RepackWeights:
  // InvalidArgument (nothing written) for a foreign handle, an index outside [0, batch), a
  // short ldb or a null b. b must not overlap the handle's memory.
  absl::Status UnpackWeights(const PackedWeights& packed, int64_t index, void* b, int64_t ldb);

  absl::Status Gemm(const GemmArgs& args);
  absl::Status BatchedGemm(const BatchedGemmArgs& args);
  absl::Status GroupedGemm(const GroupedGemmArgs& args);
  absl::Status Router(const RouterArgs& args);
  absl::Status Bincount(const BincountArgs& args);
  absl::Status ExpertOrder(const ExpertOrderArgs& args);
  absl::Status GatherRows(const GatherRowsArgs& args);
  absl::Status SwiGlu(const SwiGluArgs& args);
  absl::Status Combine(const CombineArgs& args);
  absl::Status ScaleRows(const ScaleRowsArgs& args);
  absl::Status Add(const AddArgs& args);
  absl::Status Cast(const CastArgs& args);
  absl::Status RmsNorm(const RmsNormArgs& args);
  absl::Status Rope(const RopeArgs& args);
  absl::Status Embedding(const EmbeddingArgs& args);
  absl::Status KvWrite(const KvWriteArgs& args);
  absl::Status Attention(const AttentionArgs& args);
  absl::Status Sample(const SampleArgs& args);
  // Bytes of SampleArgs::workspace that Sample needs for `rows` rows of `vocab` logits on this
  // backend (0 when rows or vocab is <= 0). Backend-specific: it may grow with the backend's
  // thread count (the CPU backend keeps a vocab-sized scratch per thread), so size workspaces
  // from the backend that runs the op, at load, for the largest rows and vocab it will see: for
  // a fixed backend it is non-decreasing in rows and in vocab, so that size serves every call.
  virtual size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) const = 0;

 protected:
  Backend() = default;

  // Called with validated arguments; calls with no output elements never reach them
  // (Bincount with n = 0 does: it still writes zero counts; so does RunPackWeights for an
  // empty set, which returns a handle holding nothing).
  virtual absl::StatusOr<std::unique_ptr<PackedWeights>> RunPackWeights(
      const PackWeightsArgs& args) = 0;
  virtual absl::Status RunRepackWeights(PackedWeights* packed, int64_t index, const void* b,
                                        int64_t ldb) = 0;
  virtual absl::Status RunUnpackWeights(const PackedWeights& packed, int64_t index, void* b,
                                        int64_t ldb) = 0;
  virtual absl::Status RunGemm(const GemmArgs& args) = 0;
  virtual absl::Status RunBatchedGemm(const BatchedGemmArgs& args) = 0;
  virtual absl::Status RunGroupedGemm(const GroupedGemmArgs& args) = 0;
  virtual absl::Status RunRouter(const RouterArgs& args) = 0;
  virtual absl::Status RunBincount(const BincountArgs& args) = 0;
  virtual absl::Status RunExpertOrder(const ExpertOrderArgs& args) = 0;
  virtual absl::Status RunGatherRows(const GatherRowsArgs& args) = 0;
  virtual absl::Status RunSwiGlu(const SwiGluArgs& args) = 0;
  virtual absl::Status RunCombine(const CombineArgs& args) = 0;
  virtual absl::Status RunScaleRows(const ScaleRowsArgs& args) = 0;
  virtual absl::Status RunAdd(const AddArgs& args) = 0;
  virtual absl::Status RunCast(const CastArgs& args) = 0;
  virtual absl::Status RunRmsNorm(const RmsNormArgs& args) = 0;
  virtual absl::Status RunRope(const RopeArgs& args) = 0;
  virtual absl::Status RunEmbedding(const EmbeddingArgs& args) = 0;
  virtual absl::Status RunKvWrite(const KvWriteArgs& args) = 0;
  virtual absl::Status RunAttention(const AttentionArgs& args) = 0;
  virtual absl::Status RunSample(const SampleArgs& args) = 0;
};

}  // namespace moe

#endif  // MOE_KERNELS_BACKEND_H_
