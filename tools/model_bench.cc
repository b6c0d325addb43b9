// model_bench: times a whole model (moe::Model on the CPU or CUDA backend) loaded from a Hugging
// Face checkpoint folder, or with --random_weights from config.json alone (random weights of the
// real shapes, no checkpoint): prefill tokens/s for B prompts of L tokens, and decode tokens/s
// for B sequences that already hold --context tokens, next to floors from the machine's measured
// ceilings (memory bandwidth, bf16 GEMM peak). Optionally times Hugging Face transformers on
// the same folder and shapes (tools/fixtures/hf_decode_bench.py). Prints a table and writes JSON.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "engine/core/buffer.h"
#include "engine/core/json.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/model.h"
#include "engine/runtime/kv_block_manager.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/ceilings.h"
#include "tools/flags.h"
#include "tools/tool_util.h"

namespace moe::tools {
namespace {

struct Options {
  std::string model;
  bool random_weights = false;
  int64_t random_seed = 0;
  bool step_graphs = true;
  std::vector<std::string> phases = {"prefill", "decode"};
  std::string dtype = "bf16";
  int64_t threads = 0;
  std::vector<std::string> prefill = {"1x128", "4x128", "1x512"};
  std::vector<int64_t> decode_batch = {1, 4, 16, 64};
  int64_t context = 512;
  int64_t decode_steps = 8;
  int64_t warmup = 1;
  int64_t reps = 3;
  int64_t block_size = 16;
  int64_t fill_chunk = 512;
  int64_t seed = 1;
  std::string json;
  bool skip_ceilings = false;
  std::string backend = "cpu";
  int64_t copy_mib = 1024;
  int64_t gemm_size = 4096;
  bool hf_compare = false;
  std::string hf_python = "python3";
  std::string hf_script = "tools/fixtures/hf_decode_bench.py";
};

struct Ceilings {
  bool have_copy = false, have_read = false, have_gemm = false;
  CopyCeiling copy;
  ReadCeiling read;
  GemmCeiling gemm;
  std::string gemm_error;
  // As moe_bench: the better of copy and read is what weight bytes are divided by.
  double bandwidth_gbps() const {
    return std::max(have_copy ? copy.gbps : 0.0, have_read ? read.gbps : 0.0);
  }
};

absl::StatusOr<Ceilings> MeasureCeilings(const Options& opt, Backend* backend) {
  Ceilings c;
  if (opt.skip_ceilings) return c;
  std::fprintf(stderr,
               "measuring ceilings: %" PRId64 " MiB copy and read, %" PRId64 "^3 bf16 GEMM\n",
               opt.copy_mib, opt.gemm_size);
  MOE_ASSIGN_OR_RETURN(c.copy, MeasureCopy(opt.copy_mib << 20, 5));
  MOE_ASSIGN_OR_RETURN(c.read, MeasureRead(opt.copy_mib << 20, 5));
  c.have_copy = c.have_read = true;
  absl::StatusOr<GemmCeiling> gemm =
      MeasureGemm(backend, opt.gemm_size, opt.gemm_size, opt.gemm_size, 3);
  if (gemm.ok()) {
    c.gemm = *gemm;
    c.have_gemm = true;
  } else {
    c.gemm_error = gemm.status().ToString();
  }
  return c;
}

// The better of two measurements of each ceiling (one before the rows, one after).
Ceilings Best(Ceilings a, const Ceilings& b) {
  if (b.have_copy && (!a.have_copy || b.copy.gbps > a.copy.gbps)) a.copy = b.copy;
  if (b.have_read && (!a.have_read || b.read.gbps > a.read.gbps)) a.read = b.read;
  if (b.have_gemm && (!a.have_gemm || b.gemm.gflops > a.gemm.gflops)) a.gemm = b.gemm;
  a.have_copy |= b.have_copy;
  a.have_read |= b.have_read;
  a.have_gemm |= b.have_gemm;
  return a;
}

// What a step must read and compute, from the checkpoint's tensor list (ExpectedTensors) in the
// run dtype. Model does not expose its MoE blocks' routing, so the experts a step reaches are
// the expectation for uniform routing: E (1 - (1 - K/E)^T) per MoE layer for T tokens.
class CostModel {
 public:
  explicit CostModel(const Model& model) : c_(model.config()) {
    const double es = static_cast<double>(DTypeSize(model.dtype()));
    double expert_total = 0;
    for (const ExpectedTensor& t : ExpectedTensors(c_)) {
      const double n = static_cast<double>(t.shape.numel());
      switch (t.role) {
        case TensorRole::kEmbedding:
          break;  // one row per token, counted per step
        case TensorRole::kLmHead:
          lm_head_bytes_ = n * es;
          break;
        case TensorRole::kExpert:
          expert_total += n;
          break;
        case TensorRole::kNorm:
        case TensorRole::kAttentionBias:
        case TensorRole::kRouterBias:
          dense_bytes_ += n * es;
          break;
        default:  // attention projections, routers, shared experts and their gate, dense MLPs
          dense_bytes_ += n * es;
          dense_params_ += n;
      }
    }
    if (c_.tie_word_embeddings) {
      lm_head_bytes_ = static_cast<double>(c_.vocab_size) * c_.hidden_size * es;
    }
    for (bool moe : c_.layer_is_moe) moe_layers_ += moe;
    if (moe_layers_ > 0) expert_params_ = expert_total / (moe_layers_ * c_.moe.num_experts);
    expert_bytes_ = expert_params_ * es;
    embed_row_bytes_ = c_.hidden_size * es;
    kv_bytes_per_token_ = static_cast<double>(model.KvBytesPerBlock(1));
    v_head_dim_ = c_.use_mla ? c_.mla.v_head_dim : c_.head_dim;
  }

