#include "kernels/cpu/onednn_matmul_cache.h"

#include <omp.h>

#include <cstdlib>
#include <functional>
#include <new>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moe {
namespace {

using dims = dnnl::memory::dims;

constexpr size_t kAlignment = 64;
// oneDNN lists few matmul implementations; this bounds the search for the preferred one.
constexpr int kMaxImplsSearched = 16;

std::string KeyString(const MatmulKey& key) {
  auto dim = [](int64_t v) { return v == kMatmulRuntimeDim ? std::string("?") : absl::StrCat(v); };
  return absl::StrCat(DTypeName(key.dtype), " m=", dim(key.m), " n=", dim(key.n), " k=", dim(key.k),
                      " lda=", dim(key.lda), " ldb=", dim(key.ldb), " ldc=", dim(key.ldc),
                      " trans_a=", key.trans_a, " trans_b=", key.trans_b,
                      key.packed_b ? " packed_b" : "");
}

}  // namespace

size_t MatmulKeyHash::operator()(const MatmulKey& key) const {
  size_t h = static_cast<size_t>(key.dtype) * 8 + key.packed_b * 4 + key.trans_a * 2 + key.trans_b;
  for (int64_t v : {key.m, key.n, key.k, key.lda, key.ldb, key.ldc}) {
    h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  }
  return h;
}

absl::Status DnnlErrorToStatus(const dnnl::error& e, const std::string& context) {
  const std::string message = absl::StrCat(context, ": ", e.what());
  switch (e.status) {
    case dnnl_out_of_memory:
      return absl::ResourceExhaustedError(message);
    case dnnl_unimplemented:
      return absl::UnimplementedError(message);
    default:
      return absl::InternalError(message);
  }
}

ScopedOmpMaxThreads::ScopedOmpMaxThreads(int num_threads) : saved_(omp_get_max_threads()) {
  omp_set_num_threads(num_threads);
}

ScopedOmpMaxThreads::~ScopedOmpMaxThreads() { omp_set_num_threads(saved_); }

OneDnnMatmulCache::AlignedBytes::~AlignedBytes() { std::free(data_); }

absl::Status OneDnnMatmulCache::AlignedBytes::Reserve(size_t bytes) {
  if (bytes <= size_) return absl::OkStatus();
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = rounded < bytes ? nullptr : std::aligned_alloc(kAlignment, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu gemm: cannot allocate ", bytes, " bytes of thread scratch"));
  }
  std::free(data_);
  data_ = p;
  size_ = rounded;
  return absl::OkStatus();
}

OneDnnMatmulCache::OneDnnMatmulCache(int num_threads, size_t capacity)
    : capacity_(capacity < 1 ? 1 : capacity) {
  try {
    engine_ = dnnl::engine(dnnl::engine::kind::cpu, 0);
    contexts_.reserve(num_threads);
    for (int i = 0; i < num_threads; ++i) {
      contexts_.push_back(std::make_unique<ThreadContext>());
      contexts_.back()->stream = dnnl::stream(engine_);
    }
  } catch (const dnnl::error& e) {
    init_status_ = DnnlErrorToStatus(e, "cpu gemm: cannot set up oneDNN");
  } catch (const std::bad_alloc&) {
    init_status_ = absl::ResourceExhaustedError("cpu gemm: out of memory setting up oneDNN");
  }
}

OneDnnMatmulCache::~OneDnnMatmulCache() = default;

