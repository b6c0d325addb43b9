#include "kernels/rope_table.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("rope_table: ", what));
}

double GetMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// HF's find_correction_dim, in double as Python computes it.
double CorrectionDim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}

}  // namespace

absl::StatusOr<RopeTable> MakeRopeTable(const RopeTableOptions& o) {
  if (o.rotary_dim < 2 || o.rotary_dim % 2 != 0) {
    return Invalid(absl::StrCat("rotary_dim=", o.rotary_dim, " must be even and >= 2"));
  }
  if (o.max_positions <= 0) {
    return Invalid(absl::StrCat("max_positions=", o.max_positions, " must be positive"));
  }
  if (!(o.theta > 0.0) || std::isinf(o.theta)) {
    return Invalid(absl::StrCat("theta=", o.theta, " must be finite and positive"));
  }
  const bool yarn = o.type == RopeScalingType::kYarn;
  if (yarn) {
    if (!(o.factor >= 1.0) || std::isinf(o.factor)) {
      return Invalid(absl::StrCat("factor=", o.factor, " must be finite and >= 1"));
    }
    if (o.original_max_position_embeddings <= 0) {
      return Invalid(absl::StrCat("original_max_position_embeddings=",
                                  o.original_max_position_embeddings, " must be positive"));
    }
    if (!(o.beta_fast > 0.0) || !(o.beta_slow > 0.0)) {
      return Invalid(absl::StrCat("beta_fast=", o.beta_fast, " and beta_slow=", o.beta_slow,
                                  " must be positive"));
    }
  }
  RopeTable t;
  const int64_t dim = o.rotary_dim;
  const int64_t half = dim / 2;
  t.max_positions = o.max_positions;
  t.half = half;
  t.inv_freq.resize(half);
  const float base = static_cast<float>(o.theta);
  double attention_factor = 1.0;
  double low = 0.0, high = 0.0;
  if (yarn) {
    attention_factor = o.attention_factor;
    if (attention_factor == 0.0) {
      attention_factor = (o.mscale != 0.0 && o.mscale_all_dim != 0.0)
                             ? GetMscale(o.factor, o.mscale) / GetMscale(o.factor, o.mscale_all_dim)
                             : GetMscale(o.factor, 1.0);
    }
    const double max_pos = static_cast<double>(o.original_max_position_embeddings);
    low = CorrectionDim(o.beta_fast, dim, o.theta, max_pos);
    high = CorrectionDim(o.beta_slow, dim, o.theta, max_pos);
    if (o.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
  }
  // torch's fp32 steps: exponent, pow, reciprocals, ramp and blend each round to fp32.
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    const float pos_freq = std::pow(base, exponent);
    const float extrap = 1.0f / pos_freq;
    if (!yarn) {
      t.inv_freq[i] = extrap;
      continue;
    }
    const float interp = 1.0f / (static_cast<float>(o.factor) * pos_freq);
    const float linear =
        (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low);
    const float ramp = std::min(std::max(linear, 0.0f), 1.0f);
    const float extrap_factor = 1.0f - ramp;
    t.inv_freq[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
  }
  t.attention_factor = static_cast<float>(attention_factor);
  t.cos.resize(o.max_positions * half);
  t.sin.resize(o.max_positions * half);
  for (int64_t p = 0; p < o.max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * t.inv_freq[i];
      t.cos[p * half + i] =
          static_cast<float>(std::cos(static_cast<double>(angle))) * t.attention_factor;
      t.sin[p * half + i] =
          static_cast<float>(std::sin(static_cast<double>(angle))) * t.attention_factor;
    }
  }
  return t;
}

}  // namespace moe