  double ExpertsHit(int64_t tokens) const {
    const double e = static_cast<double>(c_.moe.num_experts);
    if (moe_layers_ == 0 || e == 0) return 0;
    return e * (1.0 - std::pow(1.0 - c_.moe.top_k / e, static_cast<double>(tokens)));
  }

  // A step of `seqs` sequences, each appending `n` tokens after `start` cached ones, with one
  // logit row per sequence.
  double Bytes(int64_t seqs, int64_t start, int64_t n) const {
    const int64_t t = seqs * n;
    return dense_bytes_ + lm_head_bytes_ + t * embed_row_bytes_ +
           moe_layers_ * ExpertsHit(t) * expert_bytes_ +
           static_cast<double>(seqs) * (start + n) * kv_bytes_per_token_;
  }
  double Flops(int64_t seqs, int64_t start, int64_t n) const {
    const double t = static_cast<double>(seqs * n);
    double f = 2.0 * t * (dense_params_ + moe_layers_ * c_.moe.top_k * expert_params_) +
               2.0 * seqs * c_.hidden_size * c_.vocab_size;
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      const bool sliding = static_cast<size_t>(l) < c_.layer_sliding.size() && c_.layer_sliding[l];
      double keys = 0;  // summed over the new tokens: keys each attends to
      for (int64_t p = start; p < start + n; ++p) {
        keys +=
            sliding && c_.sliding_window > 0 ? std::min<int64_t>(p + 1, c_.sliding_window) : p + 1;
      }
      f += 2.0 * seqs * keys * c_.num_attention_heads * (c_.head_dim + v_head_dim_);
    }
    return f;
  }

  double dense_bytes() const { return dense_bytes_; }
  double lm_head_bytes() const { return lm_head_bytes_; }
  double expert_bytes() const { return expert_bytes_; }
  int64_t moe_layers() const { return moe_layers_; }
  double kv_bytes_per_token() const { return kv_bytes_per_token_; }

 private:
  const ModelConfig& c_;
  double dense_bytes_ = 0, dense_params_ = 0, lm_head_bytes_ = 0;
  double expert_params_ = 0, expert_bytes_ = 0, embed_row_bytes_ = 0, kv_bytes_per_token_ = 0;
  int64_t moe_layers_ = 0;
  int64_t v_head_dim_ = 0;
};

struct Row {
  std::string phase;  // "prefill" or "decode"
  int64_t batch = 0;
  int64_t len = 0;      // prefill: prompt tokens; decode: 1
  int64_t context = 0;  // decode: tokens cached before the first timed step
  int64_t reps = 0;
  double best_s = 0, median_s = 0;  // per Forward (decode: per step, averaged over the steps)
  double bytes = 0, flops = 0, experts_hit = 0;
  double floor_bytes_s = 0, floor_flops_s = 0;
  int64_t non_finite = 0;  // in the last logits
  double hf_s = 0;         // the reference's best time for the same shape; 0 = not measured
  int64_t tokens() const { return batch * len; }
  double floor_s() const { return std::max(floor_bytes_s, floor_flops_s); }
};

std::string ShapeName(const Row& r) {
  return r.phase == "prefill" ? absl::StrCat(r.batch, "x", r.len)
                              : absl::StrCat("B=", r.batch, " ctx=", r.context);
}


// The model, its cache and block bookkeeping, and Forward over whole-sequence chunks.
class Runner {
 public:
  Runner(Model* model, KvCache* cache, KvBlockManager* blocks, uint64_t seed)
      : model_(model), cache_(cache), blocks_(blocks), rng_(seed) {}

  // Random token ids (uniform over the vocabulary).
  std::vector<int32_t> Tokens(int64_t n) {
    std::uniform_int_distribution<int32_t> dist(0, model_->config().vocab_size - 1);
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = dist(rng_);
    return out;
  }

  // A batch in which sequence seqs[i] (a KvBlockManager id, already reserved far enough) gets
  // `n` new tokens at positions start .. start + n - 1; logits of each sequence's last token
  // when `logits`.
  absl::StatusOr<ModelBatch> Batch(const std::vector<int64_t>& seqs, int64_t start, int64_t n,
                                   bool logits) {
    ModelBatch b;
    const int64_t max_blocks = blocks_->max_blocks_per_seq();
    b.num_seqs = static_cast<int64_t>(seqs.size());
    b.max_blocks_per_seq = max_blocks;
    b.block_tables.assign(b.num_seqs * max_blocks, -1);
    std::vector<int32_t> slots(n);
    for (int64_t s = 0; s < b.num_seqs; ++s) {
      MOE_RETURN_IF_ERROR(blocks_->FillSlotMapping(seqs[s], start, n, slots.data()));
      MOE_RETURN_IF_ERROR(
          blocks_->FillBlockTableRow(seqs[s], b.block_tables.data() + s * max_blocks, max_blocks));
      const std::vector<int32_t> ids = Tokens(n);
      for (int64_t i = 0; i < n; ++i) {
        b.token_ids.push_back(ids[i]);
        b.positions.push_back(static_cast<int32_t>(start + i));
        b.seq_ids.push_back(static_cast<int32_t>(s));
        b.slot_mapping.push_back(slots[i]);
      }
      if (logits) b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size() - 1));
    }
    return b;
  }

  absl::Status Forward(const ModelBatch& b) { return model_->Forward(b, *cache_, &logits_); }

  int64_t NonFinite() const {
    return std::count_if(logits_.begin(), logits_.end(), [](float x) { return !std::isfinite(x); });
  }

 private:
  Model* model_;
  KvCache* cache_;
  KvBlockManager* blocks_;
  std::mt19937_64 rng_;
  std::vector<float> logits_;
};