absl::Status OneDnnMatmulCache::ReserveThreadBuffers(size_t scratchpad_bytes, size_t tile_bytes,
                                                     size_t a_dense_bytes) {
  for (auto& context : contexts_) {
    absl::Status s = context->scratchpad.Reserve(scratchpad_bytes);
    if (s.ok()) s = context->tile.Reserve(tile_bytes);
    if (s.ok()) s = context->a_dense.Reserve(a_dense_bytes);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> OneDnnMatmulCache::Get(
    const MatmulKey& key) {
  if (!init_status_.ok()) return init_status_;
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return *it->second;
  }
  ++misses_;
  try {
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> created = Create(key);
    if (!created.ok()) return created.status();
    lru_.push_front(*created);
    entries_[key] = lru_.begin();
    while (lru_.size() > capacity_) {
      entries_.erase(lru_.back()->key);
      lru_.pop_back();
    }
    return created;
  } catch (const dnnl::error& e) {
    return DnnlErrorToStatus(e, absl::StrCat("cpu gemm: oneDNN matmul for ", KeyString(key)));
  } catch (const std::bad_alloc&) {
    if (!lru_.empty() && entries_.size() < lru_.size()) lru_.pop_front();  // keep them in step
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu gemm: out of memory creating the oneDNN matmul for ", KeyString(key)));
  }
}

absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> OneDnnMatmulCache::Create(
    const MatmulKey& key) {
  using dt = dnnl::memory::data_type;
  const dt ab = key.dtype == DType::kBF16 ? dt::bf16 : dt::f32;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // Created for one thread: oneDNN reads omp_get_max_threads() here to size its blocking and
  // thread split, and every tile runs on one thread (gemm.cc says why).
  ScopedOmpMaxThreads one_thread(1);
  auto entry = std::make_shared<MatmulPrimitive>();
  entry->key = key;

  if (key.packed_b) {
    // oneDNN 2.6's brgemm, the implementation that reads B pre-packed, needs fixed dims and
    // dense A and C; its first choice is the one whose weights layout PackWeights produced.
    const dnnl::memory::desc a_md({key.m, key.k}, ab, dims{key.k, 1});
    const dnnl::memory::desc b_md({key.k, key.n}, ab, dnnl::memory::format_tag::any);
    const dnnl::memory::desc c_md({key.m, key.n}, dt::f32, dims{key.n, 1});
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine_);
    entry->impl = pd.impl_info_str();
    entry->weights_md = pd.weights_desc();
    entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
    entry->primitive = dnnl::matmul(pd);
    return std::shared_ptr<const MatmulPrimitive>(std::move(entry));
  }

  // Logical A is [m, k] and B is [k, n]; a transposed operand is the same logical matrix
  // stored column-major, i.e. with swapped strides.
  const dnnl::memory::desc a_md({key.m, key.k}, ab,
                                key.trans_a ? dims{1, key.lda} : dims{key.lda, 1});
  const dnnl::memory::desc b_md({key.k, key.n}, ab,
                                key.trans_b ? dims{1, key.ldb} : dims{key.ldb, 1});
  const dnnl::memory::desc c_md({key.m, key.n}, dt::f32, dims{key.ldc, 1});
  const dnnl::matmul::desc desc(a_md, b_md, c_md);

  // gemm:jit takes runtime dims and strides, handles every layout the contract allows, and
  // measured as fast as or faster than brgemm for single-threaded tiles here; prefer it.
  // In oneDNN 2.6, querying impl_info_str() on an iterator stops next_impl() from advancing,
  // so each candidate index is reached with a fresh iterator.
  int chosen = 0;
  for (int index = 0; index < kMaxImplsSearched; ++index) {
    dnnl::matmul::primitive_desc probe(desc, attr, engine_);
    bool exists = true;
    for (int i = 0; i < index && exists; ++i) exists = probe.next_impl();
    if (!exists) break;
    if (absl::StartsWith(probe.impl_info_str(), "gemm")) {
      chosen = index;
      break;
    }
  }
  dnnl::matmul::primitive_desc pd(desc, attr, engine_);
  for (int i = 0; i < chosen; ++i) pd.next_impl();

  entry->impl = pd.impl_info_str();
  entry->weights_md = pd.weights_desc();
  entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
  entry->primitive = dnnl::matmul(pd);
  return std::shared_ptr<const MatmulPrimitive>(std::move(entry));
}

}  // namespace moe
