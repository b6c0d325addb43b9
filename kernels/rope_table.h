// The cos / sin tables that Backend::Rope reads, from Hugging Face's rope formulas
// (transformers' modeling_rope_utils: "default" and "yarn", the latter as DeepSeek-V3 uses it).
#ifndef MOE_KERNELS_ROPE_TABLE_H_
#define MOE_KERNELS_ROPE_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

enum class RopeScalingType { kDefault, kYarn };

// Field names follow config.json. dim = rotary_dim (DeepSeek-V3: qk_rope_head_dim; others:
// head_dim * partial_rotary_factor).
struct RopeTableOptions {
  int64_t rotary_dim = 0;     // even, > 0
  int64_t max_positions = 0;  // table rows, > 0
  double theta = 10000.0;     // rope_theta, > 0
  RopeScalingType type = RopeScalingType::kDefault;
  // YaRN only (rope_scaling). factor is what HF uses: recent transformers replace the config's
  // factor by max_position_embeddings / original_max_position_embeddings when the latter is
  // given; the caller passes that ratio then (equal to factor for DeepSeek-V3 and its tiny
  // config). 0 for mscale / mscale_all_dim / attention_factor means absent, as in HF (a falsy
  // value).
  double factor = 1.0;                           // >= 1
  int64_t original_max_position_embeddings = 0;  // > 0
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  double attention_factor = 0.0;
  bool truncate = true;
};

// cos[p, i] = fp32(cos(a)) * attention_factor, sin likewise, a = fp32(p * inv_freq[i]): HF's
// fp32 arithmetic (inv_freq, the angle and the scaling are fp32 as in torch; cos / sin are
// rounded from double, within 0.5 ulp where torch's are within 1 ulp).
//   default: inv_freq[i] = 1 / theta^(2i / dim), attention_factor = 1
//   yarn:    inv_freq[i] = interp[i] * (1 - e[i]) + extrap[i] * e[i], extrap = 1 / theta^(2i/dim),
//            interp = extrap-like / factor, e[i] = 1 - clamp((i - low) / (high - low), 0, 1)
//            with [low, high] HF's find_correction_range(beta_fast, beta_slow, dim, theta,
//            original_max_position_embeddings, truncate); attention_factor as given, else
//            get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both are
//            set, else get_mscale(factor), get_mscale(s, m) = s <= 1 ? 1 : 0.1 m ln(s) + 1.
// DeepSeek-V3's attention additionally scales softmax by get_mscale(factor, mscale_all_dim)^2;
// that is attention's business, not the table's.
struct RopeTable {
  int64_t max_positions = 0;
  int64_t half = 0;  // rotary_dim / 2
  float attention_factor = 1.0f;
  std::vector<float> inv_freq;  // [half]
  std::vector<float> cos;       // [max_positions, half]
  std::vector<float> sin;       // [max_positions, half]
};

// InvalidArgument naming the field for a value outside the ranges above.
absl::StatusOr<RopeTable> MakeRopeTable(const RopeTableOptions& options);

}  // namespace moe

#endif  // MOE_KERNELS_ROPE_TABLE_H_