// Times `steps` (each a Forward) warm-up + reps times; returns per-rep seconds per step.
absl::StatusOr<std::vector<double>> TimeSteps(Runner& runner, const std::vector<ModelBatch>& steps,
                                              const Options& opt) {
  std::vector<double> times;
  for (int64_t r = 0; r < opt.warmup + opt.reps; ++r) {
    const double t0 = NowSeconds();
    for (const ModelBatch& b : steps) MOE_RETURN_IF_ERROR(runner.Forward(b));
    if (r >= opt.warmup) times.push_back((NowSeconds() - t0) / steps.size());
  }
  return times;
}

absl::StatusOr<int64_t> ParsePositive(absl::string_view s, const char* what) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v < 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", s, "\" is not an integer >= 1"));
  }
  return v;
}

absl::StatusOr<std::vector<Row>> ParseShapes(const Options& opt) {
  bool prefill = false, decode = false;
  for (const std::string& p : opt.phases) {
    if (p != "prefill" && p != "decode") {
      return absl::InvalidArgumentError(
          absl::StrCat("--phases: \"", p, "\" is not prefill or decode"));
    }
    (p == "prefill" ? prefill : decode) = true;
  }
  std::vector<Row> rows;
  for (const std::string& s : opt.prefill) {
    if (!prefill) break;
    std::vector<std::string> parts = absl::StrSplit(s, 'x');
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("--prefill: \"", s, "\" is not BxL"));
    }
    Row r;
    r.phase = "prefill";
    MOE_ASSIGN_OR_RETURN(r.batch, ParsePositive(parts[0], "--prefill batch"));
    MOE_ASSIGN_OR_RETURN(r.len, ParsePositive(parts[1], "--prefill length"));
    rows.push_back(r);
  }
  for (int64_t b : opt.decode_batch) {
    if (!decode) break;
    if (b < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--decode_batch: ", b, " must be >= 1"));
    }
    Row r;
    r.phase = "decode";
    r.batch = b;
    r.len = 1;
    r.context = opt.context;
    rows.push_back(r);
  }
  return rows;
}

absl::Status BenchRows(const Options& opt, Model* model, const CostModel& cost,
                       std::vector<Row>* rows) {
  int64_t max_len = 0, max_decode = 0;
  for (const Row& r : *rows) {
    if (r.phase == "prefill") {
      max_len = std::max(max_len, r.len);
    } else {
      max_decode = std::max(max_decode, r.batch);
    }
  }
  // Decode sequences hold context + steps tokens; the steps of every rep rewrite the same
  // positions, so each rep (and each batch size) sees the same context lengths.
  const int64_t decode_len = max_decode > 0 ? opt.context + opt.decode_steps : 0;
  const int64_t bs = opt.block_size;
  const auto blocks_for = [bs](int64_t tokens) { return (tokens + bs - 1) / bs; };
  int64_t max_prefill_blocks = 0;
  for (const Row& r : *rows) {
    if (r.phase == "prefill")
      max_prefill_blocks = std::max(max_prefill_blocks, r.batch * blocks_for(r.len));
  }
  const int64_t num_blocks =
      std::max<int64_t>(1, std::max(max_prefill_blocks, max_decode * blocks_for(decode_len)));
  const int64_t max_blocks_per_seq =
      std::max<int64_t>(1, blocks_for(std::max(max_len, decode_len)));
  std::fprintf(stderr, "kv cache: %" PRId64 " blocks of %" PRId64 " tokens, %.1f MB\n", num_blocks,
               bs, num_blocks * model->KvBytesPerBlock(bs) / 1e6);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, model->AllocateKvCache(num_blocks, bs));
  MOE_ASSIGN_OR_RETURN(KvBlockManager blocks,
                       KvBlockManager::Create(num_blocks, bs, max_blocks_per_seq));
  Runner runner(model, cache.get(), &blocks, static_cast<uint64_t>(opt.seed));
  int64_t next_id = 0;

  for (Row& r : *rows) {
    if (r.phase != "prefill") continue;
    std::fprintf(stderr, "prefill %s\n", ShapeName(r).c_str());
    std::vector<int64_t> seqs;
    for (int64_t s = 0; s < r.batch; ++s) {
      seqs.push_back(next_id++);
      MOE_RETURN_IF_ERROR(blocks.AddSequence(seqs.back()));
      MOE_RETURN_IF_ERROR(blocks.Reserve(seqs.back(), r.len));
    }
    MOE_ASSIGN_OR_RETURN(ModelBatch b, runner.Batch(seqs, 0, r.len, true));
    MOE_ASSIGN_OR_RETURN(std::vector<double> times, TimeSteps(runner, {b}, opt));
    r.reps = static_cast<int64_t>(times.size());
    r.best_s = *std::min_element(times.begin(), times.end());
    r.median_s = Median(times);
    r.bytes = cost.Bytes(r.batch, 0, r.len);
    r.flops = cost.Flops(r.batch, 0, r.len);
    r.experts_hit = cost.ExpertsHit(r.tokens());
    r.non_finite = runner.NonFinite();
    for (int64_t s : seqs) MOE_RETURN_IF_ERROR(blocks.Free(s));
  }
  if (max_decode == 0) return absl::OkStatus();

  // Fill the context of every decode sequence (untimed), at most fill_chunk tokens a Forward.
  std::vector<int64_t> decode_seqs;
  for (int64_t s = 0; s < max_decode; ++s) {
    decode_seqs.push_back(next_id++);
    MOE_RETURN_IF_ERROR(blocks.AddSequence(decode_seqs.back()));
    MOE_RETURN_IF_ERROR(blocks.Reserve(decode_seqs.back(), decode_len));
  }
  const double fill_start = NowSeconds();
  const int64_t chunk = std::min(opt.context, std::max<int64_t>(1, opt.fill_chunk));
  const int64_t seqs_per_fill = std::max<int64_t>(1, opt.fill_chunk / std::max<int64_t>(chunk, 1));
  for (int64_t s0 = 0; s0 < max_decode && opt.context > 0; s0 += seqs_per_fill) {
    const std::vector<int64_t> group(
        decode_seqs.begin() + s0, decode_seqs.begin() + std::min(max_decode, s0 + seqs_per_fill));
    if (isatty(STDERR_FILENO)) {
      std::fprintf(stderr, "\rfilling the decode context: sequence %" PRId64 "/%" PRId64, s0 + 1,
                   max_decode);
    }
    for (int64_t p = 0; p < opt.context; p += chunk) {
      MOE_ASSIGN_OR_RETURN(ModelBatch b,
                           runner.Batch(group, p, std::min(chunk, opt.context - p), false));
      MOE_RETURN_IF_ERROR(runner.Forward(b));
    }
  }
  std::fprintf(stderr, "%sfilled %" PRId64 " x %" PRId64 " context tokens in %.1f s\n",
               isatty(STDERR_FILENO) ? "\r\033[K" : "", max_decode, opt.context,
               NowSeconds() - fill_start);

  for (Row& r : *rows) {
    if (r.phase != "decode") continue;
    std::fprintf(stderr, "decode %s\n", ShapeName(r).c_str());
    const std::vector<int64_t> seqs(decode_seqs.begin(), decode_seqs.begin() + r.batch);
    std::vector<ModelBatch> steps;
    for (int64_t s = 0; s < opt.decode_steps; ++s) {
      MOE_ASSIGN_OR_RETURN(ModelBatch b, runner.Batch(seqs, opt.context + s, 1, true));
      steps.push_back(std::move(b));
    }
    MOE_ASSIGN_OR_RETURN(std::vector<double> times, TimeSteps(runner, steps, opt));
    r.reps = static_cast<int64_t>(times.size());
    r.best_s = *std::min_element(times.begin(), times.end());
    r.median_s = Median(times);
    for (int64_t s = 0; s < opt.decode_steps; ++s) {
      r.bytes += cost.Bytes(r.batch, opt.context + s, 1) / opt.decode_steps;
      r.flops += cost.Flops(r.batch, opt.context + s, 1) / opt.decode_steps;
    }
    r.experts_hit = cost.ExpertsHit(r.batch);
    r.non_finite = runner.NonFinite();
  }
  return absl::OkStatus();
}

// Runs the reference script; fills hf_s of the rows it timed; returns its JSON text.
absl::StatusOr<std::string> RunHfCompare(const Options& opt, std::vector<Row>* rows) {
  std::vector<std::string> prefill, decode;  // the shapes of the rows, as the script takes them
  for (const Row& r : *rows) {
    if (r.phase == "prefill") prefill.push_back(ShapeName(r));
    if (r.phase == "decode") decode.push_back(absl::StrCat(r.batch));
  }
  const std::string cmd = absl::StrCat(
      opt.hf_python, " ", WorkspacePath(opt.hf_script), " --model '", opt.model, "' --dtype ",
      opt.dtype, " --threads ", omp_get_max_threads(), " --prefill '", absl::StrJoin(prefill, ","),
      "' --decode-batch '", absl::StrJoin(decode, ","), "' --fill-chunk ", opt.fill_chunk,
      " --context ", opt.context, " --decode-steps ", opt.decode_steps, " --warmup ", opt.warmup,
      " --reps ", opt.reps, " --seed ", opt.seed);
  std::fprintf(stderr, "reference: %s\n", cmd.c_str());
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("--hf_compare: cannot run ", cmd));
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
  const int rc = pclose(pipe);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("--hf_compare: ", cmd, " exited with status ", rc));
  }
  MOE_ASSIGN_OR_RETURN(JsonValue doc, ParseJson(out, opt.hf_script));
  const JsonValue* ref_rows = doc.Find("rows");
  if (ref_rows == nullptr)
    return absl::InvalidArgumentError("--hf_compare: no \"rows\" in its output");
  for (const JsonValue& h : ref_rows->array()) {
    const JsonValue* phase = h.Find("phase");
    const JsonValue* batch = h.Find("batch");
    const JsonValue* len = h.Find("len");
    const JsonValue* seconds = h.Find("seconds");
    if (!phase || !batch || !len || !seconds) continue;
    for (Row& r : *rows) {
      if (r.phase == phase->string() && r.batch == batch->number() && r.len == len->number()) {
        r.hf_s = seconds->number();
      }
    }
  }
  return out;
}

std::string FormatTable(const std::vector<Row>& rows, const Ceilings& c) {
  std::string out;
  if (c.have_copy && c.have_read) {
    absl::StrAppendFormat(&out,
                          "ceiling: memory copy %.1f GB/s (read+write), read %.1f GB/s; floors "
                          "use %.1f GB/s\n",
                          c.copy.gbps, c.read.gbps, c.bandwidth_gbps());
  }
  if (c.have_gemm) {
    absl::StrAppendFormat(&out, "ceiling: bf16 GEMM %.1f GFLOP/s (%d^3 through the backend)\n",
                          c.gemm.gflops, c.gemm.m);
  } else if (!c.gemm_error.empty()) {
    absl::StrAppend(&out, "ceiling: bf16 GEMM unavailable: ", c.gemm_error, "\n");
  }
  const bool hf = std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.hf_s > 0; });
  absl::StrAppendFormat(&out, "%-8s %-14s %6s %10s %10s %8s %9s %6s %9s %5s %8s", "phase", "shape",
                        "tokens", "tokens/s", "ms/step", "GB/step", "GFLOP", "hit", "floor ms",
                        "bound", "% floor");
  if (hf) absl::StrAppendFormat(&out, " %10s %6s", "HF tok/s", "x HF");
  out += "\n";
  for (const Row& r : rows) {
    const double f = r.floor_s();
    absl::StrAppendFormat(&out, "%-8s %-14s %6d %10.1f %10.3f %8.3f %9.2f %6.1f %9s %5s %8s",
                          r.phase, ShapeName(r), r.tokens(), r.tokens() / r.best_s, r.best_s * 1e3,
                          r.bytes / 1e9, r.flops / 1e9, r.experts_hit,
                          f > 0 ? absl::StrFormat("%.3f", f * 1e3) : "-",
                          f <= 0                               ? "-"
                          : r.floor_bytes_s >= r.floor_flops_s ? "mem"
                                                               : "gemm",
                          f > 0 ? absl::StrFormat("%.1f", 100 * f / r.best_s) : "-");
    if (hf && r.hf_s > 0) {
      absl::StrAppendFormat(&out, " %10.1f %6.2f", r.tokens() / r.hf_s, r.hf_s / r.best_s);
    }
    out += "\n";
  }
  return out;
}

std::string FormatJson(const Options& opt, const Model& model, const CostModel& cost,
                       const std::string& backend, const Ceilings& c, const std::vector<Row>& rows,
                       const std::string& hf_json, double load_start, double load_end) {
  const ModelConfig& m = model.config();
  std::string j = "{\n";
  absl::StrAppend(&j, "  \"tool\": \"model_bench\",\n");
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(LocalTimestamp()), ",\n");
  absl::StrAppend(&j, "  \"machine\": {\"cpu\": ", JsonQuote(CpuModelName()),
                  ", \"avx512_bf16\": ", CpuHasFlag("avx512_bf16") ? "true" : "false",
                  ", \"amx_bf16\": ", CpuHasFlag("amx_bf16") ? "true" : "false",
                  ", \"backend\": ", JsonQuote(backend), ", \"threads\": ", omp_get_max_threads(),
                  "},\n");
  absl::StrAppend(&j, "  \"model\": {\"dir\": ", JsonQuote(opt.model),
                  ", \"family\": ", JsonQuote(ModelFamilyName(m.family)),
                  ", \"layers\": ", m.num_hidden_layers, ", \"hidden\": ", m.hidden_size,
                  ", \"heads\": ", m.num_attention_heads, ", \"kv_heads\": ", m.num_key_value_heads,
                  ", \"head_dim\": ", m.head_dim, ", \"experts\": ", m.moe.num_experts,
                  ", \"top_k\": ", m.moe.top_k, ", \"expert_inter\": ", m.moe.inter,
                  ", \"vocab\": ", m.vocab_size, ", \"dtype\": ", JsonQuote(opt.dtype),
                  ", \"weights\": ", JsonQuote(opt.random_weights ? "random" : "checkpoint"),
                  opt.random_weights ? absl::StrCat(", \"random_seed\": ", opt.random_seed) : "",
                  ", \"step_graphs\": ", opt.step_graphs ? "true" : "false",
                  ", \"weight_bytes\": ", model.weight_bytes(),
                  ", \"dense_bytes\": ", JsonNumber(cost.dense_bytes()),
                  ", \"lm_head_bytes\": ", JsonNumber(cost.lm_head_bytes()),
                  ", \"expert_bytes\": ", JsonNumber(cost.expert_bytes()),
                  ", \"moe_layers\": ", cost.moe_layers(),
                  ", \"kv_bytes_per_token\": ", JsonNumber(cost.kv_bytes_per_token()), "},\n");
  absl::StrAppend(
      &j, "  \"settings\": {\"warmup\": ", opt.warmup, ", \"reps\": ", opt.reps,
      ", \"decode_steps\": ", opt.decode_steps, ", \"context\": ", opt.context,
      ", \"block_size\": ", opt.block_size, ", \"seed\": ", opt.seed,
      ", \"timing\": \"best of reps\", \"experts_hit\": \"expected, uniform routing\"},\n");
  const Model::StepGraphStats& g = model.step_graph_stats();
  absl::StrAppend(&j, "  \"step_graphs\": {\"recorded\": ", g.recorded, ", \"replayed\": ",
                  g.replayed, ", \"failed\": ", g.failed, ", \"last_failure\": ",
                  g.last_failure.ok() ? "null" : JsonQuote(g.last_failure.ToString()), "},\n");
  absl::StrAppend(&j, "  \"load_average_1min\": {\"start\": ", JsonRounded(load_start, 3),
                  ", \"end\": ", JsonRounded(load_end, 3), "},\n");
  absl::StrAppend(&j, "  \"ceilings\": {\"copy\": ");
  absl::StrAppend(&j, c.have_copy ? absl::StrCat("{\"bytes\": ", c.copy.bytes,
                                                 ", \"gbps\": ", JsonRounded(c.copy.gbps, 5),
                                                 ", \"convention\": \"(read + write bytes) / s\"}")
                                  : "null");
  absl::StrAppend(&j, ", \"read\": ",
                  c.have_read ? absl::StrCat("{\"bytes\": ", c.read.bytes,
                                             ", \"gbps\": ", JsonRounded(c.read.gbps, 5), "}")
                              : "null");
  absl::StrAppend(&j, ", \"floor_bandwidth_gbps\": ", JsonRounded(c.bandwidth_gbps(), 5),
                  ", \"gemm_bf16\": ");
  if (c.have_gemm) {
    absl::StrAppend(&j, "{\"m\": ", c.gemm.m, ", \"n\": ", c.gemm.n, ", \"k\": ", c.gemm.k,
                    ", \"gflops\": ", JsonRounded(c.gemm.gflops, 5), "}");
  } else {
    absl::StrAppend(&j, c.gemm_error.empty()
                            ? "null"
                            : absl::StrCat("{\"error\": ", JsonQuote(c.gemm_error), "}"));
  }
  absl::StrAppend(&j, "},\n  \"rows\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double f = r.floor_s();
    absl::StrAppend(&j, i ? ",\n" : "\n", "    {\"phase\": ", JsonQuote(r.phase),
                    ", \"batch\": ", r.batch, ", \"len\": ", r.len, ", \"context\": ", r.context,
                    ", \"tokens\": ", r.tokens(), ", \"reps\": ", r.reps,
                    ", \"ms_best\": ", JsonRounded(r.best_s * 1e3, 5),
                    ", \"ms_median\": ", JsonRounded(r.median_s * 1e3, 5),
                    ", \"tokens_per_s\": ", JsonRounded(r.tokens() / r.best_s, 5),
                    ", \"bytes\": ", JsonNumber(std::round(r.bytes)),
                    ", \"flops\": ", JsonNumber(std::round(r.flops)),
                    ", \"experts_hit_expected\": ", JsonRounded(r.experts_hit, 4));
    if (f > 0) {
      absl::StrAppend(&j, ", \"floor_ms\": ", JsonRounded(f * 1e3, 5),
                      ", \"floor_bytes_ms\": ", JsonRounded(r.floor_bytes_s * 1e3, 5),
                      ", \"floor_flops_ms\": ", JsonRounded(r.floor_flops_s * 1e3, 5),
                      ", \"pct_of_floor\": ", JsonRounded(100 * f / r.best_s, 4));
    } else {
      absl::StrAppend(&j, ", \"floor_ms\": null, \"pct_of_floor\": null");
    }
    if (r.hf_s > 0) {
      absl::StrAppend(&j, ", \"hf_ms\": ", JsonRounded(r.hf_s * 1e3, 5),
                      ", \"hf_tokens_per_s\": ", JsonRounded(r.tokens() / r.hf_s, 5));
    }
    absl::StrAppend(&j, ", \"non_finite_logits\": ", r.non_finite, "}");
  }
  absl::StrAppend(&j, "\n  ]");
  if (!hf_json.empty()) absl::StrAppend(&j, ",\n  \"reference\": ", hf_json);
  absl::StrAppend(&j, "\n}\n");
  return j;
}

// bench/results/<date>_<cpu words>-<threads>t_model.json, e.g. 2026-11-23_amd-epyc-2t_model.json.
std::string DefaultJsonPath() {
  std::string cpu = absl::AsciiStrToLower(CpuModelName());
  std::vector<std::string> words = absl::StrSplit(cpu, ' ', absl::SkipEmpty());
  if (words.size() > 2) words.resize(2);
  return WorkspacePath(absl::StrCat("bench/results/", LocalTimestamp().substr(0, 10), "_",
                                    absl::StrJoin(words, "-"), "-", omp_get_max_threads(),
                                    "t_model.json"));
}

absl::Status Run(Options opt) {
  if (opt.model.empty()) return absl::InvalidArgumentError("--model is required");
  opt.model = ResolveUserPath(opt.model);
  DType dtype;
  if ((opt.dtype != "f32" && opt.dtype != "bf16") || !ParseDType(opt.dtype, &dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype: \"", opt.dtype, "\" is not f32 or bf16"));
  }
  MOE_ASSIGN_OR_RETURN(std::vector<Row> rows, ParseShapes(opt));
  if (opt.reps < 1 || opt.warmup < 0 || opt.decode_steps < 1 || opt.context < 0 ||
      opt.block_size < 1) {
    return absl::InvalidArgumentError(
        "--reps, --decode_steps and --block_size must be >= 1; --warmup and --context >= 0");
  }
  if (opt.threads > 0) omp_set_num_threads(static_cast<int>(opt.threads));
  opt.json = opt.json == "auto" ? DefaultJsonPath() : ResolveUserPath(opt.json);

  if (opt.backend != "cpu" && opt.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend=", opt.backend, " is not one of cpu, cuda"));
  }
  const bool on_gpu = opt.backend == "cuda";
  if (opt.random_weights && opt.hf_compare) {
    return absl::InvalidArgumentError(
        "--hf_compare runs transformers on the folder's checkpoint; not with --random_weights "
        "(the engine's weights would not be the checkpoint's)");
  }
  if (on_gpu && opt.hf_compare) {
    return absl::InvalidArgumentError(
        "--hf_compare times transformers on the CPU; not with --backend=cuda");
  }
  // The ceilings measure host memory and the CPU's GEMM: no floors on a GPU yet.
  if (on_gpu) opt.skip_ceilings = true;
  BackendOptions backend_options;
  backend_options.cpu_threads = static_cast<int>(opt.threads);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                       CreateBackend(on_gpu ? Device::Cuda(0) : Device::Cpu(), backend_options));
  Allocator allocator(backend.get());
  std::printf("model_bench: %s; %s (avx512_bf16 %s, amx_bf16 %s); %d threads\n",
              backend->Describe().c_str(), CpuModelName().c_str(),
              CpuHasFlag("avx512_bf16") ? "yes" : "no", CpuHasFlag("amx_bf16") ? "yes" : "no",
              omp_get_max_threads());
  std::fflush(stdout);
  const double load_start = LoadAverage1();
  if (load_start > 0.5) {
    std::fprintf(stderr,
                 "model_bench: load average %.2f: other processes are running, so timings will "
                 "be noisy\n",
                 load_start);
  }
  const std::string weights =
      opt.random_weights ? absl::StrCat("random weights, seed ", opt.random_seed) : "checkpoint";
  std::fprintf(stderr, "loading %s (%s, %s)\n", opt.model.c_str(), opt.dtype.c_str(),
               weights.c_str());
  const double load_t0 = NowSeconds();
  ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.random_weights = opt.random_weights;
  model_options.random_seed = static_cast<uint64_t>(opt.random_seed);
  model_options.record_step_graphs = opt.step_graphs;
  // Progress: in place on a terminal, else a line at every eighth of the steps.
  const bool tty = isatty(STDERR_FILENO);
  model_options.on_load_progress = [&](int64_t done, int64_t total) {
    if (tty) {
      std::fprintf(stderr, "\rloading: step %" PRId64 "/%" PRId64 "%s", done, total,
                   done == total ? "\r\033[K" : "");
    } else if (done == total || (done * 8 / total) != ((done - 1) * 8 / total)) {
      std::fprintf(stderr, "loading: step %" PRId64 "/%" PRId64 " after %.1f s\n", done, total,
                   NowSeconds() - load_t0);
    }
  };
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                       Model::Load(opt.model, model_options, backend.get(), &allocator));
  const double load_s = NowSeconds() - load_t0;
  const ModelConfig& mc = model->config();
  std::printf("model: %s, %s, %" PRId64 " layers, D %" PRId64 ", %" PRId64 " experts top-%" PRId64
              ", I %" PRId64 ", vocab %" PRId64 ", %.2f GB of weights (%s; loaded in %.1f s, "
              "%.2f GB/s)\n",
              opt.model.c_str(), std::string(ModelFamilyName(mc.family)).c_str(),
              mc.num_hidden_layers, mc.hidden_size, mc.moe.num_experts, mc.moe.top_k, mc.moe.inter,
              mc.vocab_size, model->weight_bytes() / 1e9, weights.c_str(), load_s,
              model->weight_bytes() / 1e9 / std::max(load_s, 1e-9));
  for (const Row& r : rows) {
    const int64_t positions = r.phase == "prefill" ? r.len : opt.context + opt.decode_steps;
    if (positions > mc.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(
          r.phase, " ", ShapeName(r), ": ", positions, " positions exceed the model's ",
          "max_position_embeddings=", mc.max_position_embeddings));
    }
  }
  const CostModel cost(*model);

  MOE_ASSIGN_OR_RETURN(Ceilings before, MeasureCeilings(opt, backend.get()));
  MOE_RETURN_IF_ERROR(BenchRows(opt, model.get(), cost, &rows));
  MOE_ASSIGN_OR_RETURN(Ceilings after, MeasureCeilings(opt, backend.get()));
  const Ceilings ceilings = Best(before, after);
  for (Row& r : rows) {
    if (ceilings.bandwidth_gbps() > 0)
      r.floor_bytes_s = r.bytes / (ceilings.bandwidth_gbps() * 1e9);
    if (ceilings.have_gemm) r.floor_flops_s = r.flops / (ceilings.gemm.gflops * 1e9);
  }
  const double load_end = LoadAverage1();
  std::string hf_json;
  if (opt.hf_compare) {
    // The engine's weights stay loaded meanwhile: the reference runs after every timed row.
    MOE_ASSIGN_OR_RETURN(hf_json, RunHfCompare(opt, &rows));
    absl::StripTrailingAsciiWhitespace(&hf_json);
  }

  int64_t non_finite = 0;
  for (const Row& r : rows) non_finite += r.non_finite;
  std::printf("%s", FormatTable(rows, ceilings).c_str());
  std::printf(
      "experts per step: expected under uniform routing (hit = E (1 - (1 - K/E)^T) per "
      "MoE layer); %% floor = floor / time\n");
  std::printf("load average (1 min): %.2f at start, %.2f at end; non-finite logits %" PRId64 "\n",
              load_start, load_end, non_finite);
  const Model::StepGraphStats& graphs = model->step_graph_stats();
  std::printf("step graphs: %" PRId64 " recorded, %" PRId64 " steps replayed, %" PRId64
              " shapes not recordable%s%s\n",
              graphs.recorded, graphs.replayed, graphs.failed,
              graphs.last_failure.ok() ? "" : "; last: ",
              graphs.last_failure.ok() ? "" : graphs.last_failure.ToString().c_str());
  if (!opt.json.empty()) {
    MOE_RETURN_IF_ERROR(MakeParentDirs(opt.json));
    MOE_RETURN_IF_ERROR(
        WriteTextFile(opt.json, FormatJson(opt, *model, cost, backend->Describe(), ceilings, rows,
                                           hf_json, load_start, load_end)));
    std::printf("wrote %s\n", opt.json.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::Options opt;
  moe::tools::FlagParser flags(
      "model_bench: time a whole model (moe::Model, CPU or CUDA backend) from a Hugging Face\n"
      "checkpoint folder, or with --random_weights from a folder holding only config.json (random\n"
      "weights of the real shapes; models/bench/ has such folders).\n"
      "Prefill: one Forward of B prompts of L tokens (logits of each prompt's last token).\n"
      "Decode: B sequences holding --context tokens (filled first, untimed) take\n"
      "--decode_steps one-token steps; ms/step is the average step, tokens/s = B / step time.\n"
      "Each row is the best of --reps after --warmup. Floor = max(bytes / bandwidth, FLOPs /\n"
      "bf16 GEMM peak), both measured here (before and after the rows, the better kept); bytes =\n"
      "every non-expert weight (lm_head in full, one embedding row per token) + the experts the\n"
      "step's tokens reach, expected under uniform routing, + the KV cache read; FLOPs = 2 x\n"
      "active params x tokens + attention. % floor = floor / time.\n"
      "\n"
      "  bazel run -c opt //tools:model_bench -- --model models/qwen3-moe-tiny\n"
      "  python3 tools/fixtures/make_random_checkpoint.py --preset qwen3-30b-a3b --layers 2\n"
      "  bazel run //tools:model_bench -- --model /tmp/bench/qwen3-30b-a3b-2l --json auto\n"
      "  model_bench --model models/bench/qwen3-30b-a3b --random_weights --backend cuda\n");
  flags.AddString("model", &opt.model,
                  "Checkpoint folder (config.json + safetensors; only config.json with\n"
                  "--random_weights).");
  flags.AddBool("random_weights", &opt.random_weights,
                "Draw random weights (from --random_seed and each tensor's name) instead of\n"
                "reading a checkpoint: the folder needs only config.json. Not with --hf_compare.");
  flags.AddInt("random_seed", &opt.random_seed, "Seed of --random_weights.");
  flags.AddBool("step_graphs", &opt.step_graphs,
                "Replay steps of up to 64 tokens from recorded graphs (CUDA graphs; no effect on\n"
                "the cpu backend). false: every op launched one by one.");
  flags.AddStringList("phases", &opt.phases, "What to time: prefill, decode or both.");
  flags.AddString("dtype", &opt.dtype, "Run dtype: f32 or bf16.");
  flags.AddInt("threads", &opt.threads, "CPU threads; 0 = all cores.");
  flags.AddStringList("prefill", &opt.prefill, "Prefill shapes BxL (B prompts of L tokens).");
  flags.AddIntList("decode_batch", &opt.decode_batch, "Decode batch sizes B.");
  flags.AddInt("context", &opt.context, "Tokens each decode sequence holds before the steps.");
  flags.AddInt("decode_steps", &opt.decode_steps, "One-token steps per timed decode rep.");
  flags.AddInt("warmup", &opt.warmup, "Untimed reps before each row.");
  flags.AddInt("reps", &opt.reps, "Timed reps per row; the best is reported.");
  flags.AddInt("block_size", &opt.block_size, "KV cache block size in tokens.");
  flags.AddInt("fill_chunk", &opt.fill_chunk,
               "Most tokens per Forward while filling the decode context.");
  flags.AddInt("seed", &opt.seed, "Seed of the random token ids.");
  flags.AddString("json", &opt.json,
                  "Write the results here; \"auto\" = bench/results/<date>_<cpu>-<threads>t_model."
                  "json\nin the source tree; empty = no JSON.");
  flags.AddString("backend", &opt.backend,
                  "cpu, or cuda (GPU 0; no floors there yet: the ceilings are the CPU's).");
  flags.AddBool("skip_ceilings", &opt.skip_ceilings,
                "Do not measure the ceilings (no floor column); for smoke tests.");
  flags.AddInt("copy_mib", &opt.copy_mib, "Size of the copy and read ceiling buffers in MiB.");
  flags.AddInt("gemm_size", &opt.gemm_size, "m = n = k of the bf16 GEMM ceiling.");
  flags.AddBool("hf_compare", &opt.hf_compare,
                "Also time Hugging Face transformers (CPU, same dtype, threads and shapes) on the\n"
                "same folder through --hf_script; needs torch and transformers in --hf_python.");
  flags.AddString("hf_python", &opt.hf_python, "Python interpreter for --hf_compare.");
  flags.AddString("hf_script", &opt.hf_script,
                  "The reference script (relative to the source tree).");
  return moe::tools::RunMain("model_bench", flags, argc, argv,
                             [&] { return moe::tools::Run(std::move(opt)); });
}
